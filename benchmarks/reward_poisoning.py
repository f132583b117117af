"""What 20% bad-faith annotators cost a reward model, and how much excluding the flagged
ones wins back: three reward models trained by `workflows/reward_model.py` on the same
items, evaluated on the same held-out pairs.

    python benchmarks/reward_poisoning.py                      # embedded default base model
    python benchmarks/reward_poisoning.py --backbone <folder> --workers 2

Feedback, until the feedback workflow provides it: pairs of real tweets that continue
similar openings (the same first two words), judged through `alignray.feedback.simulated`.
Training feedback comes from annotators 1-5 (four copies each, every item judged by three
of them, pairwise and thumbs); for "poisoned", bad-faith annotators (flippers and random
clickers alternating) make up ``--bad-faith-share`` of the pool. Held-out items (prompts
split by content hash) are judged by every honest training annotator and by annotators
6-10, who never train.

Conditions: clean (no bad faith), poisoned (all annotators kept), filtered (the same
poisoned feedback with the annotators flagged by `annotator_quality` excluded). Prints a
table and writes ``reward_poisoning.json`` to ``--out``.

Measured (2-core CPU shared with other jobs, the embedded SFT model as backbone, defaults
above, one worker; held-out pairwise accuracy against annotators 6-10 on ~1,100 pairs):
seed 0: clean 0.663, poisoned 0.633, filtered 0.655 (73% of the loss recovered);
seed 1: clean 0.667, poisoned 0.627, filtered 0.667 (100%). All 5 bad-faith annotators
flagged, no honest one; 200-350 s of training per model.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from alignray.core.artifacts import EVAL_FILE, FEEDBACK_FILE, HELDOUT_FEEDBACK_FILE, PAIRS_FILE, POINTWISE_FILE  # noqa: E402
from alignray.data.tweets import is_heldout, load_tweets, split_opening  # noqa: E402
from alignray.data.vader import vader_raters  # noqa: E402
from alignray.feedback.aggregate import build_training_tables  # noqa: E402
from alignray.feedback.quality import annotator_quality, annotator_weights  # noqa: E402
from alignray.feedback.schema import write_feedback  # noqa: E402
from alignray.feedback.simulated import (HELD_OUT_JUDGE_RATERS, TRAINING_RATERS, make_annotator_pool,  # noqa: E402
                                         simulate_feedback)
from alignray.core.machine import machine_info  # noqa: E402

PROMPT_WORDS = 4
COPIES_PER_RATER = 4  # 20 honest annotators: a 20% share of bad faith is then exactly 5 of 25


def tweet_items(num_prompts: int, responses_per_prompt: int, heldout_fraction: float) -> dict[str, tuple]:
    """(prompts, candidate responses) for train and held-out: each prompt is a tweet's
    opening, its candidates the continuations of tweets that open with the same two words
    and contain at least one lexicon word (a text without one ties with every other)."""
    lexicon = vader_raters()
    groups: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for tweet in load_tweets(PROMPT_WORDS + 3):
        prompt, response = split_opening(tweet.text, PROMPT_WORDS)
        if lexicon.lexicon_words(response):
            groups[" ".join(prompt.lower().split()[:2])].append((prompt, response))
    items = {"train": ([], []), "heldout": ([], [])}
    for key, members in groups.items():
        split = "heldout" if is_heldout(key, heldout_fraction) else "train"
        prompts, candidates = items[split]
        for start in range(0, len(members) - responses_per_prompt + 1, responses_per_prompt):
            chunk = members[start:start + responses_per_prompt]
            prompts.append(chunk[0][0])
            candidates.append([response for _, response in chunk])
    return {split: (prompts[:num_prompts], candidates[:num_prompts]) for split, (prompts, candidates) in items.items()}


def write_feedback_dir(folder: Path, train_feedback, heldout_feedback, policy: str) -> dict:
    """The files `workflows/reward_model.py` reads; returns the annotator verdicts."""
    folder.mkdir(parents=True, exist_ok=True)
    quality = annotator_quality(train_feedback)
    tables = build_training_tables(train_feedback, annotator_weights(quality, policy))
    write_feedback(train_feedback, folder / FEEDBACK_FILE)
    write_feedback(heldout_feedback, folder / HELDOUT_FEEDBACK_FILE)
    pq.write_table(tables.pairs, folder / PAIRS_FILE)
    pq.write_table(tables.pointwise, folder / POINTWISE_FILE)
    return {"flagged": quality.flagged, "counts": tables.counts}


def app_config(args, workdir: Path):
    from alignray.workflows.common import compose_app_config
    overrides = [f"workdir={workdir}", f"cluster.num_workers={args.workers}", f"reward_model.lr={args.lr}",
                 f"reward_model.epochs={args.epochs}", f"reward_model.batch_size={args.batch_size}", f"seed={args.seed}",
                 "reward_model.compare_unfiltered=true"]
    return compose_app_config(overrides)


def default_backbone() -> str:
    from alignray.pretrain.base_model import resolve_base_model
    from alignray.workflows.common import compose_app_config
    cfg = compose_app_config([])
    return resolve_base_model(cfg.model, cfg.cache_dir, cfg.seed)


def row(name: str, result: dict) -> dict:
    heldout = result["heldout"]
    return {"condition": name, "pairs": result["pairs"], "pointwise": result["pointwise"],
            "accuracy_vs_annotators_1_5": heldout["training_annotators"]["accuracy"],
            "accuracy_vs_annotators_6_10": heldout["heldout_annotators"]["accuracy"],
            "heldout_items": heldout["heldout_annotators"]["items"],
            "calibration_error_6_10": heldout["heldout_annotators"]["calibration_error"],
            "train_s": result["train_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default=None, help="model folder (default: the embedded base model)")
    parser.add_argument("--prompts", type=int, default=400, help="training prompts (held-out: half as many)")
    parser.add_argument("--responses-per-prompt", type=int, default=4)
    parser.add_argument("--bad-faith-share", type=float, default=0.2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "reward_poisoning")
    args = parser.parse_args()
    started = time.monotonic()
    backbone = args.backbone or default_backbone()
    items = tweet_items(args.prompts, args.responses_per_prompt, heldout_fraction=0.3)
    items["heldout"] = tuple(part[: args.prompts // 2] for part in items["heldout"])
    honest = make_annotator_pool(TRAINING_RATERS, copies_per_rater=COPIES_PER_RATER, seed=args.seed)
    poisoned = make_annotator_pool(TRAINING_RATERS, bad_faith_share=args.bad_faith_share,
                                   copies_per_rater=COPIES_PER_RATER, seed=args.seed)
    judged = {"forms": ("pairwise", "thumbs"), "annotators_per_item": 3, "pairs_per_prompt": 3, "seed": args.seed}
    heldout_feedback = simulate_feedback(honest + make_annotator_pool(HELD_OUT_JUDGE_RATERS), *items["heldout"],
                                         forms=("pairwise",), seed=args.seed + 1)
    args.out.mkdir(parents=True, exist_ok=True)
    verdicts = {
        "clean": write_feedback_dir(args.out / "feedback-clean", simulate_feedback(honest, *items["train"], **judged),
                                    heldout_feedback, "exclude"),
        "poisoned": write_feedback_dir(args.out / "feedback-poisoned",
                                       simulate_feedback(poisoned, *items["train"], **judged),
                                       heldout_feedback, "exclude"),
    }
    bad_faith = sorted(a.annotator_id for a in poisoned if a.behaviour != "honest")
    print(f"backbone {backbone}; {len(items['train'][0])} training prompts, {len(items['heldout'][0])} held-out; "
          f"bad-faith annotators {bad_faith}; flagged {verdicts['poisoned']['flagged']}", flush=True)

    from alignray.workflows.reward_model import run_reward_model
    evaluations = {}
    for name in ("clean", "poisoned"):
        out = run_reward_model(app_config(args, args.out / "runs"), backbone, args.out / f"feedback-{name}")
        evaluations[name] = json.loads((out / EVAL_FILE).read_text())
    rows = [row("clean", evaluations["clean"]["model"]),
            row("poisoned", evaluations["poisoned"]["with_flagged_annotators"]),
            row("poisoned-but-filtered", evaluations["poisoned"]["model"])]
    lost = rows[0]["accuracy_vs_annotators_6_10"] - rows[1]["accuracy_vs_annotators_6_10"]
    won_back = rows[2]["accuracy_vs_annotators_6_10"] - rows[1]["accuracy_vs_annotators_6_10"]
    report = {"backbone": backbone, "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
              "bad_faith_annotators": bad_faith, "flagged": verdicts["poisoned"]["flagged"],
              "flagged_in_clean": verdicts["clean"]["flagged"],
              "accuracy_lost_6_10": lost, "share_recovered": won_back / lost if lost > 0 else None,
              "wall_s": round(time.monotonic() - started, 1), "machine": machine_info()}
    (args.out / "reward_poisoning.json").write_text(json.dumps(report, indent=2))
    print(f"\n{'condition':<24}{'pairs':>7}{'acc 1-5':>9}{'acc 6-10':>9}{'ECE 6-10':>9}{'train s':>9}")
    for r in rows:
        print(f"{r['condition']:<24}{r['pairs']:>7}{r['accuracy_vs_annotators_1_5']:>9.3f}"
              f"{r['accuracy_vs_annotators_6_10']:>9.3f}{r['calibration_error_6_10']:>9.3f}{r['train_s']:>9.0f}")
    print(f"accuracy lost to bad faith (vs 6-10): {lost:.3f}; share recovered by filtering: "
          f"{report['share_recovered'] if report['share_recovered'] is None else round(report['share_recovered'], 2)}; "
          f"wall time {report['wall_s']:.0f} s; {args.out / 'reward_poisoning.json'}")


if __name__ == "__main__":
    main()
