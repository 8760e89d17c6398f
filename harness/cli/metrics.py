"""``harness metrics CATALOGUE``: measure encoders' spatial structure (LDS, CDS, SRSS, RMSC).

For each selected encoder: stream N evaluation images (with masks) through it, write
``per_image.csv`` (and ``features.npz``) and ``result.json`` under
``results/stages/spatial/<key>/`` (the key is the ``spatial`` stage's content key, so a sweep
reuses these results), ready for ``harness ingest``.
"""

from __future__ import annotations

import argparse
import time

from harness.cli import NON_NEGATIVE_INT, POSITIVE_INT, Command
from harness.errors import HarnessError

DEFAULT_RESOLUTION = 64
DEFAULT_IMAGES = 10_000
_GRID = DEFAULT_RESOLUTION // 16
DESCRIPTION = f"""\
measure encoders' spatial structure (LDS, CDS, SRSS, RMSC) on a dataset

Defaults: {DEFAULT_IMAGES:,} generated {DEFAULT_RESOLUTION}-px images (the default data config),
a token grid of resolution / 16 = {_GRID}x{_GRID}, and the encoders' real weights.
These are not the CPU study's (sweeps/cpu-study.yaml: 500 images of its own 32-px data,
at the SiT's 8x8 token grid), so the numbers do not compare with the study's; the study
measures its encoders itself (harness sweep ... --sweep sweeps/cpu-study.yaml --only spatial).
Each encoder's line names the images, resolution, grid and weights (real / random) measured."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.add_argument("catalogue", metavar="CATALOGUE", help="encoders.yaml")
    parser.add_argument(
        "--encoders",
        default="*",
        metavar="A,B",
        help="comma-separated names or globs (default all)",
    )
    parser.add_argument(
        "--data-resolution",
        type=POSITIVE_INT,
        default=DEFAULT_RESOLUTION,
        metavar="PX",
        help=f"image side (default {DEFAULT_RESOLUTION}; the CPU study: 32)",
    )
    parser.add_argument(
        "--data-root",
        metavar="DIR",
        help="ImageNet-style folder (val/<class>/*) instead of generated images",
    )
    parser.add_argument("--mask-root", metavar="DIR", help="foreground masks for --data-root")
    parser.add_argument(
        "--images",
        type=POSITIVE_INT,
        default=DEFAULT_IMAGES,
        help=f"images per encoder (default {DEFAULT_IMAGES}; the CPU study: 500)",
    )
    parser.add_argument(
        "--grid",
        type=POSITIVE_INT,
        help=f"token grid side (default: resolution / 16 = {_GRID}; the CPU study: 8)",
    )
    parser.add_argument(
        "--batch-size", type=POSITIVE_INT, default=32, help="images per forward (default 32)"
    )
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument(
        "--workers", type=NON_NEGATIVE_INT, default=0, help="DataLoader workers (default 0)"
    )
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="random init, no weights (default: the encoders' real weights)",
    )
    parser.add_argument("--out", metavar="DIR", help="results root (default --results)")
    parser.add_argument("--force", action="store_true", help="recompute finished measurements")


def run(args: argparse.Namespace) -> int:
    from harness.artifacts import is_done, write_result
    from harness.config.data import DataConfig
    from harness.config.encoders import load_catalogue
    from harness.config.metrics import SpatialConfig
    from harness.metrics.measure import measure_encoder
    from harness.paths import results_root, stage_dir
    from harness.stages import STAGES, spatial

    catalogue = load_catalogue(args.catalogue)
    specs = catalogue.select([p.strip() for p in args.encoders.split(",") if p.strip()])
    if args.data_root:
        data = DataConfig(
            source="folder",
            root=args.data_root,
            mask_root=args.mask_root,
            resolution=args.data_resolution,
            val_images=args.images,
        )
    else:
        data = DataConfig(resolution=args.data_resolution, val_images=args.images)
    side = args.grid or max(1, args.data_resolution // 16)
    try:
        cfg = SpatialConfig(
            images=args.images,
            batch_size=args.batch_size,
            grid=side,
            dtype=args.dtype,
            num_workers=args.workers,
        )
    except ValueError as exc:
        raise HarnessError(f"invalid metric settings: {exc}") from None
    root = results_root(args.out)
    stage = STAGES.get("spatial")
    weights = "random weights" if args.random_weights else "real weights"
    setting = f"{data.resolution} px, grid {side}x{side}, {weights}"
    failed = 0
    for spec in specs:
        config = spatial.instance(spec, data, cfg, (side, side), args.random_weights)
        key = stage.key(config)  # the key a sweep gives the same measurement
        out_dir = stage_dir(root, "spatial", key)
        if is_done(out_dir) and not args.force:
            print(f"{spec.name}: already measured ({setting}) in {out_dir} (--force to redo)")
            continue
        started = time.time()
        try:
            payload = measure_encoder(
                spec,
                data,
                cfg,
                out_dir,
                grid=(side, side),
                device=args.device,
                random_weights=args.random_weights,
            )
        except HarnessError as exc:
            failed += 1
            print(f"{spec.name}: FAILED ({setting}): {exc}")
            continue
        write_result(
            out_dir, stage="spatial", key=key, config=config, payload=payload, started_at=started
        )
        means = "  ".join(
            f"{k}={v['mean']:.4f}" if v["mean"] is not None else f"{k}=n/a"
            for k, v in payload["metrics"].items()
        )
        print(f"{spec.name}: {payload['n_images']} images, {setting}: {means} -> {out_dir}")
    return 2 if failed else 0


COMMAND = Command(
    name="metrics",
    help="measure encoders' spatial structure (LDS, CDS, SRSS, RMSC) on a dataset",
    examples="""
        harness metrics encoders.yaml --encoders pixels,noise,hog --images 500 --random-weights
        harness metrics encoders.yaml --encoders 'dinov2*' --data-resolution 256 --device cuda \\
            --dtype bfloat16
    """,
    add_arguments=add_arguments,
    run=run,
    order=35,
)
