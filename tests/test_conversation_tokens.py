"""One tokenisation of a conversation for every phase: with a tokenizer that adds BOS (as
Llama, Mistral and Gemma do), SFT, feedback sampling, PPO, evaluation and the reward model
all see the same prompt ids, BOS once; with a chat template, the template's ids. And hub
ids: only a model built here forces the hub offline; one that cannot be had is a clear error."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from alignray.config import DataConfig
from alignray.data.prompts import PROMPT_SCHEMA, fit_prompt, parse_rendering, render_conversation
from alignray.feedback.sampling import load_policy, sample_policy_responses
from alignray.models.generation import end_token_ids, turn_end_token
from alignray.models.modeling import load_tokenizer
from alignray.reward.model import encode_texts
from alignray.sft.training import tokenize_batch
from alignray.data.validation import write_parquet
from alignray.evaluation.answers import answer
from alignray.data.prompts import load_prompt_texts
from alignray.workflows.ppo import PPOCoordinator

TURNS = [{"role": "user", "content": "where is the cat ?"}, {"role": "assistant", "content": "the cat is here ."},
         {"role": "user", "content": "and the dog ?"}]
PROMPT = render_conversation(TURNS)
RESPONSE = "the dog is out ."
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
                 "{% if add_generation_prompt %}assistant :{% endif %}")
MAX_PROMPT_TOKENS = 40


# A chat template that closes every turn with its own end token, as SmolLM2's <|im_end|> does
TURN_END_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} <|end|> "
                     "{% endfor %}{% if add_generation_prompt %}assistant :{% endif %}")


def bos_model(folder, chat_template=None, generation_ends: list[str] | None = None) -> str:
    """A word-level tokenizer whose post-processor prepends BOS, and a tiny GPT-2 over it;
    ``generation_ends`` lists the end tokens its generation config gives."""
    words = {w for text in (PROMPT, RESPONSE, CHAT_TEMPLATE, "user assistant :")
             for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(text)}
    vocab = {token: i for i, token in enumerate(["<pad>", "<s>", "</s>", "<unk>", "<|end|>", *sorted(words)])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        unk_token="<unk>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|end|>"]})
    tokenizer.chat_template = chat_template
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_positions=128, n_layer=1, n_head=2, n_embd=16))
    if generation_ends:
        model.generation_config.eos_token_id = [vocab[token] for token in generation_ends]
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def first_forward_ids(model) -> list:
    """Records the input ids of the model's first forward (the prompt's prefill)."""
    seen = []
    model.register_forward_pre_hook(lambda _, args, kwargs: seen.append(kwargs["input_ids"]) if not seen else None,
                                    with_kwargs=True)
    return seen


def real_ids(ids: torch.Tensor, mask: torch.Tensor) -> list[int]:
    return ids[mask.bool()].tolist()


@pytest.mark.parametrize("chat_template", [None, CHAT_TEMPLATE], ids=["plain", "chat_template"])
def test_every_phase_tokenises_the_conversation_alike(tmp_path, chat_template):
    model_path = bos_model(tmp_path / "model", chat_template)
    tokenizer = load_tokenizer(model_path)
    if chat_template:
        expected = tokenizer.apply_chat_template(TURNS, add_generation_prompt=True, tokenize=True, return_dict=False)
    else:
        expected = tokenizer(PROMPT)["input_ids"]  # the tokenizer's own special tokens: BOS first
    assert expected.count(tokenizer.bos_token_id) == 1 and expected[0] == tokenizer.bos_token_id

    # SFT: the demonstration row's prompt part
    batch = {"prompt": np.array([PROMPT], dtype=object), "response": np.array([RESPONSE], dtype=object),
             "system": np.array([None], dtype=object), "conversation": np.array([np.array(TURNS)], dtype=object)}
    row = tokenize_batch(batch, model_path, MAX_PROMPT_TOKENS, 16)
    sft_ids = row["input_ids"][0][row["attention_mask"][0].astype(bool)].tolist()
    assert sft_ids[:len(expected)] == expected and sft_ids[-1] == tokenizer.eos_token_id

    # Feedback sampling: what the policy's prefill reads
    model, policy_tokenizer = load_policy(model_path)
    seen = first_forward_ids(model)
    sample_policy_responses(model, policy_tokenizer, [PROMPT], 1, MAX_PROMPT_TOKENS, 2, 1, 1.0, 0, "test",
                            {PROMPT: TURNS})
    assert seen[0][0].tolist() == expected

    # PPO: the coordinator's prompt batch, from a prompts file with the conversation
    prompts_file = tmp_path / "prompts.parquet"
    write_parquet([{"prompt_id": "0", "prompt": PROMPT, "conversation": TURNS}], prompts_file, PROMPT_SCHEMA)
    data_cfg = DataConfig(source="files", prompts_path=str(prompts_file))
    coordinator = SimpleNamespace(tokenizer=tokenizer, max_prompt_tokens=MAX_PROMPT_TOKENS,
                                  prompts=load_prompt_texts(data_cfg, tokenizer, tmp_path, 0))
    batch = PPOCoordinator.prompt_batch(coordinator, torch.tensor([0]))
    assert real_ids(batch.prompt_ids[0], batch.prompt_mask[0]) == expected

    # Evaluation: the held-out prompts' ids
    sampling = SimpleNamespace(max_new_tokens=2, temperature=1.0, top_p=1.0)
    (ids, mask, _), = answer(model, tokenizer, [coordinator.prompts[0].formatted], sampling, MAX_PROMPT_TOKENS, 0)
    assert real_ids(ids[0], mask[0]) == expected

    # The reward model (same tokenizer) applies the same rule: BOS once, then its text
    # (it reads only the prompt's text: a chat template still gets the turns, from the transcript)
    reward_ids = encode_texts(tokenizer, [PROMPT], [RESPONSE], 128)["input_ids"][0].tolist()
    assert reward_ids[:len(expected)] == expected and reward_ids.count(tokenizer.bos_token_id) == 1


@pytest.mark.parametrize("turns", [TURNS, [{"role": "user", "content": "line one\n\nline two"},
                                          {"role": "assistant", "content": "ok"}, {"role": "user", "content": "go"}]])
def test_a_transcript_prompt_gives_back_its_turns(turns):
    assert parse_rendering(render_conversation(turns)) == turns


@pytest.mark.parametrize("prompt", ["a tweet opening", "Human: one turn only\n\nAssistant:",
                                    "preamble\n\nHuman: hi\n\nAssistant: yo\n\nHuman: and?\n\nAssistant:"])
def test_a_prompt_that_is_no_transcript_stays_one_user_turn(prompt):
    assert parse_rendering(prompt) is None


def test_a_long_prompt_keeps_its_bos_and_its_end(tmp_path):
    tokenizer = load_tokenizer(bos_model(tmp_path / "model"))
    batch = {"prompt": np.array([PROMPT], dtype=object), "response": np.array([RESPONSE], dtype=object)}
    row = tokenize_batch(batch, str(tmp_path / "model"), 5, 16)
    full = tokenizer(PROMPT)["input_ids"]
    assert row["input_ids"][0][:5].tolist() == [tokenizer.bos_token_id] + full[-4:]
    assert row["prompt_truncated"].tolist() == [1]


def test_hub_id_offline_and_not_cached_is_an_error_naming_the_model(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match=r"model 'alignray-tests/not-cached-anywhere' is not a local folder nor in "
                                      r"the Hugging Face cache, and the hub is offline"):
        load_tokenizer("alignray-tests/not-cached-anywhere")


@pytest.mark.parametrize("source, offline", [("embedded", "1"), ("hf", None)])
def test_only_a_local_model_forces_the_hub_offline_and_workers_inherit_it(monkeypatch, source, offline):
    from omegaconf import OmegaConf

    from alignray.actors.runtime import worker_env
    from alignray.config import AlignrayConfig
    from alignray.workflows.common import start_app
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    cfg = OmegaConf.structured(AlignrayConfig)
    cfg.model.source = source
    start_app(cfg, "test")
    assert worker_env().get("HF_HUB_OFFLINE") == offline
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # the user's own setting wins
    start_app(cfg, "test")
    assert worker_env()["HF_HUB_OFFLINE"] == "0"


def test_a_chat_models_turn_end_token_ends_its_sft_rows_and_every_listed_end_stops_generation(tmp_path):
    model_path = bos_model(tmp_path / "model", TURN_END_TEMPLATE, generation_ends=["<|end|>", "</s>"])
    tokenizer = load_tokenizer(model_path)
    end, eos = tokenizer.convert_tokens_to_ids(["<|end|>", "</s>"])
    assert end_token_ids(model_path, tokenizer) == [end, eos] and turn_end_token(tokenizer, [eos, end]) == end
    batch = {"prompt": np.array([PROMPT], dtype=object), "response": np.array([RESPONSE], dtype=object)}
    row = tokenize_batch(batch, model_path, MAX_PROMPT_TOKENS, 16)
    assert row["input_ids"][0][row["attention_mask"][0].astype(bool)][-1] == end
    # a model with no generation config of its own: the tokenizer's EOS alone
    plain = bos_model(tmp_path / "plain")
    assert end_token_ids(plain, load_tokenizer(plain)) == [eos]


def test_a_chat_prompt_over_budget_loses_its_oldest_content_never_the_template(tmp_path):
    tokenizer = load_tokenizer(bos_model(tmp_path / "model", CHAT_TEMPLATE))
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    whole, cut = fit_prompt(tokenizer, PROMPT, max_tokens=100)
    assert not cut and whole == tokenizer.apply_chat_template(TURNS, tokenize=False, add_generation_prompt=True)
    # bos user : and the dog ? assistant : = 9 tokens: the older turns go, whole
    last_turn, cut = fit_prompt(tokenizer, PROMPT, max_tokens=9)
    assert cut and last_turn == tokenizer.apply_chat_template(TURNS[-1:], tokenize=False, add_generation_prompt=True)
    # 7: the start of the user's text goes; the template's tokens stay
    shorter, cut = fit_prompt(tokenizer, PROMPT, max_tokens=7)
    assert cut and tokenizer.convert_ids_to_tokens(ids(shorter)) == ["<s>", "user", ":", "dog", "?", "assistant", ":"]
    with pytest.raises(ValueError, match="max_prompt_tokens = 5 cannot hold the chat template.*take 5"):
        fit_prompt(tokenizer, PROMPT, max_tokens=5)
    # SFT counts the cut, and its row holds the fitted prompt
    batch = {"prompt": np.array([PROMPT], dtype=object), "response": np.array([RESPONSE], dtype=object)}
    row = tokenize_batch(batch, str(tmp_path / "model"), 7, 16)
    assert row["prompt_truncated"].tolist() == [1] and row["input_ids"][0][:7].tolist() == ids(shorter)
