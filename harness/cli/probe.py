"""``harness probe ENCODERS.yaml``: linear-probe encoders on the dataset (the sweep's probe stage).

Pooled features (mean of patch tokens by default) are extracted once per encoder and cached;
one head per learning rate trains in a single pass; the head chosen on a held-out slice of
train is reported on val. Each encoder's result goes to ``results/stages/probe/<key>/``; an
encoder already probed with the same settings is not recomputed.
"""

from __future__ import annotations

import argparse
import time

from harness.cli import Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("catalogue", metavar="ENCODERS.yaml", help="the encoder catalogue")
    parser.add_argument(
        "--encoders", metavar="A,B", help="comma-separated encoder names (default: all)"
    )
    parser.add_argument(
        "--sweep", metavar="YAML", help="sweep (or file) with data: and probe: sections"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override, e.g. --set probe.epochs=30 --set data.num_classes=10",
    )
    parser.add_argument(
        "--grid",
        type=int,
        default=16,
        metavar="N",
        help="token grid N x N the encoders run at (default 16)",
    )
    parser.add_argument(
        "--random-weights", action="store_true", help="random-init encoders (tests / CPU; recorded)"
    )
    parser.add_argument("--force", action="store_true", help="recompute encoders already probed")
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")


def run(args: argparse.Namespace) -> int:
    from harness.artifacts import is_done, read_result, write_result
    from harness.cli.fid_ref import _device
    from harness.config.data import DataConfig
    from harness.config.encoders import load_catalogue
    from harness.config.eval import ProbeConfig
    from harness.eval.probe import run_probe
    from harness.eval.sections import load_sections, stage_key
    from harness.paths import results_root, stage_dir

    catalogue = load_catalogue(args.catalogue)
    names = (
        [n.strip() for n in args.encoders.split(",") if n.strip()]
        if args.encoders
        else catalogue.names()
    )
    specs = [catalogue.get(name) for name in names]  # unknown names: RegistryError before any work
    sections = load_sections(args.sweep, {"data": DataConfig, "probe": ProbeConfig}, args.overrides)
    data, cfg = sections["data"], sections["probe"]
    grid = (args.grid, args.grid)
    rows = []
    for spec in specs:
        key = stage_key(
            "probe",
            encoder=spec.to_dict(),
            data=data.to_dict(),
            probe=cfg.to_dict(),
            grid=list(grid),
            random_weights=args.random_weights,
        )
        out = stage_dir(results_root(), "probe", key)
        if is_done(out) and not args.force:
            payload = read_result(out)["payload"]  # type: ignore[index]
        else:
            started = time.time()
            payload = run_probe(
                spec,
                data,
                cfg,
                out,
                grid=grid,
                device=_device(args.device),
                random_weights=args.random_weights,
            )
            config = {
                "encoder_spec": spec.to_dict(),
                "data": data.to_dict(),
                "probe": cfg.to_dict(),
                "grid": list(grid),
                "random_weights": args.random_weights,
            }
            write_result(
                out, stage="probe", key=key, config=config, payload=payload, started_at=started
            )
        rows.append((spec.name, payload, out))
    for name, payload, out in rows:
        print(
            f"{name:<32} top1 {payload['top1']:.4f}  top5 {payload['top5']:.4f}  lr {payload['best_lr']:g}  ({out})"
        )
    return 0


COMMAND = Command(
    name="probe",
    help="linear-probe encoders on cached pooled features (lr grid in one pass)",
    examples="""
        harness probe encoders.yaml --encoders dinov2-vit-b,pe-vit-g --sweep sweeps/irepa-sitxl-100k.yaml
        harness probe encoders.yaml --encoders pixels,noise,hog --random-weights --set probe.epochs=30
        harness probe encoders.yaml --set probe.pooling=cls --set probe.subset_per_class=50
    """,
    add_arguments=add_arguments,
    run=run,
    order=47,
)
