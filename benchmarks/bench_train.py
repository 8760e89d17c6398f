"""Benchmark of SiT training throughput (issue #4): images/s, step breakdown, memory, MFU.

Targets (one H100, bf16, 256 px latents, DINOv2-B targets): SiT-XL/2 >= 40% MFU, SiT-B/2 >=
35%. On a GPU the default grid is the acceptance pair (pass --encoder NAME --catalogue YAML for
real DINOv2-B targets; ``toy`` stands in for an encoder with the same width, 768). On CPU the
default is a small grid that finishes in minutes. Prints one table per configuration plus a
summary, and writes every number to ``<results>/bench_train.json``.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_train.py            # CPU, small
    .venv/bin/python benchmarks/bench_train.py --models SiT-XL/2 SiT-B/2 --batch 256 --compile
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from harness.io import write_json
from harness.paths import results_root
from harness.train.bench import bench_setup, bench_train, format_table

TARGET_MFU = {"SiT-XL/2": 0.40, "SiT-B/2": 0.35}


def main() -> None:
    gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["SiT-XL/2", "SiT-B/2"] if gpu else ["SiT-T/2", "SiT-S/2"]
    )
    parser.add_argument("--encoder", default="toy", help="catalogue name or 'toy' (default)")
    parser.add_argument("--catalogue", help="encoders.yaml for a catalogue encoder")
    parser.add_argument("--method", default="repa")
    parser.add_argument("--batch", type=int, default=256 if gpu else 16)
    parser.add_argument("--resolution", type=int, default=256 if gpu else 32)
    parser.add_argument("--space", default="latent" if gpu else "pixel")
    parser.add_argument("--precision", default="bf16" if gpu else "fp32")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--steps", type=int, default=20 if gpu else 3)
    parser.add_argument("--warmup", type=int, default=5 if gpu else 1)
    parser.add_argument("--num-workers", type=int, default=8 if gpu else 0)
    parser.add_argument("--out", type=Path, help="JSON output (default <results>/bench_train.json)")
    args = parser.parse_args()

    results = []
    for model in args.models:
        run, catalogue, targets = bench_setup(
            model=model,
            method=args.method,
            encoder=args.encoder,
            catalogue=args.catalogue,
            batch=args.batch,
            precision=args.precision,
            compile=args.compile,
            resolution=args.resolution,
            space=args.space,
            num_workers=args.num_workers,
        )
        result = bench_train(
            run, steps=args.steps, warmup=args.warmup, catalogue=catalogue, target_encoders=targets
        )
        result["target_mfu"] = TARGET_MFU.get(model)
        results.append(result)
        print(format_table(result), end="\n\n")

    print(f"{'model':<10} {'img/s':>9} {'SiT f+b ms':>11} {'TFLOP/s':>9} {'MFU':>7} {'target':>7}")
    for r in results:
        mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        target = "-" if r["target_mfu"] is None else f"{100 * r['target_mfu']:.0f}%"
        print(
            f"{r['model']:<10} {r['images_per_s']:>9.1f} {r['step_ms']['sit_fwd_bwd']:>11.1f} "
            f"{r['achieved_tflops']:>9.4f} {mfu:>7} {target:>7}"
        )
    out = args.out or results_root() / "bench_train.json"
    write_json(out, {"results": results})
    print(f"numbers -> {out}")


if __name__ == "__main__":
    main()
