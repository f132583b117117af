#!/usr/bin/env bash
# The main job: installs on first use, then runs the pipeline on the embedded default.
# Extra arguments are Hydra overrides, e.g. `bash scripts/run.sh ppo.steps=10`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# run, not sourced: a sourced script would see our Hydra overrides as its own arguments
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m alignray.workflows.pipeline "$@"
