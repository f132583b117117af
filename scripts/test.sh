#!/usr/bin/env bash
# The test suite: installs alignray with its test extra on first use, then runs pytest.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k ppo -x`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh" test
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pytest "$@"
