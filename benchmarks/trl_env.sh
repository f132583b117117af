#!/usr/bin/env bash
# Creates benchmarks/.venv-trl: a separate venv with Hugging Face TRL 1.12.0 for
# benchmarks/trl_ppo.py. TRL is not an alignray dependency and never goes into the
# main venv.
#
# The trl venv does not get its own torch (a CUDA wheel is gigabytes): a .pth file
# appends the main venv's site-packages to its sys.path, so torch, transformers,
# accelerate, pandas, pyarrow, ... come from the main venv. Lines of a .pth file are
# appended after the venv's own site-packages, so anything installed here wins.
# pip sees the main venv's packages through that path too and treats them as
# installed, which is why only trl, datasets and datasets' small extras land here, plus
# accelerate when the main venv lacks it (a plain install of alignray does not bring it).
#
# Usage: bash benchmarks/trl_env.sh   (idempotent; delete benchmarks/.venv-trl to redo)
set -euo pipefail

TRL_VERSION=1.12.0    # the last release with PPOTrainer (trl.experimental.ppo)
DATASETS_VERSION=5.2.0  # trl 1.12.0 needs datasets>=4.7.0

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MAIN_VENV="${ALIGNRAY_VENV:-$ROOT/.venv}"   # as in scripts/setup.sh
MAIN_PY="$MAIN_VENV/bin/python"
VENV="$ROOT/benchmarks/.venv-trl"
STAMP="$VENV/.trl-env-done"
SPEC="trl==$TRL_VERSION datasets==$DATASETS_VERSION"

if [[ ! -x "$MAIN_PY" ]]; then
    echo "trl_env: main venv not found at $MAIN_VENV (create it first: bash scripts/setup.sh)" >&2
    exit 1
fi

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$SPEC" ]]; then
    echo "trl_env: $VENV is ready ($SPEC); nothing to do"
    exit 0
fi

start=$SECONDS
echo "trl_env: creating $VENV"
# Same interpreter as the main venv (the venv module resolves it to the base Python),
# so the main venv's compiled packages (torch) import here.
"$MAIN_PY" -m venv "$VENV"
echo '*' > "$VENV/.gitignore"

MAIN_SITE="$("$MAIN_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
TRL_SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "trl_env: $TRL_SITE/alignray_main_venv.pth -> $MAIN_SITE"
echo "$MAIN_SITE" > "$TRL_SITE/alignray_main_venv.pth"

# Pin what the main venv already has so pip can never fetch another torch or
# shadow transformers/accelerate/huggingface_hub with a different version. What it
# lacks (accelerate, in a fresh install) is installed here at the version trl asks for.
CONSTRAINTS="$VENV/constraints-main-venv.txt"
"$MAIN_PY" - > "$CONSTRAINTS" <<'EOF'
from importlib.metadata import PackageNotFoundError, version
for name in ("torch", "transformers", "accelerate", "huggingface_hub", "numpy", "tokenizers", "safetensors"):
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        pass
EOF
echo "trl_env: constraints from the main venv: $(tr '\n' ' ' < "$CONSTRAINTS")"

echo "trl_env: pip install $SPEC"
# trl itself with --no-deps: its deps are checked one by one below, none of them torch.
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "trl==$TRL_VERSION"
# datasets brings dill/xxhash/multiprocess; pandas, pyarrow, fsspec, ... are found in the main venv.
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -c "$CONSTRAINTS" \
    "datasets==$DATASETS_VERSION" "accelerate>=1.4.0" "transformers>=4.56.2" jinja2 "packaging>20.0"

echo "trl_env: checking imports"
TRL_EXPERIMENTAL_SILENCE=1 "$VENV/bin/python" - "$MAIN_SITE" <<'EOF'
import sys
import torch, transformers, accelerate, datasets, trl
from trl.experimental.ppo import PPOConfig, PPOTrainer  # noqa: F401

main_site = sys.argv[1]
for mod in (torch, transformers):  # accelerate: from the main venv when it has one, else from here
    if not mod.__file__.startswith(main_site):
        sys.exit(f"trl_env: {mod.__name__} loads from {mod.__file__}, not from the main venv")
print(f"trl_env: trl {trl.__version__}, datasets {datasets.__version__}, transformers {transformers.__version__}, "
      f"accelerate {accelerate.__version__}, torch {torch.__version__} (torch from the main venv)")
EOF

echo "$SPEC" > "$STAMP"
echo "trl_env: done in $((SECONDS - start)) s; run benchmarks with $VENV/bin/python"
