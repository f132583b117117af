"""The collect app's config and admin actions (create annotators, load a tasks file with gold
items, compact), in-process on a store file; the compacted file is what the feedback phase
reads (feedback.source=files)."""
from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir

from alignray.collect.store import LabelStore
from alignray.config.collect import CollectConfig, CollectQualityConfig
from alignray.feedback.aggregate import build_training_tables
from alignray.feedback.schema import read_feedback_files
from alignray.workflows.collect import collect_config, compact, create_annotators, load_tasks
from alignray.workflows.common import CONFIG_PATH, compose_app_config


def test_the_hydra_config_resolves_and_checks_its_keys(tmp_path):
    collect = collect_config(compose_app_config([f"workdir={tmp_path}", "collect.action=compact"]).collect)
    assert collect.action == "compact" and collect.store_path == str(tmp_path / "collect" / "labels.sqlite")
    assert collect.out == str(tmp_path / "collect" / "feedback.parquet") and collect.host == "127.0.0.1"
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base=None):
        with pytest.raises(Exception, match="gold_fractoin"):
            compose(config_name="config", overrides=["collect.gold_fractoin=0.2"])
    with pytest.raises(ValueError, match=r"collect.forms=\['essay'\].*collect.quality.policy='drop'"):
        collect_config(CollectConfig(quality=CollectQualityConfig(policy="drop"), forms=["essay"]))


def test_admin_actions_create_load_and_compact(tmp_path, capsys):
    items = [{"prompt": f"prompt {i}", "responses": [f"kind {i}", f"rude {i}"]} for i in range(16)]
    items += [{"prompt": f"gold {i}", "responses": ["helpful", "insult"], "gold": {"winner": "a"}} for i in range(8)]
    (tmp_path / "tasks.jsonl").write_text("\n".join(json.dumps(item) for item in items))
    cfg = collect_config(CollectConfig(
        store_path=str(tmp_path / "labels.sqlite"), out=str(tmp_path / "feedback.parquet"),
        annotators=["ann", "bob"], group="day", tasks_file=str(tmp_path / "tasks.jsonl"), gold_fraction=0.2,
        base_url="http://127.0.0.1:8010", quality=CollectQualityConfig(min_gold=4, policy="exclude")))
    store = LabelStore(cfg.store_path)
    links = create_annotators(store, cfg)
    assert links["ann"].startswith("http://127.0.0.1:8010/login?key=") and links["ann"] in capsys.readouterr().out
    assert store.redeem_login_key(links["bob"].split("key=")[1])[0].subject == "bob"
    assert load_tasks(store, cfg) == 2
    for who, gold_answer in (("ann", "a"), ("bob", "b")):  # bob gets every gold item wrong
        number = 0
        while (task := store.next_task(who)) is not None:
            winner = gold_answer if task.gold_winner else "a"
            store.record(who, {"label_id": f"{who}{number}", "task_id": task.task_id, "kind": "pairwise",
                               "winner": winner, "seconds": 2.0})
            number += 1
        assert number == 20  # 16 tasks and 4 gold items: a fifth of the queue
    compact(store, cfg)
    assert "left out (collect.quality.policy=exclude): bob" in capsys.readouterr().out
    feedback, reports = read_feedback_files(cfg.out)
    assert reports[0].rejected == 0 and set(feedback.column("annotator_id").to_pylist()) == {"ann"}
    assert set(feedback.column("source").to_pylist()) == {"human"}
    assert build_training_tables(feedback).pairs.num_rows == 20
    cost = json.loads((tmp_path / "feedback.parquet.cost.json").read_text())  # an AI judge's cost goes beside it
    assert cost["labels"] == 40 and cost["seconds_per_label"] == pytest.approx(2.0)
    store.close()


def test_candidates_sampled_from_a_checkpoint_become_tasks(tiny_base_model, prompts_path, tmp_path):
    from alignray.collect.tasks import read_tasks
    from alignray.config.collect import CandidatesConfig
    from alignray.workflows.collect import generate_tasks
    cfg = collect_config(CollectConfig(tasks_file=str(tmp_path / "tasks.jsonl"), candidates=CandidatesConfig(
        models=[str(tiny_base_model)], prompts_file=str(prompts_path), num_prompts=3, max_new_tokens=6)))
    generate_tasks(cfg)
    lines = [json.loads(line) for line in (tmp_path / "tasks.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all(line["candidates"] == [str(tiny_base_model)] * 2 for line in lines)
    tasks = read_tasks(tmp_path / "tasks.jsonl", cfg.forms)
    assert all(len(task.responses) == 2 and "pairwise" in task.forms for task in tasks)
    assert len({task.prompt for task in tasks}) == 3
