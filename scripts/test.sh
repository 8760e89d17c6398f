#!/usr/bin/env bash
# The whole test suite: `scripts/test.sh [PYTEST ARGS...]`
#
# Creates .venv when it is missing (scripts/setup.sh: torch/torchvision, then
# `pip install -e '.[dev]'`), installs SLURM + munge when missing (as root, with apt) and starts the
# local single-node cluster (scripts/slurm-local.sh) when no node is up, then runs `ruff check` and pytest. Exits non-zero when either
# fails, and when pytest collects no tests.
#
#   scripts/test.sh                       # everything
#   scripts/test.sh tests/test_data.py -x # a subset (arguments go to pytest)
#
# Environment: PYTEST_TIMEOUT (per-test seconds, default 900).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"

say() { printf '[test.sh] %s\n' "$*"; }

slurm_node_up() {
  timeout 20 sinfo -h -o '%T' 2>/dev/null | grep -qxE 'idle|mixed|allocated|completing'
}

if [[ ! -x $VENV/bin/pytest ]]; then
  say "no .venv: creating it (scripts/setup.sh)"
  bash "$ROOT/scripts/setup.sh"
fi

if ! command -v sbatch >/dev/null 2>&1 && [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
  say "no SLURM: installing Debian's slurm-wlm + munge and starting a local single-node cluster"
  bash "$ROOT/scripts/slurm-local.sh" start --install
elif command -v sbatch >/dev/null 2>&1 && ! slurm_node_up; then
  say "SLURM is installed but no node is up: starting the local cluster"
  bash "$ROOT/scripts/slurm-local.sh" start
fi

status=0
say "ruff check"
"$VENV/bin/ruff" check . || status=1

say "pytest"
set +e
OMP_NUM_THREADS=2 "$VENV/bin/pytest" -q --timeout "${PYTEST_TIMEOUT:-900}" "$@"
rc=$?
set -e
if ((rc == 5)); then
  say "error: pytest collected no tests"
  status=1
elif ((rc != 0)); then
  status=1
fi
((status == 0)) && say "all green" || say "FAILED (ruff or pytest, see above)"
exit "$status"
