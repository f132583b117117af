"""The shipped embedded base model against a fresh pretraining of its recipe.

    python benchmarks/shipped_base_model.py            # pretrain the default recipe, compare with the shipped files
    python benchmarks/shipped_base_model.py --write    # ... and replace the shipped files with this pretraining

Pretrains the default recipe (`EmbeddedRecipe()`, seed 0; ~11 minutes on 2 cores) in a
temporary folder, then measures on the same held-out tweet blocks the loss of that fp32 model
and of the shipped one as every run loads it (bf16 weights widened to fp32). Prints a table and
writes JSON naming the machine. Pretraining is fp32 and seeded, but CPUs with other vector
units may round differently, so a rebuild on another machine is close to, not bit-equal to,
the shipped model: the held-out losses say how close.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parent.parent


def heldout_loss_of(model_dir: Path, recipe) -> float:
    import torch

    from alignray.data.tweets import is_heldout, load_tweets
    from alignray.models.modeling import load_causal_lm, load_tokenizer
    from alignray.pretrain.embedded import HELDOUT_FRACTION, heldout_loss, pack_blocks
    tokenizer = load_tokenizer(str(model_dir))
    texts = [t.text for t in load_tweets() if is_heldout(t.text, HELDOUT_FRACTION)]
    blocks = pack_blocks(tokenizer, texts, recipe.n_positions)[: recipe.eval_batches * recipe.batch_size]
    return heldout_loss(load_causal_lm(str(model_dir), torch.device("cpu")), blocks, recipe)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="replace the shipped files with this pretraining")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "shipped_base_model.json")
    args = parser.parse_args()
    from alignray.config.model import EmbeddedRecipe
    from alignray.core.artifacts import MODEL_DIR, SUMMARY_FILE
    from alignray.core.machine import describe_machine, machine_info
    from alignray.pretrain.embedded import build_base_model, recipe_hash
    from alignray.pretrain.shipped import SHIPPED_DIR, seed_from_shipped, shipped_recipe, write_shipped

    recipe, seed = EmbeddedRecipe(), 0
    key = recipe_hash(recipe, seed)
    with tempfile.TemporaryDirectory() as folder:
        model_dir = build_base_model(recipe, folder, seed, rebuild=True)
        summary = json.loads((model_dir.parent / SUMMARY_FILE).read_text())
        if args.write:
            write_shipped(model_dir, dataclasses.asdict(recipe), seed, key, summary)
        shipped = shipped_recipe()
        rows = {"retrained (fp32)": heldout_loss_of(model_dir, recipe)}
        if shipped is not None:
            seed_from_shipped(Path(folder) / "shipped" / MODEL_DIR)
            rows["shipped (bf16 stored, loaded as fp32)"] = heldout_loss_of(Path(folder) / "shipped" / MODEL_DIR, recipe)
    result = {"recipe_key": key, "shipped_key": shipped["key"] if shipped else None,
              "pretrain_seconds": summary["seconds"], "steps": summary["steps"], "heldout_loss": rows,
              "shipped_bytes": sum(p.stat().st_size for p in SHIPPED_DIR.iterdir()) if SHIPPED_DIR.is_dir() else 0,
              "machine": machine_info()}
    print(f"machine: {describe_machine(result['machine'])}")
    print(f"recipe key {key} (shipped: {result['shipped_key']}); pretraining {summary['seconds']:.0f} s, "
          f"{summary['steps']} steps; shipped files {result['shipped_bytes'] / 1e6:.1f} MB")
    print(f"{'model':<40} {'held-out loss (nats/token)':>28}")
    for name, loss in rows.items():
        print(f"{name:<40} {loss:>28.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
