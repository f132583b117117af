"""The GPU suite must stay runnable between the rare sessions that have a GPU: its
``--cpu-smoke`` path runs every step of benchmarks/gpu_suite.sh on CPU (the import check,
the GPU tests, which skip without CUDA, benchmarks/ppo_gpu.py at a tiny shape: generation
paths, the policy actor's update, a short PPO run through Ray; and the LoRA step at a tiny
shape) and writes its JSONs. Numbers
are not checked here: performance is measured in benchmarks/, not asserted by tests."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_gpu_suite_cpu_smoke_runs_every_step_and_the_benchmark_every_part():
    result_file, suite_file = REPO / "runs" / "ppo_gpu_cpu_smoke.json", REPO / "runs" / "gpu_suite_cpu_smoke.json"
    result_file.unlink(missing_ok=True)
    suite_file.unlink(missing_ok=True)
    (REPO / "runs" / "lora_cpu_smoke.json").unlink(missing_ok=True)
    run = subprocess.run(["bash", "benchmarks/gpu_suite.sh", "--cpu-smoke"], cwd=REPO, capture_output=True, text=True,
                         timeout=900, env=os.environ | {"PYTHON": sys.executable})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    suite = json.loads(suite_file.read_text())
    assert [s["step"] for s in suite["steps"]] == ["imports", "gpu_tests", "ppo_gpu", "lora_step"]
    assert suite["failed_steps"] == []
    assert suite["gpu_tests"] and {t["outcome"] for t in suite["gpu_tests"]} == {"skipped"}  # no CUDA here
    assert suite["machine"]["cpu_model"] and suite["machine"]["cpu_cores"] == os.cpu_count()
    result = json.loads(result_file.read_text())
    assert {row["path"] for row in result["generation"]} == {"plain generate", "alignray static, eager"}
    assert all(row["tokens_per_s"] > 0 for row in result["generation"])
    assert [t["zero_stage"] for t in result["training"]] == [0, 2]
    assert result["ppo"]["steps_measured"] == 2 and result["ppo"]["sync_bytes_per_worker"] > 0
    assert {"generation", "training", "sync"} <= set(result["ppo"]["stage_seconds"])
    assert result["machine"] == suite["machine"]  # the benchmark names its machine too
    assert "PPO step" in run.stdout
    lora = json.loads((REPO / "runs" / "lora_cpu_smoke.json").read_text())
    assert [c["lora"] for c in lora["cases"]] == [False, True]
    assert lora["cases"][1]["trainable_params"] < lora["cases"][0]["trainable_params"]


def test_cpu_info_reads_the_model_family_and_speed_flags():
    from alignray.core.machine import cpu_info, describe_machine
    cpuinfo = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\n"
               "model name\t: AMD EPYC 7B13\nflags\t\t: fpu avx2 fma\n\nprocessor\t: 1\nmodel name\t: other\n")
    info = cpu_info(cpuinfo)
    assert info == {"cpu_model": "AMD EPYC 7B13", "cpu_vendor_family_model": "AuthenticAMD cpu family 25 model 1",
                    "cpu_speed_flags": ["avx2"]}
    assert describe_machine(info | {"cpu_cores": 2, "gpu": "NVIDIA H200"}) == (
        "AMD EPYC 7B13 (AuthenticAMD cpu family 25 model 1), 2 cores, GPU NVIDIA H200")


def test_methods_table_keeps_earlier_rows_only_when_measured_from_the_same_inputs(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    monkeypatch.chdir(tmp_path)
    import algorithms

    inputs = {"sft_model": "run/sft/model", "feedback_dir": "run/feedback", "reward_model": "run/reward/model"}
    resolved = {key: str((tmp_path / path).resolve()) for key, path in inputs.items()}
    out = tmp_path / "algorithms.json"
    assert algorithms.earlier_rows(out, resolved, 80, 0) == []  # no earlier file
    out.write_text(json.dumps({"inputs": inputs, "steps": 80, "seed": 0, "methods": [{"method": "ppo"}]}))
    assert algorithms.earlier_rows(out, resolved, 80, 0) == [{"method": "ppo"}]  # relative paths, same folders
    assert algorithms.earlier_rows(out, resolved, 30, 0) == []
    assert algorithms.earlier_rows(out, resolved | {"reward_model": str(tmp_path / "other")}, 80, 0) == []


def test_hh_length_controlled_margin_separates_what_length_buys(tmp_path, monkeypatch):
    """The gold margin at equal length is the intercept of margin ~ extra words: here 0.5 at
    equal length and 0.1 a word, recovered exactly from noise-free samples."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import hh_smollm2

    samples = tmp_path / "samples.jsonl"
    rows = [{"sft": "a " * 10, "ppo": "a " * (10 + extra), "judge_sft": 1.0, "judge_ppo": 1.5 + 0.1 * extra}
            for extra in (0, 2, 5, 9)]
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = hh_smollm2.length_controlled(samples)
    assert result["margin_at_equal_length"] == {"value": 0.5, "ci95": [0.5, 0.5]}
    assert result["margin_per_extra_word"]["value"] == 0.1 and result["mean_extra_words"] == 4.0
    noisy = hh_smollm2.trend([0.0, 0.3, 0.1, 0.5, 0.4])
    assert noisy["ci95"][0] < noisy["slope_per_step"] < noisy["ci95"][1]
