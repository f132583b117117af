"""Spend labels where they teach most: reward-model held-out accuracy against the number of
labels, for random and active selection of the pairs to label (issue #16).

    python benchmarks/active_labelling.py --feedback-dir runs/default/feedback-<hash>   # in process: 686 s here
    python benchmarks/active_labelling.py --feedback-dir ... --http http://127.0.0.1:8010 --admin-token-file token.txt
    python benchmarks/active_labelling.py --budgets 100,200 --seeds 1 --pool-prompts 100   # a quick look

Candidates: the embedded default's training prompts with the responses a feedback phase
sampled from its policy (``--feedback-dir``: its ``feedback.parquet`` and
``heldout_feedback.parquet``), or ``--responses`` responses to ``--pool-prompts`` prompts
sampled here from the embedded base model; every pair of a prompt's distinct responses is a
candidate. Held-out: as many pairs on the embedded
default's held-out prompts, each judged by the held-out raters 6-10; accuracy is against
their majority (alignray.reward.evaluation). Annotators: the training raters 1-5
(alignray.feedback.simulated, grouped by leniency), each label given by one of them,
through the collection API (benchmarks/labelling_desk.py: in-process or HTTP).

The reward model, cheap enough to retrain after every round: a linear Bradley-Terry model
on frozen bag-of-words features (each response's word counts over its number of words,
vocabulary of every candidate and held-out response), L2-regularised, fitted by Newton-CG; an
ensemble of ``--members`` fits on bootstrap resamples of the labels gives the reward (their
mean) and the disagreement. It is retrained every ``--cadence`` labels; the first round is
random for every strategy (no model yet). Strategies: random; active by the ensemble's
disagreement on r_a - r_b; active by the smallest margin |r_a - r_b| of the mean model
(alignray.collect.selection). Each seed changes the labels' noise, the random picks and the
bootstraps, on one candidate pool.

Prints a table; writes JSON and a PNG (benchmarks/results/active_labelling.{json,png}).
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from scipy import optimize, sparse
from scipy.special import expit

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from alignray.core.artifacts import FEEDBACK_FILE, HELDOUT_FEEDBACK_FILE  # noqa: E402
from alignray.collect.selection import pair_uncertainty, select_pairs  # noqa: E402
from alignray.data.vader import tokenize  # noqa: E402
from alignray.feedback.aggregate import preference_pairs  # noqa: E402
from alignray.feedback.groups import rows_of_annotators  # noqa: E402
from alignray.feedback.simulated import (BY_LENIENCY, HELD_OUT_JUDGE_RATERS, TRAINING_RATERS,  # noqa: E402
                                         annotator_id, make_annotator_pool, simulate_feedback)
from alignray.reward.evaluation import accuracy_against_votes, panel_votes  # noqa: E402
from benchmarks.labelling_desk import HttpDesk, InProcessDesk, answer_queue, pair_task  # noqa: E402

STRATEGIES = {"random": ("random", None), "active-disagreement": ("active", "disagreement"),
              "active-margin": ("active", "margin")}


@dataclasses.dataclass
class Candidates:
    """The pool of candidate pairs and the held-out pairs with the held-out raters' votes."""

    pairs: list[tuple[str, str, str]]  # (prompt, response_a, response_b)
    heldout: pa.Table  # pairwise feedback of raters 6-10 on the held-out pairs
    texts: dict[str, int]  # every response -> its row in the feature matrix
    consensus_accuracy: float  # the training raters' majority against the held-out raters' majority


def candidate_pairs(prompts: list[str], responses: list[list[str]]) -> list[tuple[str, str, str]]:
    """Every pair of distinct responses to each prompt."""
    return [(prompt, a, b) for prompt, shown in zip(prompts, responses, strict=True)
            for a, b in itertools.combinations(sorted(set(shown)), 2)]


def build_candidates(train: tuple[list, list], heldout: tuple[list, list], seed: int = 0) -> Candidates:
    """The candidates of the training (prompts, responses); every pair of the held-out ones
    judged by all ten raters (the training raters' votes give the consensus reference)."""
    judges = make_annotator_pool(TRAINING_RATERS + HELD_OUT_JUDGE_RATERS, groups=BY_LENIENCY)
    everyone = simulate_feedback(judges, *heldout, forms=("pairwise",), seed=seed)
    panels = {name: [annotator_id(r) for r in raters]
              for name, raters in (("train", TRAINING_RATERS), ("heldout", HELD_OUT_JUDGE_RATERS))}
    votes = panel_votes(everyone, panels["heldout"]).merge(
        panel_votes(everyone, panels["train"]), on=["prompt", "response_a", "response_b"], suffixes=("", "_train"))
    consensus = accuracy_against_votes(votes["wins_a_train"] / votes["votes_train"], np.full(len(votes), 0.5),
                                       votes["wins_a"], votes["votes"])["accuracy"]
    texts = sorted({r for shown in train[1] + heldout[1] for r in shown})
    return Candidates(candidate_pairs(*train), rows_of_annotators(everyone, panels["heldout"]),
                      {text: i for i, text in enumerate(texts)}, consensus)


def bag_of_words(texts: list[str]) -> sparse.csr_matrix:
    """Each text's word counts over its number of words (frozen: nothing here is learnt)."""
    vocabulary: dict[str, int] = {}
    rows, columns, values = [], [], []
    for row, text in enumerate(texts):
        words = tokenize(text)
        for word in words:
            rows.append(row)
            columns.append(vocabulary.setdefault(word, len(vocabulary)))
            values.append(1.0 / len(words))
    return sparse.csr_matrix((values, (rows, columns)), shape=(len(texts), max(1, len(vocabulary))))


def fit_bradley_terry(difference: sparse.csr_matrix, weights: np.ndarray, l2: float) -> np.ndarray:
    """Weights w minimising sum_i weight_i * log(1 + exp(-w . difference_i)) + l2/2 |w|^2, by
    Newton-CG on the words that occur in the pairs (the others' optimum is 0)."""
    used = np.unique(difference.indices)
    x = difference[:, used]

    def loss_and_gradient(w):
        margin = x @ w
        loss = weights @ np.logaddexp(0.0, -margin) + 0.5 * l2 * w @ w
        return loss, -(x.T @ (weights * expit(-margin))) + l2 * w

    def hessian_times(w, v):
        p = expit(x @ w)
        return x.T @ (weights * p * (1.0 - p) * (x @ v)) + l2 * v

    result = optimize.minimize(loss_and_gradient, np.zeros(len(used)), jac=True, hessp=hessian_times,
                               method="Newton-CG", options={"maxiter": 50})
    full = np.zeros(difference.shape[1])
    full[used] = result.x
    return full


class LinearRewardEnsemble:
    """``members`` linear Bradley-Terry fits on bootstrap resamples of the labelled pairs."""

    def __init__(self, features: sparse.csr_matrix, texts: dict[str, int], members: int, l2: float):
        self.features, self.texts, self.members, self.l2 = features, texts, members, l2
        self.weights = np.zeros((members, features.shape[1]))

    def fit(self, pairs: pa.Table, rng: np.random.Generator) -> None:
        chosen = [self.texts[t] for t in pairs.column("chosen").to_pylist()]
        rejected = [self.texts[t] for t in pairs.column("rejected").to_pylist()]
        difference = (self.features[chosen] - self.features[rejected]).tocsr()
        weight = pairs.column("weight").to_numpy()
        for member in range(self.members):
            resample = rng.multinomial(len(weight), np.full(len(weight), 1.0 / len(weight)))
            self.weights[member] = fit_bradley_terry(difference, weight * resample, self.l2)

    def member_rewards(self, texts: list[str]) -> np.ndarray:
        """Raw rewards [members, texts], as RewardModel.member_scores gives them."""
        return self.weights @ self.features[[self.texts[t] for t in texts]].T.toarray()

    def heldout_accuracy(self, heldout: pa.Table) -> float:
        votes = panel_votes(heldout)
        reward_a = self.member_rewards(votes["response_a"].tolist()).mean(axis=0)
        reward_b = self.member_rewards(votes["response_b"].tolist()).mean(axis=0)
        return accuracy_against_votes(reward_a, reward_b, votes["wins_a"], votes["votes"])["accuracy"]


@dataclasses.dataclass
class StudySettings:
    budgets: list[int]
    cadence: int = 100
    members: int = 5
    l2: float = 1e-2


def send_round(desk, annotators: list, tokens: dict[str, str], pairs: list[tuple[str, str, str]],
               rng: np.random.Generator) -> None:
    """Each pair to one annotator (shuffled round-robin), then every annotator answers its queue."""
    order = rng.permutation(len(pairs))
    for k, annotator in enumerate(annotators):
        share = [pair_task(*pairs[i]) for i in order[k::len(annotators)]]
        if share:
            desk.add_tasks(share, [annotator.annotator_id])
    for annotator in annotators:
        answer_queue(desk, tokens[annotator.annotator_id], annotator, rng)


def run_selection(desk, candidates: Candidates, model: LinearRewardEnsemble, strategy: str, settings: StudySettings,
                  seed: int, run_id: str) -> list[dict]:
    """One strategy, one seed: label ``cadence`` pairs a round up to the largest budget,
    retraining after each round; returns the learning curve."""
    kind, measure = STRATEGIES[strategy]
    rng = np.random.default_rng(seed)
    annotators = [dataclasses.replace(a, annotator_id=f"{run_id}-{a.annotator_id}")
                  for a in make_annotator_pool(TRAINING_RATERS, groups=BY_LENIENCY)]
    tokens = {a.annotator_id: desk.add_annotator(a.annotator_id, a.group) for a in annotators}
    labelled = np.zeros(len(candidates.pairs), dtype=bool)
    curve, trained = [], False
    while labelled.sum() < max(settings.budgets):
        available = np.flatnonzero(~labelled)
        count = min(settings.cadence, max(settings.budgets) - int(labelled.sum()))
        uncertainty = None
        if kind == "active" and trained:
            rewards_a = model.member_rewards([candidates.pairs[i][1] for i in available])
            rewards_b = model.member_rewards([candidates.pairs[i][2] for i in available])
            uncertainty = pair_uncertainty(rewards_a, rewards_b, measure)
        picks = available[select_pairs(len(available), count, kind if trained else "random", rng, uncertainty)]
        labelled[picks] = True
        send_round(desk, annotators, tokens, [candidates.pairs[i] for i in picks], rng)
        feedback = rows_of_annotators(desk.feedback(), list(tokens))
        started = time.monotonic()
        # In a fixed order, so that the bootstraps do not depend on the order the back end returns rows in.
        model.fit(preference_pairs(feedback).sort_by([(key, "ascending") for key in ("prompt", "chosen", "rejected")]),
                  rng)
        trained = True
        curve.append({"labels": feedback.num_rows, "accuracy": model.heldout_accuracy(candidates.heldout),
                      "fit_s": time.monotonic() - started})
        desk.report_accuracy(curve[-1]["labels"], curve[-1]["accuracy"], f"{run_id} {strategy} seed {seed}")
    return curve


def run_study(candidates: Candidates, settings: StudySettings, strategies: list[str], seeds: list[int],
              make_desk) -> dict:
    """Every strategy with every seed; the curves and the summary at each budget."""
    order = sorted(candidates.texts, key=candidates.texts.get)
    features = bag_of_words(order)
    runs = []
    for seed, strategy in itertools.product(seeds, strategies):
        started = time.monotonic()
        model = LinearRewardEnsemble(features, candidates.texts, settings.members, settings.l2)
        curve = run_selection(make_desk(), candidates, model, strategy, settings, seed,
                              f"{strategy}-seed{seed}-{os.getpid()}")
        runs.append({"strategy": strategy, "seed": seed, "curve": curve, "wall_s": time.monotonic() - started})
        print(f"{strategy:>20} seed {seed}: " + ", ".join(f"{p['labels']}: {p['accuracy']:.3f}" for p in curve
                                                          if p["labels"] in settings.budgets), flush=True)
    return {"runs": runs, "summary": summarize(runs, settings.budgets)}


def accuracy_at(curve: list[dict], budget: int) -> float:
    return next(point["accuracy"] for point in curve if point["labels"] >= budget)


def summarize(runs: list[dict], budgets: list[int]) -> list[dict]:
    """Per strategy and budget: mean and std over seeds, and the mean paired gain over random."""
    rows = []
    for strategy in dict.fromkeys(run["strategy"] for run in runs):
        for budget in budgets:
            mine = {run["seed"]: accuracy_at(run["curve"], budget) for run in runs if run["strategy"] == strategy}
            base = {run["seed"]: accuracy_at(run["curve"], budget) for run in runs if run["strategy"] == "random"}
            gains = [mine[seed] - base[seed] for seed in mine if seed in base]
            rows.append({"strategy": strategy, "labels": budget, "accuracy_mean": float(np.mean(list(mine.values()))),
                         "accuracy_std": float(np.std(list(mine.values()))), "seeds": len(mine),
                         "gain_over_random_mean": float(np.mean(gains)) if gains else None,
                         "gain_over_random_min": float(np.min(gains)) if gains else None,
                         "gain_over_random_max": float(np.max(gains)) if gains else None})
    return rows


# ----------------------------------------------------------------------------- candidates, output, command line
def responses_by_prompt(feedback_file: Path) -> tuple[list[str], list[list[str]]]:
    """Every prompt of a feedback file with every response shown with it."""
    import pyarrow.parquet as pq
    shown: dict[str, set[str]] = {}
    for row in pq.read_table(feedback_file, columns=["prompt", "responses"]).to_pylist():
        shown.setdefault(row["prompt"], set()).update(row["responses"])
    prompts = sorted(shown)
    return prompts, [sorted(shown[prompt]) for prompt in prompts]


def sample_candidates(policy: str | None, pool_prompts: int, heldout_prompts: int, responses: int,
                      seed: int) -> tuple[tuple[list, list], tuple[list, list], str]:
    """Training and held-out (prompts, responses) of the embedded default, sampled from
    ``policy`` (None: the embedded base model, pretrained on first use and cached)."""
    import tempfile

    from alignray.pretrain.base_model import resolve_base_model
    from alignray.data.prompts import prepare_embedded_data
    from alignray.feedback.sampling import load_policy, sample_policy_responses, take_prompts
    from alignray.workflows.common import compose_app_config
    cfg = compose_app_config([])
    policy = policy or resolve_base_model(cfg.model, cfg.cache_dir, cfg.seed)
    model, tokenizer = load_policy(policy)
    with tempfile.TemporaryDirectory() as folder:
        files = prepare_embedded_data(cfg.data, folder)
        splits = {}
        for split, count in (("train", pool_prompts), ("heldout", heldout_prompts)):
            prompts = take_prompts(files[f"prompts_{split}"], count, seed, cfg.data.max_text_chars)
            splits[split] = (prompts, sample_policy_responses(
                model, tokenizer, prompts, responses, cfg.data.max_prompt_tokens, cfg.data.max_response_tokens,
                batch_size=64, temperature=1.0, seed=seed, label=split))
    return splits["train"], splits["heldout"], policy


def print_table(summary: list[dict], consensus: float) -> None:
    print(f"\nheld-out accuracy against raters 6-10's majority (mean +- std over seeds; gain: paired, vs random, "
          f"min..max over seeds); training raters' consensus: {consensus:.3f}")
    print(f"{'strategy':>20} {'labels':>6} {'accuracy':>15} {'gain over random':>26}")
    for row in summary:
        gain = "" if row["strategy"] == "random" else (
            f"{row['gain_over_random_mean']:+.3f} ({row['gain_over_random_min']:+.3f}.."
            f"{row['gain_over_random_max']:+.3f})")
        print(f"{row['strategy']:>20} {row['labels']:>6} {row['accuracy_mean']:>8.3f} +- {row['accuracy_std']:.3f} "
              f"{gain:>26}")


def plot_curves(study: dict, consensus: float, path: Path) -> None:
    """Mean held-out accuracy against labels per strategy, the seeds' range shaded."""
    from matplotlib.figure import Figure
    figure = Figure(figsize=(6.5, 4.2))
    axes = figure.add_subplot()
    for strategy in dict.fromkeys(run["strategy"] for run in study["runs"]):
        curves = [run["curve"] for run in study["runs"] if run["strategy"] == strategy]
        labels = np.array([point["labels"] for point in curves[0]])
        accuracy = np.array([[point["accuracy"] for point in curve] for curve in curves])
        axes.plot(labels, accuracy.mean(axis=0), label=f"{strategy} ({len(curves)} seeds)")
        axes.fill_between(labels, accuracy.min(axis=0), accuracy.max(axis=0), alpha=0.2)
    axes.axhline(consensus, color="grey", linestyle="--", linewidth=1, label="training raters' consensus")
    axes.set_xscale("log")
    axes.set_xlabel("labels (pairwise, one annotator each)")
    axes.set_ylabel("held-out accuracy vs raters 6-10")
    axes.set_title("Linear reward model: random vs active selection")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budgets", default="200,400,800,1600,2400",
                        help="label counts to report (multiples of cadence)")
    parser.add_argument("--cadence", type=int, default=100, help="labels per round; the model retrains after each")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--members", type=int, default=5, help="bootstrap members of the linear reward ensemble")
    parser.add_argument("--pool-prompts", type=int, default=1500)
    parser.add_argument("--heldout-prompts", type=int, default=200)
    parser.add_argument("--responses", type=int, default=4, help="responses per prompt")
    parser.add_argument("--feedback-dir", default=None,
                        help="a feedback phase's folder: its prompts and responses are the candidates (no sampling)")
    parser.add_argument("--policy", default=None, help="model folder to sample from (default: embedded base model)")
    parser.add_argument("--http", default=None, help="collection server URL (default: the in-process desk)")
    parser.add_argument("--admin-token-file", default=None, help="the server's admin token (with --http)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "active_labelling.json"))
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    settings = StudySettings(budgets=[int(b) for b in args.budgets.split(",")], cadence=args.cadence,
                             members=args.members)
    if any(budget % settings.cadence for budget in settings.budgets):
        raise SystemExit(f"--budgets {settings.budgets} must be multiples of --cadence {settings.cadence}")
    started = time.monotonic()
    if args.feedback_dir:
        folder = Path(args.feedback_dir)
        train = responses_by_prompt(folder / FEEDBACK_FILE)
        heldout = responses_by_prompt(folder / HELDOUT_FEEDBACK_FILE)
        policy = f"the responses of {folder}"
    else:
        train, heldout, policy = sample_candidates(args.policy, args.pool_prompts, args.heldout_prompts,
                                                   args.responses, 0)
    candidates = build_candidates(train, heldout)
    sampling_s = time.monotonic() - started
    if args.http:
        admin_token = Path(args.admin_token_file).read_text().strip()
        make_desk, back_end = (lambda: HttpDesk(args.http, admin_token)), f"HTTP ({args.http})"
    else:
        make_desk, back_end = InProcessDesk, "in-process"
    study = run_study(candidates, settings, args.strategies.split(","), list(range(args.seeds)), make_desk)
    fits = [point["fit_s"] for run in study["runs"] for point in run["curve"]]
    result = {"back_end": back_end, "policy": policy, "settings": dataclasses.asdict(settings),
              "candidate_pairs": len(candidates.pairs), "heldout_pairs": len(panel_votes(candidates.heldout)),
              "training_raters_consensus_accuracy": candidates.consensus_accuracy,
              "reward_model": "linear Bradley-Terry on frozen bag-of-words features, bootstrap ensemble",
              "retrain_s_mean": float(np.mean(fits)), "retrain_s_max": float(np.max(fits)),
              "sampling_s": sampling_s, "wall_s": time.monotonic() - started, **study}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    plot_curves(study, candidates.consensus_accuracy, out.with_suffix(".png"))
    print_table(study["summary"], candidates.consensus_accuracy)
    print(f"\n{len(candidates.pairs)} candidate pairs, {result['heldout_pairs']} held-out pairs; back end {back_end}; "
          f"retrain {result['retrain_s_mean']:.3f} s mean ({settings.members} members); wall {result['wall_s']:.0f} s; "
          f"wrote {out} and {out.with_suffix('.png')}")
    return result


if __name__ == "__main__":
    main()
