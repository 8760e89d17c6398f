"""``harness bench train``: measure training throughput on the current device.

Examples::

    harness bench train --model SiT-XL/2 --encoder dinov2-vit-b --catalogue encoders.yaml --batch 256
    harness bench train --model SiT-B/2 --encoder toy --batch 64 --precision bf16 --compile
    harness bench train --model SiT-T/2 --encoder toy --space pixel --resolution 32 --device cpu

Prints a table (images/s, step-time breakdown, peak memory, FLOPs, MFU) and writes the numbers
to ``--out`` (default ``results/bench/train-<model>-<encoder>-<batch>-<device>.json``).
``--encoder toy`` uses a tiny built-in target encoder (``harness.train.toys``); other names come
from the catalogue and are built with random weights (throughput does not depend on them).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.cli import NON_NEGATIVE_INT, POSITIVE_INT, Command
from harness.cli.train import add_device_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=["train"], help="what to benchmark")
    parser.add_argument("--model", default="SiT-B/2", help="SiT preset (default SiT-B/2)")
    parser.add_argument(
        "--encoder", help="target encoder: a catalogue name, 'toy', or omit for method none"
    )
    parser.add_argument("--method", default="repa", help="repa | irepa (with --encoder)")
    parser.add_argument("--catalogue", metavar="YAML", help="encoder catalogue (encoders.yaml)")
    parser.add_argument(
        "--batch", type=POSITIVE_INT, default=64, help="images per step (default 64)"
    )
    parser.add_argument("--steps", type=POSITIVE_INT, default=10, help="timed steps (default 10)")
    parser.add_argument(
        "--warmup", type=NON_NEGATIVE_INT, default=3, help="untimed steps first (default 3)"
    )
    parser.add_argument(
        "--precision",
        choices=["bf16", "fp16", "fp32"],
        help="compute precision (default: bf16 on CUDA, fp32 on the CPU)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the SiT")
    parser.add_argument(
        "--resolution", type=POSITIVE_INT, default=256, help="image side (default 256)"
    )
    parser.add_argument("--space", choices=["latent", "pixel"], default="latent")
    parser.add_argument(
        "--num-workers",
        type=NON_NEGATIVE_INT,
        metavar="N",
        help="data-loader workers (default: 4 on CUDA, min(4, CPU cores) on the CPU)",
    )
    add_device_argument(parser)
    parser.add_argument("--out", metavar="FILE", help="JSON file for the numbers")


def run(args: argparse.Namespace) -> int:
    from harness.io import write_json
    from harness.paths import results_root
    from harness.train.bench import bench_setup, bench_train, device_defaults, format_table

    precision, num_workers = device_defaults(args.device)
    run_cfg, catalogue, targets = bench_setup(
        model=args.model,
        method=args.method,
        encoder=args.encoder,
        catalogue=args.catalogue,
        batch=args.batch,
        precision=args.precision or precision,
        compile=args.compile,
        resolution=args.resolution,
        space=args.space,
        num_workers=num_workers if args.num_workers is None else args.num_workers,
    )
    result = bench_train(
        run_cfg,
        steps=args.steps,
        warmup=args.warmup,
        device=args.device,
        catalogue=catalogue,
        target_encoders=targets,
    )
    print(format_table(result))
    slug = f"{args.model.replace('/', '')}-{args.encoder or 'none'}-{args.batch}-{result['device']}"
    out = (
        Path(args.out)
        if args.out
        else results_root() / "bench" / f"train-{slug.replace(' ', '_')}.json"
    )
    write_json(out, result)
    print(f"numbers -> {out}")
    return 0


COMMAND = Command(
    name="bench",
    help="benchmark training throughput (images/s, step breakdown, top operators, memory, MFU)",
    examples="""
        harness bench train --model SiT-XL/2 --encoder dinov2-vit-b --catalogue encoders.yaml --batch 256
        harness bench train --model SiT-T/2 --encoder toy --space pixel --resolution 32 --device cpu
    """,
    add_arguments=add_arguments,
    run=run,
    order=70,
)
