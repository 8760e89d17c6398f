#!/usr/bin/env bash
# Create .venv (if missing) and install harness with its dev extra. Idempotent.
# torch/torchvision are pinned to the pair whose wheels are on this machine's disk when present;
# on other machines pip takes any version in pyproject.toml's range.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import harness, torch, torchvision, statsmodels" 2>/dev/null; then
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q "torch==2.14.1" "torchvision==0.29.1" \
        || .venv/bin/pip install -q "torch>=2.4" "torchvision>=0.19"
    .venv/bin/pip install -q -e '.[dev]'
fi
