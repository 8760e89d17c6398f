"""Benchmark of the results store: ingest 10,000 stage artifacts, re-ingest, query v_study.

Targets (issue #6): first ingest of 10,000 artifacts < 30 s; ``SELECT * FROM v_study`` < 1 s.
Also measured: the no-op re-ingest, an incremental ingest of 1% new artifacts, --rebuild,
and v_correlations. Prints a table and writes every number to a JSON file.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_store.py            # ~10,450 artifacts
    .venv/bin/python benchmarks/bench_store.py --seeds 2 --root /tmp/store  # smaller, kept
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness.io import write_json
from harness.store.db import open_readonly
from harness.store.ingest import ingest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from synthetic_study import SyntheticStudy, write_study

TARGETS = {"first ingest": 30.0, "SELECT * FROM v_study": 1.0}


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    """Median wall time of ``repeat`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def fetch_all(root: Path, sql: str) -> int:
    with open_readonly(root) as con:
        return len(con.execute(sql).fetchall())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", type=int, default=27, help="encoders (default 27)")
    parser.add_argument("--seeds", type=int, default=9, help="seeds per run (default 9)")
    parser.add_argument("--eval-steps", type=int, default=6, help="evaluations per run")
    parser.add_argument("--log-rows", type=int, default=100, help="train_log rows per run")
    parser.add_argument("--per-image", type=int, default=1000, help="per-image rows per encoder")
    parser.add_argument("--root", type=Path, help="results root to use and keep (default: temp)")
    parser.add_argument(
        "--out", type=Path, help="JSON file for the numbers (default: next to ROOT)"
    )
    args = parser.parse_args()
    os.environ.setdefault("HARNESS_PROGRESS", "0")

    steps = tuple(1000 * (i + 1) for i in range(args.eval_steps))
    study = SyntheticStudy(
        n_encoders=args.encoders,
        methods=("repa", "irepa"),
        models=("SiT-B/2", "SiT-L/2", "SiT-XL/2"),
        seeds=tuple(range(args.seeds)),
        eval_steps=steps,
        log_every=max(1, steps[-1] // args.log_rows),
        per_image=args.per_image,
    )
    root = args.root or Path(tempfile.mkdtemp(prefix="bench-store-")) / "results"
    root.mkdir(parents=True, exist_ok=True)
    numbers: dict[str, float] = {}

    numbers["write artifacts (setup)"], manifest = timed(lambda: write_study(root, study))
    n = manifest.n_artifacts
    numbers["first ingest"], first = timed(lambda: ingest(root))
    numbers["no-op re-ingest"], _ = timed(lambda: ingest(root), repeat=3)
    extra = SyntheticStudy(sweep="extra", n_encoders=2, seeds=(100,), eval_steps=steps,
                           log_every=study.log_every, per_image=10)  # fmt: skip
    write_study(root, extra)
    numbers["incremental ingest (+new sweep)"], incremental = timed(lambda: ingest(root))
    numbers["SELECT * FROM v_study"], n_study = timed(
        lambda: fetch_all(root, "SELECT * FROM v_study"), repeat=5
    )
    numbers["SELECT * FROM v_correlations"], n_corr = timed(
        lambda: fetch_all(root, "SELECT * FROM v_correlations"), repeat=5
    )
    numbers["ingest --rebuild"], _ = timed(lambda: ingest(root, rebuild=True))

    rows = incremental.rows
    print(f"\nstore benchmark: {n} stage artifacts (+{extra_n(incremental, first)} in the "
          f"incremental step), {rows['train_log']} train_log rows, "
          f"{rows['spatial_per_image']} per-image rows, v_study {n_study} rows, "
          f"v_correlations {n_corr} rows")  # fmt: skip
    print(f"{'measurement':<34}{'seconds':>10}{'target':>10}")
    for name, seconds in numbers.items():
        target = TARGETS.get(name)
        verdict = "" if target is None else f"< {target:g} {'ok' if seconds < target else 'MISS'}"
        print(f"{name:<34}{seconds:>10.3f}{verdict:>14}")
    out = args.out or root.parent / "bench_store.json"
    write_json(out, {"artifacts": n, "rows": rows, "seconds": numbers, "targets": TARGETS,
                     "cpu_count": os.cpu_count()})  # fmt: skip
    print(f"numbers written to {out}")
    if args.root is None:
        shutil.rmtree(root, ignore_errors=True)  # the temporary study; the JSON stays


def extra_n(incremental: object, first: object) -> int:
    return incremental.rows["stages"] - first.rows["stages"]  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
