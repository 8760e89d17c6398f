"""``harness metrics CATALOGUE``: measure encoders' spatial structure (LDS, CDS, SRSS, RMSC).

For each selected encoder: stream N evaluation images (with masks) through it, write
``per_image.csv`` (and ``features.npz``) and ``result.json`` under
``results/stages/spatial/<key>/`` (the key is the ``spatial`` stage's content key, so a sweep
reuses these results), ready for ``harness ingest``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

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
    parser.add_argument(
        "--sweep",
        metavar="YAML",
        help="measure as this sweep's spatial stages do (its data, images, grid and weights): "
        "the sweep then finds these results done",
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
    from harness.stages import STAGES, typed

    catalogue = load_catalogue(args.catalogue)
    specs = catalogue.select([p.strip() for p in args.encoders.split(",") if p.strip()])
    instances = _sweep_instances(catalogue, specs, args) if args.sweep else _instances(specs, args)
    root = results_root(args.out)
    stage = STAGES.get("spatial")
    failed = 0
    for spec, config in instances:
        key = stage.key(config)  # the key a sweep gives the same measurement
        out_dir = stage_dir(root, "spatial", key)
        data, cfg = typed(DataConfig, config["data"]), typed(SpatialConfig, config["spatial"])
        grid, random_weights = tuple(config["grid"]), config["random_weights"]
        weights = "random weights" if random_weights else "real weights"
        setting = f"{data.resolution} px, grid {grid[0]}x{grid[1]}, {weights}"
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
                grid=grid,
                device=args.device,
                random_weights=random_weights,
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


def _instances(specs: list, args: argparse.Namespace) -> list[tuple[Any, dict[str, Any]]]:
    """(entry, spatial stage config) per encoder, from the command's options."""
    from harness.config.data import DataConfig
    from harness.config.metrics import SpatialConfig
    from harness.stages import spatial

    resolution = args.data_resolution or DEFAULT_RESOLUTION
    images = args.images or DEFAULT_IMAGES
    if args.data_root:
        data = DataConfig(
            source="folder",
            root=args.data_root,
            mask_root=args.mask_root,
            resolution=resolution,
            val_images=images,
        )
    else:
        data = DataConfig(resolution=resolution, val_images=images)
    side = args.grid or max(1, resolution // 16)
    try:
        cfg = SpatialConfig(
            images=images,
            batch_size=args.batch_size,
            grid=side,
            dtype=args.dtype,
            num_workers=args.workers,
        )
    except ValueError as exc:
        raise HarnessError(f"invalid metric settings: {exc}") from None
    return [
        (spec, spatial.instance(spec, data, cfg, (side, side), args.random_weights))
        for spec in specs
    ]


def _sweep_instances(
    catalogue: Any, specs: list, args: argparse.Namespace
) -> list[tuple[Any, dict[str, Any]]]:
    """The sweep's own spatial stage instances of these encoders (its data, settings, grids
    and weights): measured here, they are the results the sweep finds done."""
    from harness.config.sweep import load_sweep
    from harness.errors import ConfigError
    from harness.plan import build_plan

    options = ("data_resolution", "data_root", "mask_root", "images", "grid", "random_weights")
    given = [f"--{name.replace('_', '-')}" for name in options if getattr(args, name)]
    if given:
        raise ConfigError(
            f"--sweep {args.sweep}: the sweep sets the data, images, grid and weights; "
            f"drop {', '.join(given)}",
            hint="or drop --sweep to measure with the command's own settings",
        )
    plan = build_plan(catalogue, load_sweep(args.sweep))
    names = {spec.name for spec in specs}
    found = [(s.config["encoder"], s.config) for s in plan.stages if s.stage == "spatial"]
    outside = sorted(names - {name for name, _ in found})
    if outside:
        raise ConfigError(
            f"--sweep {args.sweep}: {', '.join(outside)} not among the sweep's encoders",
            hint=f"the sweep measures: {', '.join(dict.fromkeys(n for n, _ in found))}",
        )
    by_name = {spec.name: spec for spec in specs}
    return [(by_name[name], config) for name, config in found if name in names]


COMMAND = Command(
    name="metrics",
    help="measure encoders' spatial structure (LDS, CDS, SRSS, RMSC) on a dataset",
    examples="""
        harness metrics encoders.yaml --encoders pixels,noise,hog --images 500 --random-weights
        harness metrics encoders.yaml --encoders pixels-p4,hog --sweep sweeps/cpu-study-full.yaml
        harness metrics encoders.yaml --encoders 'dinov2*' --data-resolution 256 --device cuda \\
            --dtype bfloat16
    """,
    add_arguments=add_arguments,
    run=run,
    order=35,
)
