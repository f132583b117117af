"""How often the AI judge agrees with the held-out annotators on pairs of real tweets.

    python benchmarks/rlaif_agreement.py --judge <model folder or hub id>      # e.g. the SFT model
    python benchmarks/rlaif_agreement.py --pairs 1000 --actors 2               # embedded base model

(The embedded base model is pretrained on first use, minutes on CPU, and cached.)

Pairs come from the embedded default's held-out tweets (never trained on): the opening of
tweet i is the prompt; its real continuation and the continuation of another held-out
tweet are the two replies. The held-out annotators (VADER raters 6-10, mean score) decide
which reply is better; pairs they score equally are left out. The judge runs as in the
feedback app (Ray Data actor pool, both orders, alignray/feedback/rlaif.py). For scale, the same
table shows the training annotators (raters 1-5) against the held-out ones, and reports
agreement on clear pairs (held-out scores at least one rating unit apart). Prints a table
and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parent.parent
CLEAR_GAP = 1.0  # held-out score difference of a clear pair, in lexicon rating units


def tweet_pairs(count: int, seed: int) -> list[dict]:
    """Held-out tweet openings, each with its own continuation and another tweet's, in random order."""
    import pyarrow.parquet as pq

    from alignray.config.data import DataConfig
    from alignray.data.prompts import prepare_embedded_data
    with tempfile.TemporaryDirectory() as folder:
        rows = pq.read_table(prepare_embedded_data(DataConfig(), folder)["demonstrations_heldout"]).to_pylist()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(rows))
    pairs = []
    for i, j in zip(order, np.roll(order, 1)):
        own, other = rows[i]["response"], rows[j]["response"]
        a, b = (own, other) if rng.random() < 0.5 else (other, own)
        pairs.append({"prompt": rows[i]["prompt"], "response_a": a, "response_b": b})
    return pairs[:count]


def agreement(preference_a: np.ndarray, difference: np.ndarray) -> dict[str, float]:
    """Share of pairs where ``preference_a`` (> 0.5: a) sides with the sign of ``difference``
    (an indifferent 0.5 counts half), with a normal-approximation 95% interval."""
    share = float(np.mean(np.where(preference_a == 0.5, 0.5, (preference_a > 0.5) == (difference > 0))))
    half_width = 1.96 * float(np.sqrt(share * (1 - share) / max(1, len(difference))))
    return {"agreement": share, "ci95": [share - half_width, share + half_width], "pairs": len(difference)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--judge", default="", help="model folder or hub id (default: the embedded base model)")
    parser.add_argument("--pairs", type=int, default=400, help="pairs judged (before leaving out ties)")
    parser.add_argument("--actors", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-reply-tokens", type=int, default=64)
    parser.add_argument("--gpu", action="store_true", help="one GPU per judge actor")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "rlaif_agreement.json"))
    args = parser.parse_args()

    from alignray.actors import runtime
    from alignray.actors.ai_labeller import label_with_actor_pool
    from alignray.config.cluster import ClusterConfig
    from alignray.config.model import ModelConfig
    from alignray.feedback.simulated import HELD_OUT_JUDGE_RATERS, TRAINING_RATERS, judge_scores
    from alignray.pretrain.base_model import resolve_base_model

    judge = args.judge or resolve_base_model(ModelConfig(), Path("~/.cache/alignray").expanduser())
    pairs = tweet_pairs(args.pairs, args.seed)
    a, b = [p["response_a"] for p in pairs], [p["response_b"] for p in pairs]
    heldout = judge_scores(a, HELD_OUT_JUDGE_RATERS) - judge_scores(b, HELD_OUT_JUDGE_RATERS)
    training = judge_scores(a, TRAINING_RATERS) - judge_scores(b, TRAINING_RATERS)
    decided = heldout != 0
    items = [{"item": i} | pair for i, pair in enumerate(pairs) if decided[i]]

    owned = runtime.connect(ClusterConfig(), runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
                                                                        "TOKENIZERS_PARALLELISM": "false"}})
    try:
        started = time.monotonic()
        rows = label_with_actor_pool(items, str(judge), actors=args.actors, batch_size=args.batch_size,
                                     max_reply_tokens=args.max_reply_tokens, use_gpu=args.gpu)
        seconds = time.monotonic() - started
    finally:
        runtime.shutdown_if_owned(owned)

    preference = np.array([float(r["preference_a"]) for r in rows])
    bias = np.array([float(r["position_bias"]) for r in rows])
    difference, train_preference = heldout[decided], np.where(training[decided] > 0, 1.0,
                                                              np.where(training[decided] < 0, 0.0, 0.5))
    clear = np.abs(difference) >= CLEAR_GAP
    table = {
        "AI judge": {"all": agreement(preference, difference),
                     "clear": agreement(preference[clear], difference[clear])},
        "training annotators 1-5": {"all": agreement(train_preference, difference),
                                    "clear": agreement(train_preference[clear], difference[clear])},
    }
    from alignray.core.machine import machine_info
    result = {"judge_model": str(judge), "pairs_sampled": len(pairs), "pairs_judged": len(rows),
              "pairs_left_out_heldout_tie": int((~decided).sum()), "clear_pairs": int(clear.sum()),
              "clear_gap": CLEAR_GAP, "agreement_with_heldout_annotators": table,
              "mean_position_bias_log_odds": float(bias.mean()),
              "texts_clipped": int(sum(int(r["clipped_texts"]) for r in rows)),
              "judge_wall_time_s": round(seconds, 1), "actors": args.actors, "seed": args.seed,
              "machine": machine_info()}
    print(f"\nAgreement with held-out annotators 6-10 on {len(rows)} pairs of real held-out tweets "
          f"({int(clear.sum())} clear); judge {judge}")
    print(f"{'who':<26}{'all pairs':>22}{'clear pairs':>22}")
    for who, scores in table.items():
        cells = [f"{s['agreement']:.3f} [{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}]"
                 for s in (scores["all"], scores["clear"])]
        print(f"{who:<26}{cells[0]:>22}{cells[1]:>22}")
    print(f"mean position bias {result['mean_position_bias_log_odds']:.3f} log-odds toward the first reply "
          f"(cancelled by the swap); {result['texts_clipped']} texts clipped; judged in {seconds:.0f} s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
