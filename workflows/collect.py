"""Collect human feedback in web pages: serve the pages, and the admin's actions on the store.

    alignray collect collect.action=annotators collect.annotators=[ann1,ann2] collect.group=lenient
    alignray collect collect.action=generate collect.tasks_file=tasks.jsonl \\
        collect.candidates.models=[SFT_DIR,PPO_DIR] collect.candidates.prompts_file=prompts.parquet
    alignray collect collect.action=tasks collect.tasks_file=tasks.jsonl collect.gold_fraction=0.1
    alignray collect                                   # serve at http://127.0.0.1:8010 (Ctrl-C stops)
    alignray collect collect.action=admin-link         # a one-time link to the live quality page
    alignray collect collect.action=compact            # the feedback parquet (collect.out)
    alignray feedback feedback.source=files feedback.path=runs/default/collect/feedback.parquet

The HTTP API and pages are `alignray.collect.api`; the Serve deployment is
`actors/collector.py`. Every action but serve opens the store (collect.store_path)
directly, so it works whether or not the server runs.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import hydra
import pyarrow as pa
import pyarrow.compute as pc
from omegaconf import DictConfig
from ray import serve

from alignray.actors import runtime
from alignray.actors.collector import collect_deployment
from alignray.actors.runtime import serve_until_stopped
from alignray.collect.api import form_settings
from alignray.collect.candidates import write_candidate_tasks
from alignray.collect.quality import live_quality
from alignray.feedback.report import human_cost
from alignray.collect.store import ADMIN, LabelStore
from alignray.collect.tasks import mixed_queue, read_tasks
from alignray.config import AlignrayConfig
from alignray.config.collect import ACTIONS, CollectConfig
from alignray.feedback.quality import POLICIES
from alignray.feedback.schema import DEFAULT_FLAWS, KINDS, write_feedback
from alignray.serving.endpoint import endpoint_digest, http_options
from alignray.workflows.common import CONFIG_PATH, run_app, start_app

log = logging.getLogger(__name__)


def collect_config(cfg: CollectConfig) -> CollectConfig:
    """The settings checked (a bad value names its key), as a copy with the store's path absolute."""
    problems = []
    if cfg.action not in ACTIONS:
        problems.append(f"collect.action={cfg.action!r} is not one of {ACTIONS}")
    if not cfg.forms or set(cfg.forms) - set(KINDS):
        problems.append(f"collect.forms={cfg.forms} must be a non-empty subset of {list(KINDS)}")
    if not cfg.scale_min < cfg.scale_max:
        problems.append(f"collect.scale_min ({cfg.scale_min}) must be below collect.scale_max ({cfg.scale_max})")
    if set(cfg.flaws) - set(DEFAULT_FLAWS):
        problems.append(f"collect.flaws={cfg.flaws} must come from {list(DEFAULT_FLAWS)}")
    if cfg.quality.policy not in POLICIES:
        problems.append(f"collect.quality.policy={cfg.quality.policy!r} is not one of {POLICIES}")
    if cfg.rate_per_minute <= 0 or cfg.burst < 1:
        problems.append("collect.rate_per_minute must be > 0 and collect.burst >= 1")
    if not 0.0 <= cfg.gold_fraction < 1.0:
        problems.append(f"collect.gold_fraction={cfg.gold_fraction} must be in [0, 1)")
    if problems:
        raise ValueError("; ".join(problems))
    # Replicas may start in another working directory.
    return dataclasses.replace(cfg, store_path=str(Path(cfg.store_path).expanduser().resolve()))


def build_collect_app(cfg: CollectConfig) -> serve.Application:
    cfg = collect_config(cfg)
    return collect_deployment(cfg, endpoint_digest(cfg, "collect"))


def base_url(cfg: CollectConfig) -> str:
    if cfg.base_url:
        return cfg.base_url.rstrip("/")
    scheme = "https" if cfg.ssl_certfile else "http"
    return f"{scheme}://{cfg.host}:{cfg.port}{cfg.route_prefix.rstrip('/')}"


def create_annotators(store: LabelStore, cfg: CollectConfig) -> dict[str, str]:
    """One annotator per id in collect.annotators; prints each a one-time link."""
    if not cfg.annotators:
        raise ValueError("collect.action=annotators needs collect.annotators=[id, ...]")
    links = {}
    for annotator_id in cfg.annotators:
        new = store.add_annotator(str(annotator_id), cfg.group)
        links[new.annotator_id] = f"{base_url(cfg)}/login?key={new.login_key}"
        print(f"{new.annotator_id}\t{links[new.annotator_id]}\t(API token: {new.token})")
    print("each link works once; send it to its annotator only (it signs them in)")
    return links


def load_tasks(store: LabelStore, cfg: CollectConfig) -> int:
    """The tasks file into each annotator's queue, gold items mixed in per annotator."""
    if not cfg.tasks_file:
        raise ValueError("collect.action=tasks needs collect.tasks_file (JSON lines or parquet)")
    tasks = read_tasks(cfg.tasks_file, cfg.forms)
    targets = cfg.assign_to if cfg.assign_to is not None else list(store.annotator_groups())
    if not targets:
        raise ValueError("no annotators yet: create them first (collect.action=annotators)")
    for annotator_id in targets:
        queue = mixed_queue(tasks, cfg.gold_fraction, annotator_id, cfg.seed)
        store.add_tasks(queue, [annotator_id])
        gold = sum(task.gold_winner is not None for task in queue)
        print(f"{annotator_id}: {len(queue)} tasks queued, {gold} of them gold")
    return len(targets)


def generate_tasks(cfg: CollectConfig) -> Path:
    """Sample candidates from the checkpoints into collect.tasks_file (then action=tasks)."""
    if not cfg.tasks_file:
        raise ValueError("collect.action=generate needs collect.tasks_file (where to write the tasks)")
    out = write_candidate_tasks(cfg.candidates, cfg.tasks_file)
    print(f"{cfg.candidates.num_prompts} tasks from {len(cfg.candidates.models)} models -> {out}; "
          f"load them with collect.action=tasks collect.tasks_file={out}")
    return out


def compact(store: LabelStore, cfg: CollectConfig) -> Path:
    """Every standing label into the feedback parquet; with collect.quality.policy=exclude,
    the annotators flagged by the live verdicts (gold items included) are left out."""
    out = Path(cfg.out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    report = live_quality(store, cfg)
    excluded = sorted(row["annotator_id"] for row in report["annotators"] if row["weight"] == 0.0)
    feedback = store.feedback_table()
    if excluded:
        keep = pc.invert(pc.is_in(feedback.column("annotator_id"), pa.array(excluded)))
        feedback = feedback.filter(keep)
        print(f"left out (collect.quality.policy=exclude): {', '.join(excluded)}")
    table = write_feedback(feedback, out, cfg.flaws)
    # What the labels cost people, beside the file: the feedback report sets an AI judge's beside it.
    totals = report["totals"]
    human_cost(out).write_text(json.dumps({
        "labels": totals["labels"], "hours": totals["hours"], "cost": totals["cost"], "currency": totals["currency"],
        "seconds_per_label": 3600.0 * totals["hours"] / totals["labels"] if totals["labels"] else None,
        "cost_per_label": totals["cost"] / totals["labels"] if totals["labels"] else None}))
    print(f"{table.num_rows} labels -> {out} (alignray feedback feedback.source=files feedback.path={out})")
    return out


def admin_link(store: LabelStore, cfg: CollectConfig) -> str:
    link = f"{base_url(cfg)}/admin/login?key={store.new_login_key(ADMIN, ADMIN)}"
    print(f"admin page (works once): {link}")
    return link


def serve_collection(cfg: AlignrayConfig, collect: CollectConfig) -> None:
    app = collect_deployment(collect, endpoint_digest(collect, "collect"))
    with runtime.ray_session(cfg.cluster):
        serve.start(http_options=http_options(collect, "collect"))
        serve.run(app, name=collect.app_name, route_prefix=collect.route_prefix)
        store = LabelStore(collect.store_path, form_settings(collect))
        admin_link(store, collect)
        store.close()
        log.info("collecting at %s/task (store %s); Ctrl-C stops", base_url(collect), collect.store_path)
        serve_until_stopped(collect.app_name)


ACTION_FUNCTIONS = {"annotators": create_annotators, "tasks": load_tasks, "compact": compact,
                    "admin-link": admin_link}


@hydra.main(version_base=None, config_path=CONFIG_PATH, config_name="config")
def main(cfg: DictConfig) -> None:
    config = start_app(cfg, "collect")
    collect = collect_config(config.collect)
    if collect.action == "serve":
        serve_collection(config, collect)
        return
    if collect.action == "generate":
        generate_tasks(collect)
        return
    store = LabelStore(collect.store_path, form_settings(collect))
    try:
        ACTION_FUNCTIONS[collect.action](store, collect)
    finally:
        store.close()


if __name__ == "__main__":
    run_app(main)
