"""A trained reward model judged on held-out feedback: accuracy and calibration per annotator
panel (the training annotators, the held-out ones, each group), per ensemble member, and the
final losses of its training."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from alignray.core.artifacts import LOSS_FIGURE, METRICS_FILE
from alignray.core.metrics import plot_curves, read_metrics
from alignray.feedback.groups import GROUP_PANEL, annotator_groups
from alignray.reward.evaluation import evaluate_against_panels
from alignray.reward.model import load_reward_model, reward_texts


def evaluation_panels(heldout: pa.Table, training_annotators: set[str]) -> dict[str, list[str]]:
    """Who judges: the annotators whose feedback trained the model (their consensus), the
    others (held out: 6-10 on the embedded default), and each annotator group."""
    ids = sorted(set(heldout.column("annotator_id").to_pylist()))
    panels = {"training_annotators": [i for i in ids if i in training_annotators],
              "heldout_annotators": [i for i in ids if i not in training_annotators]}
    panels |= {f"{GROUP_PANEL}{group}": members for group, members in annotator_groups(heldout).items()}
    return {name: members for name, members in panels.items() if members}


def evaluate_reward_model(model_dir: Path, heldout: pa.Table, training_annotators: set[str],
                          bins: int) -> tuple[dict, dict, dict]:
    """Accuracy and calibration per panel (raw rewards: the Bradley-Terry probability
    ``sigmoid(r_a - r_b)`` is defined on the scale the model was trained on). For an
    ensemble, third, each member's accuracy against the held-out annotators and the mean
    disagreement (normalised units) on the held-out texts; empty for a single model."""
    reward_model = load_reward_model(model_dir)
    panels = evaluation_panels(heldout, training_annotators)
    scored = {}

    def raw_scores(prompts, responses):
        # evaluate_against_panels scores the same distinct texts each time: score them once.
        if "members" not in scored:
            scored["members"] = reward_model.member_scores(reward_texts(reward_model.tokenizer, prompts,
                                                                        responses)).numpy()
        return scored["members"]

    figures, tables = evaluate_against_panels(lambda p, r: raw_scores(p, r).mean(axis=0), heldout, panels, bins)
    ensemble = {}
    if len(reward_model.members) > 1:
        heldout_panel = {"heldout_annotators": panels["heldout_annotators"]} if "heldout_annotators" in panels else {}
        ensemble["member_heldout_accuracies"] = [
            evaluate_against_panels(lambda p, r, i=i: raw_scores(p, r)[i], heldout, heldout_panel, bins)[0]
            .get("heldout_annotators", {}).get("accuracy") for i in range(len(reward_model.members))]
        ensemble["mean_disagreement"] = float(scored["members"].std(axis=0).mean() / reward_model.std)
    return figures, tables, ensemble


def with_pair_accuracy(record: dict) -> dict:
    """The loop logs sums per unit; the weighted pair accuracy is their ratio."""
    for prefix in ("", "heldout_"):
        if record.get(f"{prefix}pair_weight"):
            record = record | {f"{prefix}pair_accuracy": record[f"{prefix}pair_right"] / record[f"{prefix}pair_weight"]}
    return record


def final_losses(folders: list[Path]) -> dict:
    """Each member's training curves plotted in its folder; the last train and held-out
    losses, averaged over the members."""
    finals = []
    for folder in folders:
        records = [with_pair_accuracy(r) for r in read_metrics(folder / METRICS_FILE)]
        plot_curves(records, ["loss", "heldout_loss", "pair_accuracy", "heldout_pair_accuracy"],
                    folder / LOSS_FIGURE, title="reward model training")
        finals.append((next(r["loss"] for r in reversed(records) if "loss" in r),
                       next(r["heldout_loss"] for r in reversed(records) if "heldout_loss" in r)))
    return {"final_train_loss": float(np.mean([train for train, _ in finals])),
            "final_heldout_loss": float(np.mean([heldout for _, heldout in finals]))}
