#!/usr/bin/env bash
# The README's main job: set up, run the CPU-scale study on the embedded defaults, then report.
#   scripts/study.sh                 # uses SLURM when a cluster answers, else local processes
#   scripts/study.sh --executor local
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
scripts/setup.sh
echo "setup: $(( $(date +%s) - start ))s"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
t0=$(date +%s)
.venv/bin/harness sweep encoders.yaml --sweep sweeps/cpu-study.yaml --wait "$@"
.venv/bin/harness report
echo "study + report: $(( $(date +%s) - t0 ))s (total $(( $(date +%s) - start ))s)"
echo "open results/report/index.html, or query: .venv/bin/harness query 'SELECT * FROM v_study'"
