"""Benchmark of ``harness report`` on a synthetic database of about 1,000 runs x 10 eval steps.

Target (issue #7): the whole report (read, statistics with 2,000-resample bootstrap CIs,
six figures as PNG + SVG, tables, Markdown, HTML) in < 30 s. The database: 27 encoders x
{REPA, iREPA} x {SiT-B/2, L/2, XL/2} x 6 seeds, plus `none` baselines (990 runs), each with
10 evaluations and 50 training-log rows. Reports wall and process-CPU time per phase (CPU
time is what the code costs; wall time also shows other load on a shared machine). Prints a
table and writes every number to ``<results>/bench/bench_report.json``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_report.py
    .venv/bin/python benchmarks/bench_report.py --encoders 27 --seeds 6 --n-boot 2000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HARNESS_PROGRESS", "0")

from harness.io import write_json
from harness.paths import results_root

TARGET_S = 30.0


class Clock:
    """Wall and CPU seconds per named phase."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float | str]] = []

    def __call__(self, name: str, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn(*args, **kwargs)
        self.rows.append(
            {
                "phase": name,
                "wall_s": time.perf_counter() - wall,
                "cpu_s": time.process_time() - cpu,
            }
        )
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", type=int, default=27, help="encoders (default 27)")
    parser.add_argument("--seeds", type=int, default=6, help="seeds per configuration (default 6)")
    parser.add_argument("--steps", type=int, default=10, help="eval steps per run (default 10)")
    parser.add_argument(
        "--n-boot", type=int, default=2000, help="bootstrap resamples (default 2000)"
    )
    parser.add_argument(
        "--out", type=Path, help="JSON output (default <results>/bench/bench_report.json)"
    )
    args = parser.parse_args()

    clock = Clock()
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    from harness.report.analysis import analyse
    from harness.report.data import load_study, open_database
    from harness.report.figures import FIGURES, ReportContext, figure_style
    from harness.report.options import ReportOptions
    from harness.report.published import reproduction_pairs
    from harness.report.render import write_report
    from harness.report.synthetic import synthetic_tables, write_database

    clock.rows.append(
        {
            "phase": "import",
            "wall_s": time.perf_counter() - start_wall,
            "cpu_s": time.process_time() - start_cpu,
        }
    )
    models = ("SiT-B/2", "SiT-L/2", "SiT-XL/2")
    steps = tuple(40_000 * (i + 1) for i in range(args.steps))
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        root = Path(tmp)
        tables = synthetic_tables(
            n_encoders=args.encoders,
            models=models,
            seeds=tuple(range(args.seeds)),
            eval_steps=steps,
            log_points=50,
        )
        write_database(root / "harness.duckdb", tables)
        n_runs, n_evals = len(tables["runs"]), len(tables["v_study"])
        options = ReportOptions(n_boot=args.n_boot)
        t0_wall, t0_cpu = time.perf_counter(), time.process_time()
        with open_database(root) as con:
            study = clock("read database", load_study, con, options)
        analysis = clock("statistics", analyse, study.points, options)
        ctx = ReportContext(study, analysis, options, reproduction_pairs(study))
        outputs = []
        with figure_style():
            for name, draw in FIGURES.items():
                outputs.append(clock(f"figure {name}", draw, ctx))
        clock(
            "write files (PNG, SVG, CSV, MD, HTML)",
            write_report,
            ctx,
            outputs,
            root / "report",
            source="bench",
        )
        total_wall, total_cpu = time.perf_counter() - t0_wall, time.process_time() - t0_cpu

    print(
        f"database: {n_runs} runs, {n_evals} v_study rows, {len(tables['train_log'])} train_log rows"
    )
    print(f"{'phase':<44}{'wall s':>9}{'cpu s':>9}")
    for row in clock.rows:
        print(f"{row['phase']:<44}{row['wall_s']:>9.2f}{row['cpu_s']:>9.2f}")
    verdict = "PASS" if total_wall < TARGET_S else "FAIL"
    print(
        f"{'report total (excl. import)':<44}{total_wall:>9.2f}{total_cpu:>9.2f}   target < {TARGET_S:.0f} s: {verdict}"
    )
    out = args.out or results_root() / "bench" / "bench_report.json"
    write_json(
        out,
        {
            "runs": n_runs,
            "eval_rows": n_evals,
            "n_boot": args.n_boot,
            "phases": clock.rows,
            "total_wall_s": total_wall,
            "total_cpu_s": total_cpu,
            "target_s": TARGET_S,
            "load_average": os.getloadavg(),
            "pass": total_wall < TARGET_S,
        },
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
