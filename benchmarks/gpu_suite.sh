#!/usr/bin/env bash
# Everything that needs a GPU, in one run of at most 9 minutes on one H100/H200:
#   1. a cheap import check of every package and module the rest needs (and the GPU);
#   2. `pytest -m gpu tests/test_gpu.py`: CUDA-graph decode vs a full forward per bucket, the
#      bf16 rollout/trainer log-prob gap, colocated PPO (cluster=one_gpu) for 4 steps at the
#      SmolLM2-135M shape with the probe check;
#   3. benchmarks/ppo_gpu.py (generation, policy update, PPO step; writes ppo_gpu.json);
#   4. benchmarks/lora_cpu.py --device cuda: a training step at the SmolLM2-135M shape with and
#      without LoRA (peft, from the kit): trainable parameters, peak GPU memory, step time,
#      sync bytes (writes lora_gpu.json).
# Writes benchmarks/results/gpu_suite.json (machine and GPU, each step's status and time, every
# GPU test's outcome). Exit status: the number of steps that failed.
#
#   bash benchmarks/gpu_suite.sh              # on the GPU machine, from a checkout with .devkit/
#   bash benchmarks/gpu_suite.sh --cpu-smoke  # the same steps on CPU, tiny shapes, results to runs/
#
# The GPU machines have torch and transformers but no Ray, Hydra or DeepSpeed: with a .devkit/
# folder (shared/devkit/README.md) they are installed into /tmp/site first, in seconds.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
SMOKE=0
[[ "${1:-}" == "--cpu-smoke" ]] && SMOKE=1

if [[ $SMOKE == 0 && -d .devkit ]] && ! "$PY" -c "import ray" 2>/dev/null; then
    echo "gpu_suite: installing the device kit into /tmp/site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .devkit/*.whl || exit 1
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PATH="/tmp/site/bin:$PATH"
fi
# this checkout's code, whatever else is installed; offline; every Ray listener on loopback
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
    RAY_USAGE_STATS_ENABLED=0 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
OUT="$ROOT/benchmarks/results"
NAME=gpu_suite
BENCH_ARGS=()
LORA_ARGS=(--device cuda --shapes smollm2 --batch 64 --tokens 192 --out "$OUT/lora_gpu.json")  # ppo_gpu.py's batch
if [[ $SMOKE == 1 ]]; then  # a smoke run's numbers say nothing about a GPU: to the ignored runs/
    OUT="$ROOT/runs"
    NAME=gpu_suite_cpu_smoke
    BENCH_ARGS=(--cpu-smoke --ppo-steps 3)
    LORA_ARGS=(--shapes tiny --steps 1 --out "$OUT/lora_cpu_smoke.json")
fi
mkdir -p "$OUT"
WORK="$(mktemp -d /tmp/gpu-suite-XXXXXX)"
STEPS="$WORK/steps.tsv"
: > "$STEPS"
# The local Ray instances get a token of their own: Ray would otherwise write ~/.ray/auth_token.
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$WORK/auth_token"
export RAY_AUTH_TOKEN_PATH="$WORK/auth_token"

step() {  # step NAME TIMEOUT_S COMMAND...: run it, record its status and seconds
    local name=$1 limit=$2 started=$SECONDS
    shift 2
    echo "gpu_suite: == $name (at most ${limit} s)"
    timeout "$limit" "$@"
    local rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - started))" >> "$STEPS"
    echo "gpu_suite: == $name: exit $rc in $((SECONDS - started)) s"
}

# The time limits add up to 9 minutes.
step imports 60 "$PY" - "$SMOKE" <<'EOF'
import importlib, sys
need = ["torch", "transformers", "tokenizers", "safetensors", "pyarrow", "numpy", "yaml", "ray", "ray.train",
        "hydra", "omegaconf", "deepspeed", "pytest", "peft",
        "alignray.models.static_decoder", "alignray.core.machine", "alignray.actors.placement", "alignray.workflows.ppo"]
missing = []
for name in need:
    try:
        module = importlib.import_module(name)
        print(f"  {name} {getattr(module, '__version__', '')}")
    except Exception as error:  # noqa: BLE001: name every failure, then fail once
        missing.append(f"{name}: {type(error).__name__}: {error}")
torch = sys.modules.get("torch")
if torch is not None and torch.cuda.is_available():
    print(f"  GPU {torch.cuda.get_device_name(0)}, bf16 {torch.cuda.is_bf16_supported()}")
elif sys.argv[1] == "0":
    missing.append("torch.cuda: no CUDA device")
try:
    import matplotlib  # optional: without it runs draw no curves
except ModuleNotFoundError:
    print("  matplotlib: not installed (no curves drawn)")
sys.exit("import check failed:\n  " + "\n  ".join(missing) if missing else 0)
EOF
if grep -q "^imports	0	" "$STEPS"; then
    step gpu_tests 150 "$PY" -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider --junitxml="$WORK/gpu_tests.xml"
    step ppo_gpu 270 "$PY" benchmarks/ppo_gpu.py "${BENCH_ARGS[@]}"
    step lora_step 60 "$PY" benchmarks/lora_cpu.py "${LORA_ARGS[@]}"
else
    echo "gpu_suite: the import check failed: nothing else runs (fix the environment or the kit first)"
fi

"$PY" - "$STEPS" "$WORK/gpu_tests.xml" "$OUT/$NAME.json" <<'EOF'
import json, sys
import xml.etree.ElementTree as ET
from pathlib import Path

from alignray.core.machine import machine_info

steps_file, junit, out = map(Path, sys.argv[1:4])
steps = [dict(zip(("step", "exit", "seconds"), line.split("\t"))) for line in steps_file.read_text().splitlines()]
steps = [{"step": s["step"], "exit": int(s["exit"]), "seconds": int(s["seconds"])} for s in steps]
tests = []
if junit.exists():
    for case in ET.parse(junit).iter("testcase"):
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        tests.append({"test": case.get("name"), "outcome": outcome, "seconds": float(case.get("time", 0))})
result = {"machine": machine_info(), "steps": steps, "gpu_tests": tests,
          "failed_steps": [s["step"] for s in steps if s["exit"]], "total_seconds": sum(s["seconds"] for s in steps)}
out.write_text(json.dumps(result, indent=2) + "\n")
print(f"gpu_suite: wrote {out}: {len(steps) - len(result['failed_steps'])}/{len(steps)} steps passed "
      f"in {result['total_seconds']} s on {result['machine']['gpu'] or result['machine']['cpu_model']}")
sys.exit(len(result["failed_steps"]))
EOF
status=$?
rm -rf "$WORK"
exit $status
