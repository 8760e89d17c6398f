"""Benchmark of ``harness report`` on a synthetic study of about 1,000 runs x 10 eval steps.

Target (issue #7): the whole report (read, statistics with 2,000-resample bootstrap CIs,
six figures as PNG + SVG, tables, Markdown, HTML) in < 30 s. The study: 27 encoders x
{REPA, iREPA} x {SiT-B/2, L/2, XL/2} x 6 seeds, plus `none` baselines (990 runs), each with
10 evaluations and 50 training-log rows. Setup, timed apart from the report: its artifacts are
written by ``tests/synthetic_study.py`` and loaded by the real ``harness ingest``; 16 encoders
carry the names of iREPA's SiT-B/2 table, so the reproduction-gap figure has points. Reports
wall and process-CPU time per phase (CPU time is what the code costs; wall time also shows
other load on a shared machine). Prints a table and writes every number to
``<results>/bench/bench_report.json``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_report.py
    .venv/bin/python benchmarks/bench_report.py --encoders 27 --seeds 6 --n-boot 2000
    .venv/bin/python benchmarks/bench_report.py --root /dev/shm/bench-report  # keep the study
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
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
        "--root", type=Path, help="results root to use and keep (default: a temporary one)"
    )
    parser.add_argument(
        "--out", type=Path, help="JSON output (default <results>/bench/bench_report.json)"
    )
    args = parser.parse_args()

    clock = Clock()
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    from harness.report.analysis import analyse
    from harness.report.data import load_study, open_database
    from harness.report.figures import FIGURES, ReportContext, Skipped, figure_style
    from harness.report.options import ReportOptions
    from harness.report.published import reproduction_pairs
    from harness.report.render import write_report
    from harness.store.ingest import ingest

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from synthetic_study import (
        FidModel,
        Runs,
        SyntheticStudy,
        published_fids,
        write_study,
    )

    clock.rows.append(
        {
            "phase": "import",
            "wall_s": time.perf_counter() - start_wall,
            "cpu_s": time.process_time() - start_cpu,
        }
    )
    steps = tuple(40_000 * (i + 1) for i in range(args.steps))
    published = published_fids("iREPA (arXiv 2512.10794v1)", "SiT-B/2", "repa", 400_000)
    synthetic = SyntheticStudy(
        sweep="bench",
        n_encoders=args.encoders,
        models=("SiT-B/2", "SiT-L/2", "SiT-XL/2"),
        seeds=tuple(range(args.seeds)),
        eval_steps=steps,
        log_every=steps[-1] // 50,
        per_image=16,
        fid=FidModel(
            intercept=45.0,
            slope=-40.0,
            noise=0.5,
            model_offsets={"SiT-B/2": 20.0, "SiT-L/2": 8.0, "SiT-XL/2": 4.0},
            method_offsets={"none": 12.0, "irepa": -3.0},
        ),
        published_names=dict(zip((f"enc-{i:02d}" for i in range(args.encoders)), published)),
        protocols=((Runs(), {"num_samples": 10_000, "extractor_substitute": False}),),
    )
    root = args.root or Path(tempfile.mkdtemp(prefix="bench-report-"))
    try:
        manifest = clock("setup: write artifacts", write_study, root, synthetic)
        ingested = clock("setup: harness ingest", ingest, root)
        n_runs, n_evals = ingested.rows["runs"], ingested.rows["evaluations"]
        n_logs = ingested.rows["train_log"]
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
    finally:
        if args.root is None:  # 11,000 directories: slow to delete on a busy disk, not timed
            shutil.rmtree(root, ignore_errors=True)

    print(
        f"database: {manifest.n_artifacts} stage artifacts, {n_runs} runs, {n_evals} evaluations, "
        f"{n_logs} train_log rows"
    )
    skipped = [o.name for o in outputs if isinstance(o, Skipped)]
    print(
        f"figures drawn: {len(outputs) - len(skipped)}/{len(outputs)}; skipped: {skipped or 'none'}"
    )
    print(f"{'phase':<44}{'wall s':>9}{'cpu s':>9}")
    for row in clock.rows:
        print(f"{row['phase']:<44}{row['wall_s']:>9.2f}{row['cpu_s']:>9.2f}")
    verdict = "PASS" if total_wall < TARGET_S else "FAIL"
    print(
        f"{'report total (excl. import, setup)':<44}{total_wall:>9.2f}{total_cpu:>9.2f}   target < {TARGET_S:.0f} s: {verdict}"
    )
    out = args.out or results_root() / "bench" / "bench_report.json"
    write_json(
        out,
        {
            "artifacts": manifest.n_artifacts,
            "runs": n_runs,
            "eval_rows": n_evals,
            "train_log_rows": n_logs,
            "n_boot": args.n_boot,
            "phases": clock.rows,
            "total_wall_s": total_wall,
            "total_cpu_s": total_cpu,
            "target_s": TARGET_S,
            "load_average": os.getloadavg(),
            "figures_skipped": skipped,
            "pass": total_wall < TARGET_S,
        },
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
