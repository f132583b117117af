"""How often an AI judge agrees with the held-out annotators on pairs of real tweets, with its
biases, unparsed share and cost, for a local judge or one behind an OpenAI-compatible endpoint.

    python benchmarks/rlaif_agreement.py --judge <model folder or hub id>              # local, log-probs
    python benchmarks/rlaif_agreement.py --judge <folder> --kind openai --serve       # transformers serve
    python benchmarks/rlaif_agreement.py --kind openai --base-url http://127.0.0.1:8000/v1 --model NAME
    python benchmarks/rlaif_agreement.py --pairs 1000 --actors 2                      # embedded base model

(The embedded base model is pretrained on first use, minutes on CPU, and cached.)

Pairs come from the embedded default's held-out tweets (never trained on): the opening of
tweet i is the prompt; its real continuation and the continuation of another held-out
tweet are the two replies. The held-out annotators (VADER raters 6-10, mean score) decide
which reply is better; pairs they score equally are left out. The judge asks the rubric's
question (``--rubric``, default ``sentiment``) in both orders as in the feedback app
(alignray/judges/forms.py): a local judge on the Ray Data actor pool, read from its log-probs; an
endpoint judge through alignray's client (``--serve`` starts ``transformers serve`` on
``--judge`` on 127.0.0.1 and stops it after). Agreement is over the pairs the judge judged (a
tie counts half), with a normal-approximation 95% interval; unparsed and failed pairs are
counted apart. For scale, the training annotators (raters 1-5) against the held-out ones.
Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import nullcontext
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
    if len(difference) == 0:
        return {"agreement": float("nan"), "ci95": [float("nan")] * 2, "pairs": 0}
    share = float(np.mean(np.where(preference_a == 0.5, 0.5, (preference_a > 0.5) == (difference > 0))))
    half_width = 1.96 * float(np.sqrt(share * (1 - share) / max(1, len(difference))))
    return {"agreement": share, "ci95": [share - half_width, share + half_width], "pairs": len(difference)}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--judge", default="", help="model folder or hub id (default: the embedded base model)")
    parser.add_argument("--kind", default="local", choices=("local", "openai"))
    parser.add_argument("--serve", action="store_true", help="openai: serve --judge with transformers serve")
    parser.add_argument("--base-url", default="", help="openai: the endpoint, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--model", default="", help="openai: the model name (default: --judge)")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--rubric", default="sentiment")
    parser.add_argument("--label", default="", help="the judge's name in the table")
    parser.add_argument("--pairs", type=int, default=400, help="pairs judged (before leaving out ties)")
    parser.add_argument("--actors", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-reply-tokens", type=int, default=64)
    parser.add_argument("--gpu", action="store_true", help="one GPU per judge actor")
    parser.add_argument("--cache", default="", help="a verdict cache (SQLite): an interrupted run resumes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "rlaif_agreement.json"))
    return parser.parse_args()


def local_judging(args, judge: str, rubric, items):
    from alignray.actors import runtime
    from alignray.actors.ai_labeller import local_pair_asker
    from alignray.config.cluster import ClusterConfig
    from alignray.config.judge import JudgeConfig
    from alignray.judges.build import local_identity
    from alignray.judges.forms import judge_pairs
    owned = runtime.connect(ClusterConfig(), runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
                                                                        "TOKENIZERS_PARALLELISM": "false"}})
    try:
        ask = local_pair_asker(judge, actors=args.actors, batch_size=args.batch_size,
                               max_reply_tokens=args.max_reply_tokens, use_gpu=args.gpu, rubric=args.rubric)
        identity = local_identity(JudgeConfig(max_reply_tokens=args.max_reply_tokens), judge)
        return judge_pairs(ask, identity, rubric, items, open_cache(args))
    finally:
        runtime.shutdown_if_owned(owned)


def open_cache(args):
    from alignray.judges.cache import VerdictCache
    return VerdictCache(args.cache) if args.cache else None


def endpoint_judging(args, judge: str, rubric, items):
    from alignray.config.judge import EndpointJudgeConfig
    from alignray.judges.endpoint import EndpointJudge
    from alignray.judges.forms import endpoint_asker, judge_pairs
    sys.path.insert(0, str(REPO))
    from tests.judge_server import transformers_serve
    serving = transformers_serve(Path(judge), ready_timeout_s=900.0) if args.serve else nullcontext(args.base_url)
    with serving as base_url:
        endpoint = EndpointJudge(EndpointJudgeConfig(base_url=base_url, model=args.model or judge,
                                                     api_key_env=args.api_key_env, concurrency=args.concurrency,
                                                     max_tokens=args.max_tokens, max_retries=2))
        try:
            return judge_pairs(endpoint_asker(endpoint, rubric, "pairwise"), endpoint.identity(), rubric, items,
                               open_cache(args))
        finally:
            endpoint.close()


def measure(judging, items, heldout: np.ndarray, training: np.ndarray) -> dict:
    """Agreement (all and clear pairs), biases, unparsed share, against the held-out annotators."""
    from alignray.judges.calibration import length_bias, position_bias, longer_share
    verdicts = judging.verdicts
    judged = np.array([v["status"] == "judged" for v in verdicts])
    preference = np.array([v.get("preference_a", 0.5) for v in verdicts])[judged]
    difference, clear = heldout[judged], np.abs(heldout[judged]) >= CLEAR_GAP
    train_preference = np.where(training > 0, 1.0, np.where(training < 0, 0.0, 0.5))
    triples = [(p["prompt"], p["response_a"], p["response_b"]) for p in items]
    lengths = length_bias(triples, verdicts, None)["judge"]
    return {
        "agreement_with_heldout_annotators": {
            "AI judge": {"all": agreement(preference, difference),
                         "clear": agreement(preference[clear], difference[clear])},
            "training annotators 1-5": {"all": agreement(train_preference, heldout),
                                        "clear": agreement(train_preference[np.abs(heldout) >= CLEAR_GAP],
                                                           heldout[np.abs(heldout) >= CLEAR_GAP])}},
        "counts": judging.counts, "unparsed_share": judging.counts["unparsed"] / max(1, len(verdicts)),
        "failed_share": judging.counts["failed"] / max(1, len(verdicts)),
        "position_bias": position_bias(verdicts),
        "length_bias": {"judge": lengths, "heldout_annotators": longer_share(triples, (heldout > 0).astype(float))},
    }


def main() -> None:
    args = parse_args()
    from alignray.config.model import ModelConfig
    from alignray.core.machine import machine_info
    from alignray.feedback.simulated import HELD_OUT_JUDGE_RATERS, TRAINING_RATERS, judge_scores
    from alignray.judges.rubric import load_rubric
    from alignray.pretrain.base_model import resolve_base_model

    judge = args.judge or (resolve_base_model(ModelConfig(), Path("~/.cache/alignray").expanduser())
                           if args.kind == "local" or args.serve else "")
    rubric = load_rubric(args.rubric)
    pairs = tweet_pairs(args.pairs, args.seed)
    a, b = [p["response_a"] for p in pairs], [p["response_b"] for p in pairs]
    heldout = judge_scores(a, HELD_OUT_JUDGE_RATERS) - judge_scores(b, HELD_OUT_JUDGE_RATERS)
    training = judge_scores(a, TRAINING_RATERS) - judge_scores(b, TRAINING_RATERS)
    decided = heldout != 0
    items = [pair for i, pair in enumerate(pairs) if decided[i]]
    triples = [(p["prompt"], p["response_a"], p["response_b"]) for p in items]
    started = time.monotonic()
    run = local_judging if args.kind == "local" else endpoint_judging
    judging, answers = run(args, str(judge), rubric, triples)
    seconds = time.monotonic() - started
    result = {"judge": args.label or str(judge or args.model), "judge_model": str(judge or args.model),
              "kind": args.kind, "served_by": "transformers serve" if args.serve else args.base_url or None,
              "rubric": rubric.name, "rubric_digest": rubric.digest, "pairs_sampled": len(pairs),
              "pairs_judged": len(items), "pairs_left_out_heldout_tie": int((~decided).sum()),
              **measure(judging, items, heldout[decided], training[decided]),
              "judge_wall_time_s": round(seconds, 1),
              "seconds_per_label": round(seconds / max(1, judging.counts["judged"]), 3),
              # each request's own seconds (kept in the cache with its verdict), over the judged pairs
              "request_seconds_per_label": round(sum(x.seconds for x in answers) / max(1, judging.counts["judged"]), 3),
              "tokens_per_label": round(sum(x.tokens_in + x.tokens_out for x in answers)
                                        / max(1, judging.counts["judged"]), 1),
              "actors": args.actors, "seed": args.seed, "machine": machine_info()}
    print_table(result)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


def print_table(result: dict) -> None:
    print(f"\nAgreement with held-out annotators 6-10 on real held-out tweet pairs; judge {result['judge']} "
          f"({result['kind']}, rubric {result['rubric']})")
    print(f"{'who':<26}{'all pairs':>26}{'clear pairs':>26}")
    for who, scores in result["agreement_with_heldout_annotators"].items():
        cells = [f"{s['agreement']:.3f} [{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}] n={s['pairs']}"
                 for s in (scores["all"], scores["clear"])]
        print(f"{who:<26}{cells[0]:>26}{cells[1]:>26}")
    from alignray.feedback.report import share_text as share
    bias, length = result["position_bias"], result["length_bias"]
    print(f"first reply chosen {share(bias['first_reply_chosen_share'])} (mean "
          f"{share(bias['mean_position_bias_log_odds'])} log-odds); longer reply preferred "
          f"{share(length['judge']['longer_preferred_share'])} (held-out annotators "
          f"{share(length['heldout_annotators']['longer_preferred_share'])}); unparsed {result['unparsed_share']:.3f}, "
          f"failed {result['failed_share']:.3f}; {result['seconds_per_label']} s per label "
          f"({result['judge_wall_time_s']} s)")


if __name__ == "__main__":
    main()
