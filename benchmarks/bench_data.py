"""Benchmark of the generated dataset: images per second per resolution, on one core.

Target (issue #2): >= 2,000 images/s at 32 px on one core (the CPU study draws several thousand
32-px images, then 10,000 for the metrics). Measures the bulk path (``get_batch``, what
``DataLoader`` uses through ``__getitems__``) and single-item access (``ds[i]``), in wall time
and process CPU time (the CPU time is what the code costs; wall time also shows other load on a
shared machine). Prints a table and writes every number to ``<results>/bench_data.json``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_data.py
    .venv/bin/python benchmarks/bench_data.py --images 2000 --resolutions 32 64
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from harness.config.data import DataConfig
from harness.data import build_dataset
from harness.io import write_json
from harness.paths import results_root

TARGET_32PX = 2000.0  # images per second, one core


def measure(fn, n_images: int) -> dict[str, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"images_per_s_wall": n_images / wall, "images_per_s_cpu": n_images / cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8192, help="images at 32 px (default 8192)")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--classes", type=int, default=10, help="number of classes (default 10)")
    parser.add_argument("--out", type=Path, help="JSON output (default <results>/bench_data.json)")
    args = parser.parse_args()

    rows = []
    for resolution in args.resolutions:
        n = max(64, args.images * 32 * 32 // (resolution * resolution))  # same pixel budget
        cfg = DataConfig(resolution=resolution, num_classes=args.classes, train_images=n)
        ds = build_dataset(cfg, "train")
        ds.get_batch(range(min(n, 64)))  # warm-up
        bulk = measure(lambda ds=ds, n=n: ds.get_batch(np.arange(n)), n)
        n_single = min(n, 256)
        single = measure(lambda ds=ds, k=n_single: [ds[i] for i in range(k)], n_single)
        rows.append({"resolution": resolution, "n": n, "bulk": bulk, "single": single})

    print(
        f"generated dataset, {args.classes} classes, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"
    )
    print(
        f"{'px':>4} {'images':>7} {'bulk img/s (cpu)':>17} {'bulk img/s (wall)':>18} {'ds[i] img/s (cpu)':>18}"
    )
    for row in rows:
        print(
            f"{row['resolution']:>4} {row['n']:>7} {row['bulk']['images_per_s_cpu']:>17.0f} "
            f"{row['bulk']['images_per_s_wall']:>18.0f} {row['single']['images_per_s_cpu']:>18.0f}"
        )
    at32 = next((r for r in rows if r["resolution"] == 32), None)
    if at32 is not None:
        ok = at32["bulk"]["images_per_s_cpu"] >= TARGET_32PX
        print(f"target >= {TARGET_32PX:.0f} img/s at 32 px (cpu time): {'met' if ok else 'MISSED'}")
    out = args.out or results_root() / "bench_data.json"
    write_json(out, {"rows": rows, "target_32px_images_per_s": TARGET_32PX})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
