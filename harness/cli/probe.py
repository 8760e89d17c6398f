"""``harness probe ENCODERS.yaml``: linear-probe encoders on the dataset (the sweep's probe stage).

Pooled features (mean of patch tokens by default) are extracted once per encoder and cached;
one head per learning rate trains in a single pass; the head chosen on a held-out slice of
train is reported on val. Each encoder's result goes to ``results/stages/probe/<key>/``; an
encoder already probed with the same settings is not recomputed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from harness.cli import (
    NON_NEGATIVE_INT,
    POSITIVE_INT,
    Command,
    add_trust_checkpoint_argument,
    bounded,
)
from harness.cli.sections import add_common_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "catalogue", metavar="ENCODERS.yaml", nargs="?", help="the encoder catalogue"
    )
    parser.add_argument(
        "--encoders", metavar="A,B", help="comma-separated encoder names (default: all)"
    )
    parser.add_argument(
        "--sweep", metavar="YAML", help="sweep (or file) with data: and probe: sections"
    )
    parser.add_argument(
        "--grid",
        type=POSITIVE_INT,
        default=16,
        metavar="N",
        help="token grid N x N the encoders run at (default 16)",
    )
    parser.add_argument(
        "--random-weights", action="store_true", help="random-init encoders (tests / CPU; recorded)"
    )
    parser.add_argument("--force", action="store_true", help="recompute encoders already probed")
    sit = parser.add_argument_group("SiT hidden states (instead of encoders)")
    sit.add_argument("--sit", metavar="CKPT|RUN_DIR", help="probe a trained SiT's hidden states")
    sit.add_argument(
        "--block", type=POSITIVE_INT, metavar="N", help="1-based block whose output is probed"
    )
    sit.add_argument(
        "--step",
        type=NON_NEGATIVE_INT,
        metavar="N",
        help="checkpoint step in RUN_DIR (default: newest)",
    )
    sit.add_argument(
        "--noise-t",
        type=bounded(float, ge=0, lt=1),
        default=0.0,
        metavar="T",
        help="input noise level t in [0, 1) (default 0: clean)",
    )
    add_trust_checkpoint_argument(parser)
    add_common_options(parser, "probe.epochs=30")


def run(args: argparse.Namespace) -> int:
    from harness.errors import ConfigError

    if args.sit:
        return run_sit(args)
    if not args.catalogue:
        raise ConfigError(
            "give the encoder catalogue (ENCODERS.yaml), or --sit CKPT|RUN_DIR --block N"
        )
    from harness.artifacts import is_done, read_result, write_result
    from harness.cli.sections import load_sections, resolve_device
    from harness.config.data import DataConfig
    from harness.config.encoders import load_catalogue
    from harness.config.eval import ProbeConfig
    from harness.eval.probe import run_probe
    from harness.paths import results_root, stage_dir
    from harness.stages import STAGES, probe

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
    stage = STAGES.get("probe")
    for spec in specs:
        config = probe.instance(spec, data, cfg, grid, args.random_weights)  # a sweep's instance
        key = stage.key(config)
        out = stage_dir(results_root(), "probe", key)
        if is_done(out) and not args.force:
            payload = read_result(out)["payload"]  # type: ignore[index]
        else:
            started = time.time()
            payload = run_probe(
                spec,
                data,
                cfg,
                grid=grid,
                device=resolve_device(args.device),
                random_weights=args.random_weights,
            )
            write_result(
                out, stage="probe", key=key, config=config, payload=payload, started_at=started
            )
        rows.append((spec.name, payload, out))
    for name, payload, out in rows:
        print(
            f"{name:<32} top1 {payload['top1']:.4f}  top5 {payload['top5']:.4f}  lr {payload['best_lr']:g}  ({out})"
        )
    return 0


def run_sit(args: argparse.Namespace) -> int:
    from harness.artifacts import write_result
    from harness.cli.eval import resolve_checkpoint
    from harness.cli.sections import load_sections, resolve_device
    from harness.config.eval import ProbeConfig
    from harness.errors import ConfigError
    from harness.eval.sit_probe import SIT_PROBE_KEY, run_sit_probe
    from harness.io import file_hash
    from harness.paths import results_root, stage_dir

    if args.block is None:
        raise ConfigError("--sit needs --block N (the SiT block whose output is probed)")
    cfg = load_sections(args.sweep, {"probe": ProbeConfig}, args.overrides)["probe"]
    ckpt, step, _ = resolve_checkpoint(Path(args.sit), args.step)
    started = time.time()
    config = {
        "checkpoint": str(ckpt),
        "checkpoint_sha256": file_hash(ckpt, 64),
        "block": args.block,
        "noise_t": args.noise_t,
        "probe": cfg.to_dict(),
    }
    key = SIT_PROBE_KEY.key(config)
    out = stage_dir(results_root(), "probe", key)
    payload = run_sit_probe(
        ckpt,
        cfg,
        block=args.block,
        noise_t=args.noise_t,
        step=step,
        device=resolve_device(args.device),
    )
    write_result(out, stage="probe", key=key, config=config, payload=payload, started_at=started)
    print(
        f"{payload['run_id']} step {step} block {args.block}: top1 {payload['top1']:.4f}  top5 {payload['top5']:.4f}  ({out})"
    )
    return 0


COMMAND = Command(
    name="probe",
    help="linear-probe encoders (or a SiT's hidden states) on cached pooled features",
    examples="""
        harness probe encoders.yaml --encoders dinov2-vit-b,pe-vit-g --sweep sweeps/irepa-sitxl-100k.yaml
        harness probe encoders.yaml --encoders pixels,noise,hog --random-weights --set probe.epochs=30
        harness probe encoders.yaml --set probe.pooling=cls --set probe.subset_per_class=50
        harness probe --sit results/stages/train/<key> --block 8 --noise-t 0.25
    """,
    add_arguments=add_arguments,
    run=run,
    order=47,
)
