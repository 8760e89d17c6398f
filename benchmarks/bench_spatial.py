"""Benchmark of the spatial metrics (LDS, CDS, RMSC, SRSS): ours vs a dense T×T reference.

Targets (issue #3), float32, D = 768, this 2-core machine: ours >= 3x the dense reference at
16x16 and >= 10x at 32x32, with identical values; 50,000 images at 16x16 streamed with
< 2 GB peak RSS. The dense reference is ``dense_spatial_metrics`` of
``tests/test_spatial_metrics.py`` (a T×T cosine matrix per image and distance masks, like the
published analysis code). Every case runs in its own subprocess so peak RSS values are separate;
cases are timed without masks (LDS, CDS, RMSC), with blob masks (all four metrics; the targets)
and with speckle masks (every token fg with probability 1/2: SRSS's worst case, where almost
every anchor borders background). Prints a table and writes every number to a JSON file.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_spatial.py
    .venv/bin/python benchmarks/bench_spatial.py --grids 16 --stream-images 5000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {8: None, 16: 3.0, 32: 10.0}
LABELS = {"none": "no", "blobs": "blobs", "speckle": "speckle"}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def make_inputs(n: int, side: int, dim: int, seed: int, kind: str = "blobs"):
    """Tokens with some spatial structure (a smooth field plus noise) and masks: "blobs"
    (one disc per image, plus an all-fg and an all-bg image) or "speckle" (i.i.d. 1/2)."""
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from test_spatial_metrics import random_masks, smooth_field

    torch.manual_seed(seed)
    feats = smooth_field(n, side, side, dim, seed=seed) + 0.5 * torch.randn(n, side * side, dim)
    if kind == "speckle":
        return feats, torch.rand(n, side * side) < 0.5
    return feats, random_masks(n, side, side, seed=seed)


def run_case(impl: str, side: int, dim: int, images: int, batch: int, kind: str) -> dict:
    """Time one implementation on ``images`` images (in batches of ``batch``), in this process;
    kind: "none" (no masks), "blobs" or "speckle"."""
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from test_spatial_metrics import dense_spatial_metrics

    from harness.metrics.spatial import spatial_metrics

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    feats, mask = make_inputs(batch, side, dim, seed=side, kind=kind)
    masks = kind != "none"
    grid = (side, side)

    def once(f, m):
        if impl == "ours":
            return spatial_metrics(f, grid, m)
        return dense_spatial_metrics(f, grid, m, dtype=torch.float32)

    first = once(feats, mask if masks else None)  # warm-up; also the values compared
    base_rss = peak_rss_mb()
    done, start = 0, time.perf_counter()
    while done < images:
        once(feats, mask if masks else None)
        done += batch
    seconds = time.perf_counter() - start
    return {
        "images_per_s": done / seconds,
        "ms_per_image": 1e3 * seconds / done,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_timing_mb": base_rss,
        "values": {k: v.double().tolist() for k, v in first.items()},
    }


def run_stream(side: int, dim: int, images: int, batch: int) -> dict:
    """Stream ``images`` images through ``spatial_metrics`` (with masks), keeping only the
    per-image values, as the measurement driver does."""
    import torch

    from harness.metrics.spatial import spatial_metrics

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    pool, masks = make_inputs(batch, side, dim, seed=1)
    values: dict[str, list[torch.Tensor]] = {}
    start, done, step = time.perf_counter(), 0, 0
    while done < images:
        n = min(batch, images - done)
        feats = pool[:n] * (1.0 + 0.01 * step)  # a fresh tensor per batch, like an encoder
        for key, val in spatial_metrics(feats, (side, side), masks[:n]).items():
            values.setdefault(key, []).append(val)
        done, step = done + n, step + 1
    seconds = time.perf_counter() - start
    per_image = {k: torch.cat(v) for k, v in values.items()}
    return {
        "images": done,
        "images_per_s": done / seconds,
        "peak_rss_mb": peak_rss_mb(),
        "rows": int(per_image["lds"].numel()),
    }


def subprocess_case(args: list[str]) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"case {args} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def max_diff(a: dict, b: dict) -> float:
    import math

    worst = 0.0
    for key in b["values"]:
        for x, y in zip(a["values"][key], b["values"][key]):
            if math.isnan(x) and math.isnan(y):
                continue
            worst = max(worst, abs(x - y))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--images", type=int, default=0, help="timed images per case (0: auto)")
    parser.add_argument("--stream-images", type=int, default=50_000)
    parser.add_argument("--stream-batch", type=int, default=256)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "results" / "bench" / "bench_spatial.json"
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        kind, *rest = args.child
        if kind == "stream":
            side, dim, images, batch = map(int, rest)
            print(json.dumps(run_stream(side, dim, images, batch)))
        else:
            side, dim, images, batch = map(int, rest[:4])
            print(json.dumps(run_case(kind, side, dim, images, batch, rest[4])))
        return

    rows = []
    header = (
        f"{'grid':>6} {'D':>5} {'masks':>7} {'ours img/s':>11} {'dense img/s':>12} "
        f"{'ratio':>6} {'target':>6} {'max|diff|':>9} {'RSS ours':>9} {'RSS dense':>9}"
    )
    print(header)
    print("-" * len(header))
    for side in args.grids:
        batch = {8: 256, 16: 64}.get(side, 16)
        images = args.images or batch * (4 if side < 32 else 3)
        for mask_kind in ("none", "blobs", "speckle"):
            case = [str(side), str(args.dim), str(images), str(batch), mask_kind]
            ours = subprocess_case(["ours", *case])
            dense = subprocess_case(["dense", *case])
            ratio = ours["images_per_s"] / dense["images_per_s"]
            row = {
                "grid": side,
                "dim": args.dim,
                "masks": mask_kind != "none",
                "mask_kind": mask_kind,
                "images": images,
                "batch": batch,
                "ours_images_per_s": ours["images_per_s"],
                "dense_images_per_s": dense["images_per_s"],
                "ours_ms_per_image": ours["ms_per_image"],
                "dense_ms_per_image": dense["ms_per_image"],
                "ratio": ratio,
                "target_ratio": None if mask_kind == "speckle" else TARGETS.get(side),
                "max_abs_diff": max_diff(ours, dense),
                "ours_peak_rss_mb": ours["peak_rss_mb"],
                "dense_peak_rss_mb": dense["peak_rss_mb"],
            }
            rows.append(row)
            target = "-" if row["target_ratio"] is None else f"{row['target_ratio']:.0f}x"
            print(
                f"{side:>3}x{side:<2} {args.dim:>5} {LABELS[mask_kind]:>7} "
                f"{row['ours_images_per_s']:>11.1f} {row['dense_images_per_s']:>12.1f} "
                f"{ratio:>5.1f}x {target:>6} {row['max_abs_diff']:>9.1e} "
                f"{row['ours_peak_rss_mb']:>7.0f}MB {row['dense_peak_rss_mb']:>7.0f}MB",
                flush=True,
            )
    stream = None
    if args.stream_images:
        stream = subprocess_case(
            ["stream", "16", str(args.dim), str(args.stream_images), str(args.stream_batch)]
        )
        print(
            f"\nstreaming {stream['images']:,} images at 16x16, D={args.dim}, with masks: "
            f"{stream['images_per_s']:.0f} images/s, peak RSS {stream['peak_rss_mb']:.0f} MB "
            f"(target < 2048 MB)"
        )
    load = os.getloadavg()
    print(
        f"load average during the run: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} "
        f"on {os.cpu_count()} cores (other processes share this machine)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    from harness.io import write_json

    write_json(
        args.out,
        {
            "cases": rows,
            "stream": stream,
            "load_average": load,
            "threads": os.environ.get("OMP_NUM_THREADS", "1"),
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
