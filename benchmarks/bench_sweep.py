"""Benchmark: plan and submit the full paper study (~550 stage instances) as held SLURM jobs.

    .venv/bin/python benchmarks/bench_sweep.py [--catalogue encoders.yaml] [--sweep sweeps/default.yaml]

Target: planning + submitting the study takes < 30 s. The jobs are submitted held
(``sbatch --hold``) to the local cluster (``scripts/slurm-local.sh start``) and cancelled at the
end. GPU requests are dropped (the test cluster has no GPUs) and the ImageNet / ADM inputs are
stood in for by empty placeholders, so only the engine's own work is timed: planning, input and
resource checks, the code snapshot, spec files, ``sbatch`` calls and ``jobs.jsonl``. A second
submission of the same plan (which must submit nothing) and the cancellation are timed too.
Prints a table and writes it to ``<results>/bench_sweep.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

TARGET_S = 30.0
CPU_ONLY = [
    f"resources.{stage}.{key}={value}"
    for stage in ("default", "latents", "train", "eval")
    for key, value in (("gpus_per_node", 0), ("mem_gb", 0.1), ("cpus_per_task", 1))
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalogue", default="encoders.yaml")
    parser.add_argument("--sweep", default="sweeps/default.yaml")
    parser.add_argument("--results", default=None, help="results root (default: a temp dir)")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from harness.config.encoders import load_catalogue
    from harness.config.sweep import load_sweep
    from harness.io import write_json
    from harness.launch.executor import resolve_executor
    from harness.launch.jobs import JobPoller, cancel_jobs
    from harness.launch.submit import submit_plan
    from harness.plan import build_plan

    if resolve_executor("auto") != "slurm":
        raise SystemExit("SLURM does not answer: start it with scripts/slurm-local.sh start")
    work = Path(args.results or tempfile.mkdtemp(prefix="bench-sweep-")).absolute()
    for sub in ("imagenet/train", "imagenet/val"):
        (work / "inputs" / sub).mkdir(parents=True, exist_ok=True)
    reference = work / "inputs" / "adm_ref.npz"
    reference.write_bytes(b"")
    overrides = [
        *CPU_ONLY,
        f"data.root={work / 'inputs' / 'imagenet'}",
        f"eval.reference.path={reference}",
    ]
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    catalogue = load_catalogue(args.catalogue)
    sweep = load_sweep(args.sweep, overrides)
    timings["load configs"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    plan = build_plan(catalogue, sweep)
    timings["build plan"] = time.perf_counter() - t0

    root = work / "results"
    t0 = time.perf_counter()
    report = submit_plan(plan, root, executor="slurm", hold=True, poller=JobPoller(0.0))
    timings["submit (held)"] = time.perf_counter() - t0
    total = timings["load configs"] + timings["build plan"] + timings["submit (held)"]

    t0 = time.perf_counter()
    again = submit_plan(plan, root, executor="slurm", hold=True, poller=JobPoller(0.0))
    timings["re-submit (no-op)"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    cancelled = cancel_jobs((job, "slurm") for job in report.submitted.values())
    timings["scancel"] = time.perf_counter() - t0

    table = Table(title=f"plan + submit the paper study ({args.sweep})", title_justify="left")
    table.add_column("phase")
    table.add_column("seconds", justify="right")
    for phase, seconds in timings.items():
        table.add_row(phase, f"{seconds:.2f}")
    table.add_row("plan + submit total", f"{total:.2f}", style="bold")
    console = Console()
    console.print(table)
    console.print(
        f"stage instances {len(plan.stages)} ({dict(plan.counts())}); submitted "
        f"{len(report.submitted)} jobs in {report.sbatch_calls} sbatch calls; "
        f"re-submission submitted {len(again.submitted)}; cancelled {cancelled}; "
        f"est. {plan.total_gpu_hours:,.0f} H100 GPU-hours; target < {TARGET_S:.0f} s: "
        + ("met" if total < TARGET_S else "MISSED")
    )
    write_json(
        work / "bench_sweep.json",
        {
            "timings_s": timings,
            "total_s": total,
            "stages": len(plan.stages),
            "counts": dict(plan.counts()),
            "submitted": len(report.submitted),
            "sbatch_calls": report.sbatch_calls,
            "resubmitted": len(again.submitted),
            "cancelled": cancelled,
            "est_gpu_hours": plan.total_gpu_hours,
        },
    )
    print(json.dumps({"results": str(work / "bench_sweep.json")}))


if __name__ == "__main__":
    main()
