"""CPU PPO throughput of Hugging Face TRL's PPOTrainer: the TRL side of the alignray comparison.

Runs ``trl.experimental.ppo.PPOTrainer`` (TRL 1.12.0, the last release that has it) for a
fixed number of updates on tiny random GPT-2 models and writes the wall time of each
update (one rollout of 32 prompts plus its PPO epochs) to JSON. It must run in the
separate TRL venv and does not import alignray:

    bash benchmarks/trl_env.sh
    benchmarks/.venv-trl/bin/python benchmarks/trl_ppo.py --models DIR --prompts FILE \\
        --updates 10 --out result.json [--threads 2] [--seed 0]

DIR holds three Hugging Face folders saved with the same tokenizer: ``policy``
(GPT2LMHeadModel; the reference model is a second copy of it), ``reward`` and ``value``
(GPT2ForSequenceClassification, num_labels=1). FILE is a JSON list of prompts, each a
list of token ids; they are used in file order.

Settings: 32 rollouts per update (1 process, per-device batch 32, no gradient
accumulation), exactly 24 new tokens per response (no stop token; the pad token is
never sampled, see ResponseCheck), temperature 1.0, top-k/top-p off, 4 PPO epochs x 2
minibatches of 16, fp32 on CPU, AdamW lr 3e-6 (constant; TRL's default
adamw_torch_fused, weight decay 0, no gradient clipping), kl_coef 0.05 fixed (k1
estimator), cliprange 0.2, cliprange_value 0.2, vf_coef 0.1 (TRL default), gamma 1,
lam 0.95, no missing-EOS penalty, TRL's default whitening (advantages whitened, rewards
not), no evaluation, no checkpoints, no sample generations, report_to none.

Output: ``update_seconds`` (one float per update, from a TrainerCallback: PPOTrainer
calls ``on_step_end`` exactly once per update), ``median_rollouts_per_s_updates_2_to_10``
(32 / median of the updates after the first), versions, settings, and notes on what
differs from the alignray side.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
warnings.filterwarnings("ignore", message=".*experimental.*")
# TRL 1.12 still sets `gradient_checkpointing`, which transformers 5 renamed.
warnings.filterwarnings("ignore", category=FutureWarning, message=".*checkpointing.*")

import accelerate
import datasets
import torch
import transformers
import trl
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    TrainerCallback,
)
from trl.experimental.ppo import PPOConfig, PPOTrainer
from trl.experimental.ppo import ppo_trainer as ppo_module

ROLLOUTS_PER_UPDATE = 32
NEW_TOKENS = 24
TEMPERATURE = 1.0
NUM_PPO_EPOCHS = 4
NUM_MINI_BATCHES = 2
LEARNING_RATE = 3e-6
KL_COEF = 0.05
CLIPRANGE = 0.2
CLIPRANGE_VALUE = 0.2
GAMMA = 1.0
LAM = 0.95


class UpdateTimer(TrainerCallback):
    """Monotonic timestamps at train begin and at the end of every PPO update."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.marks = [time.monotonic()]

    def on_step_end(self, args, state, control, **kwargs):
        self.marks.append(time.monotonic())

    def update_seconds(self) -> list[float]:
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


class ResponseCheck:
    """Wraps TRL's module-level ``batch_generation`` to force and check full-length responses.

    With ``stop_token=None`` TRL already sets the policy's ``eos_token_id`` to None, so
    ``generate`` cannot stop early. But TRL treats a pad token inside a response as its
    end (reward, value and loss masks all use the first pad), and a random policy samples
    the pad id now and then; so the pad id is suppressed in sampling and every response
    is checked to have exactly NEW_TOKENS real tokens.
    """

    def __init__(self, pad_token_id: int, eos_token_id: int | None) -> None:
        self.pad_token_id = pad_token_id
        self.eos_token_id = eos_token_id
        self.original = ppo_module.batch_generation
        self.calls = 0
        self.responses = 0
        self.eos_tokens = 0
        self.queries: list[torch.Tensor] = []

    def __call__(self, model, queries, local_rollout_forward_batch_size, pad_token_id, generation_config):
        generation_config.suppress_tokens = [self.pad_token_id]
        generation_config.eos_token_id = None  # what stop_token=None gives; explicit here
        query_responses, logits = self.original(
            model, queries, local_rollout_forward_batch_size, pad_token_id, generation_config
        )
        responses = query_responses[:, queries.shape[1]:]
        assert responses.shape == (queries.shape[0], NEW_TOKENS), f"responses {tuple(responses.shape)}"
        assert not (responses == self.pad_token_id).any(), "a response contains the pad token"
        self.calls += 1
        self.queries.append(queries.clone())
        self.responses += responses.shape[0]
        if self.eos_token_id is not None:
            self.eos_tokens += int((responses == self.eos_token_id).sum())
        return query_responses, logits


def load_prompts(path: Path) -> list[list[int]]:
    prompts = json.loads(path.read_text())
    if not isinstance(prompts, list) or not all(
            isinstance(p, list) and p and all(isinstance(t, int) for t in p) for p in prompts):
        raise SystemExit(f"{path}: expected a JSON list of non-empty lists of token ids")
    if len(prompts) < ROLLOUTS_PER_UPDATE:  # TRL's dataloader drops the last partial batch
        raise SystemExit(f"{path}: {len(prompts)} prompts, need at least {ROLLOUTS_PER_UPDATE}")
    return prompts


def check_file_order(batches: list[torch.Tensor], prompts: list[list[int]], pad_token_id: int) -> None:
    """Each update's queries are the next 32 prompts of the file (cycling; a partial tail is dropped)."""
    num_batches = len(prompts) // ROLLOUTS_PER_UPDATE
    for update, queries in enumerate(batches):
        start = (update % num_batches) * ROLLOUTS_PER_UPDATE
        for row, prompt in zip(queries.tolist(), prompts[start:start + ROLLOUTS_PER_UPDATE]):
            pad = len(row) - len(prompt)
            assert row[pad:] == prompt and all(t == pad_token_id for t in row[:pad]), \
                f"update {update + 1}: queries are not the prompts in file order"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True, help="folder with policy/, reward/, value/")
    parser.add_argument("--prompts", type=Path, required=True, help="JSON list of token-id lists")
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    transformers.set_seed(args.seed)

    tokenizer = AutoTokenizer.from_pretrained(args.models / "policy")
    if tokenizer.pad_token_id is None:
        raise SystemExit("the tokenizer has no pad token; TRL's PPOTrainer needs one")
    tokenizer.padding_side = "left"  # queries are generated from, so pad them on the left

    load = {"dtype": torch.float32}
    policy = AutoModelForCausalLM.from_pretrained(args.models / "policy", **load)
    ref_policy = AutoModelForCausalLM.from_pretrained(args.models / "policy", **load)
    reward_model = AutoModelForSequenceClassification.from_pretrained(args.models / "reward", **load)
    value_model = AutoModelForSequenceClassification.from_pretrained(args.models / "value", **load)
    assert reward_model.config.num_labels == 1 and value_model.config.num_labels == 1

    prompts = load_prompts(args.prompts)
    train_dataset = Dataset.from_dict({"input_ids": prompts})

    output_dir = tempfile.mkdtemp(prefix="trl-ppo-bench-")
    config = PPOConfig(
        output_dir=output_dir,
        seed=args.seed,
        per_device_train_batch_size=ROLLOUTS_PER_UPDATE,
        gradient_accumulation_steps=1,
        num_mini_batches=NUM_MINI_BATCHES,
        num_ppo_epochs=NUM_PPO_EPOCHS,
        total_episodes=args.updates * ROLLOUTS_PER_UPDATE,
        local_rollout_forward_batch_size=ROLLOUTS_PER_UPDATE,
        response_length=NEW_TOKENS,
        stop_token=None,
        stop_token_id=None,
        missing_eos_penalty=None,
        temperature=TEMPERATURE,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="constant",  # TrainingArguments' default would decay linearly to 0
        warmup_steps=0,
        weight_decay=0.0,
        kl_coef=KL_COEF,
        kl_estimator="k1",
        cliprange=CLIPRANGE,
        cliprange_value=CLIPRANGE_VALUE,
        gamma=GAMMA,
        lam=LAM,
        whiten_rewards=False,
        bf16=False,  # TRL's configs default bf16 to True
        fp16=False,
        use_cpu=True,
        gradient_checkpointing=False,  # TRL's configs default it to True (PPOTrainer never enables it anyway)
        num_sample_generations=0,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )

    timer = UpdateTimer()
    trainer = PPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref_policy,
        reward_model=reward_model,
        value_model=value_model,
        train_dataset=train_dataset,
        callbacks=[timer],
    )
    # PPOTrainer builds its dataloader with shuffle=True and no option to turn it off;
    # replace it so the prompts are used in file order (train() reads self.dataloader).
    trainer.dataloader = trainer.accelerator.prepare(DataLoader(
        train_dataset,
        batch_size=config.local_batch_size,
        shuffle=False,
        collate_fn=DataCollatorWithPadding(tokenizer),
        drop_last=True,
    ))
    # Keep per-update log dicts off stdout; the summary line below is what matters.
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)

    assert config.batch_size == ROLLOUTS_PER_UPDATE and config.mini_batch_size == ROLLOUTS_PER_UPDATE // 2
    assert config.num_total_batches == args.updates
    assert trainer.accelerator.device.type == "cpu" and trainer.accelerator.mixed_precision == "no"
    for name, model in (("policy", policy), ("ref", ref_policy), ("reward", reward_model), ("value", value_model)):
        assert all(p.dtype == torch.float32 for p in model.parameters()), f"{name} is not fp32"
    assert not policy.is_activation_checkpointing

    check = ResponseCheck(tokenizer.pad_token_id, tokenizer.eos_token_id)
    load_before = os.getloadavg()
    ppo_module.batch_generation = check
    try:
        trainer.train()
    finally:
        ppo_module.batch_generation = check.original

    load_after = os.getloadavg()
    shutil.rmtree(output_dir, ignore_errors=True)  # TRL creates it; nothing is saved there
    update_seconds = timer.update_seconds()
    assert len(update_seconds) == args.updates, f"{len(update_seconds)} update timings for {args.updates} updates"
    assert check.calls == args.updates and check.responses == args.updates * ROLLOUTS_PER_UPDATE
    check_file_order(check.queries, prompts, tokenizer.pad_token_id)
    steady = update_seconds[1:] if len(update_seconds) > 1 else update_seconds
    median_s = statistics.median(steady)
    median_rollouts_per_s = ROLLOUTS_PER_UPDATE / median_s

    result = {
        "framework": "trl",
        "update_seconds": update_seconds,
        "rollouts_per_update": ROLLOUTS_PER_UPDATE,
        "new_tokens_per_rollout": NEW_TOKENS,
        "median_update_seconds_updates_2_to_10": median_s,
        "median_rollouts_per_s_updates_2_to_10": median_rollouts_per_s,
        "versions": {
            "trl": trl.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "accelerate": accelerate.__version__,
            "datasets": datasets.__version__,
            "python": platform.python_version(),
        },
        "settings": {
            "updates": args.updates,
            "threads": args.threads,
            "seed": args.seed,
            "models": str(args.models),
            "prompts": str(args.prompts),
            "num_prompts": len(prompts),
            "prompt_order": "file order (dataloader replaced, shuffle=False)",
            "device": "cpu",
            "dtype": "float32",
            "batch_size": config.batch_size,
            "mini_batch_size": config.mini_batch_size,
            "num_ppo_epochs": config.num_ppo_epochs,
            "num_mini_batches": config.num_mini_batches,
            "gradient_accumulation_steps": config.gradient_accumulation_steps,
            "response_length": config.response_length,
            "stop_token": config.stop_token,
            "temperature": config.temperature,
            "top_k": None,
            "top_p": 1.0,
            "optimizer": getattr(config.optim, "value", config.optim),
            "max_grad_norm": None,
            "learning_rate": config.learning_rate,
            "lr_scheduler_type": getattr(config.lr_scheduler_type, "value", config.lr_scheduler_type),
            "weight_decay": config.weight_decay,
            "kl_coef": config.kl_coef,
            "kl_estimator": config.kl_estimator,
            "cliprange": config.cliprange,
            "cliprange_value": config.cliprange_value,
            "vf_coef": config.vf_coef,
            "gamma": config.gamma,
            "lam": config.lam,
            "whiten_rewards": config.whiten_rewards,
            "whiten_advantages": True,
            "missing_eos_penalty": config.missing_eos_penalty,
        },
        "eos_tokens_in_responses": check.eos_tokens,
        # The machine may be shared: a 1-minute load well above --threads means the timings are disturbed.
        "host": {"cpu_count": os.cpu_count(), "loadavg_1_5_15_before": load_before,
                 "loadavg_1_5_15_after": load_after},
        "notes": [
            ("Each update time runs from the previous on_step_end (on_train_begin for the first) to this "
             "update's on_step_end: rollout (generate, ref/value/reward forwards, GAE), the 4x2 PPO steps, "
             "TRL's per-update metric gathering and log call, and the previous update's gc.collect()."),
            ("Pad token never sampled (suppress_tokens): TRL treats a pad token inside a response as its end. "
             "The eos token may be sampled; with no stop token it neither ends nor truncates a response."),
            ("Policy and value are separate models updated by one AdamW (TRL default adamw_torch_fused, "
             "weight decay 0) over both with the combined loss pg_loss + vf_coef * vf_loss (vf_coef 0.1, TRL "
             "default); PPOTrainer does no gradient clipping."),
            ("Rollout log-probs come from generate()'s processed scores, in which the suppressed pad token "
             "has probability 0: they differ from the training forward's by log(1 - p(pad)), about 2e-4."),
            "Responses are 24 tokens; queries in a batch are left-padded to the longest prompt of the batch.",
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"trl {trl.__version__} PPO on CPU ({args.threads} threads): {args.updates} updates x "
        f"{ROLLOUTS_PER_UPDATE} rollouts x {NEW_TOKENS} tokens; median update (2..{args.updates}) "
        f"{median_s:.2f} s = {median_rollouts_per_s:.2f} rollouts/s; first update {update_seconds[0]:.2f} s "
        f"-> {args.out}",
        file=sys.stdout,
    )


if __name__ == "__main__":
    main()
