"""``harness train CONFIG``: train one SiT run (the same code the sweep's train stage calls).

Examples::

    harness train sweeps/examples/run-tiny.yaml --catalogue encoders.yaml --device cpu
    harness train run.yaml --catalogue encoders.yaml
    harness train run.yaml --set train.steps=1000 --set model.name=SiT-B/2 --out /tmp/run1
    torchrun --nproc-per-node 8 -m harness train run.yaml --catalogue encoders.yaml
    srun --ntasks-per-node 8 --gpus-per-task 1 harness train run.yaml --catalogue encoders.yaml

Rerunning the same command resumes from the newest valid checkpoint. SIGUSR2 or SIGTERM makes
the run checkpoint at the next step boundary and exit (code 0); ``result.json`` is written only
when the run is done (or diverged, code 1).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from harness.cli import POSITIVE_INT, Command, add_overrides_argument, add_trust_checkpoint_argument


def add_run_config_arguments(parser: argparse.ArgumentParser) -> None:
    """CONFIG plus repeatable --set overrides (shared with ``harness prepare``)."""
    parser.add_argument(
        "config",
        metavar="CONFIG",
        help="run config YAML: one run (e.g. sweeps/examples/run-tiny.yaml; a sweep file is "
        "for `harness sweep`)",
    )
    add_overrides_argument(parser)


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """--device, shared by the training-side commands (train, prepare, sample, bench)."""
    parser.add_argument(
        "--device", metavar="DEV", help="cpu | cuda | cuda:N (default: cuda if any)"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_config_arguments(parser)
    parser.add_argument(
        "--out", metavar="DIR", help="run directory (default: results/stages/train/<run id>)"
    )
    add_device_argument(parser)
    parser.add_argument(
        "--catalogue",
        metavar="YAML",
        help="encoder catalogue (encoders.yaml); needed by repa/irepa",
    )
    parser.add_argument(
        "--stop-after",
        type=POSITIVE_INT,
        metavar="STEP",
        help="checkpoint and stop after this step",
    )
    add_trust_checkpoint_argument(parser)


def run(args: argparse.Namespace) -> int:
    from harness.artifacts import write_result
    from harness.config import load_config
    from harness.config.run import load_run, run_id
    from harness.errors import ConfigError
    from harness.paths import results_root, stage_dir
    from harness.train.loop import checkpoint_on_signals, train

    started = time.time()
    cfg = load_run(args.config, args.overrides)
    key = run_id(cfg)
    out = Path(args.out) if args.out else stage_dir(results_root(), "train", key)
    catalogue = None
    if cfg.uses_encoder:
        if not args.catalogue:
            raise ConfigError(
                f"{args.config}: method {cfg.method!r} aligns to {cfg.targets}: "
                "pass the encoder catalogue with --catalogue encoders.yaml"
            )
        catalogue = load_config(args.catalogue, kind="catalogue")
    with checkpoint_on_signals():
        outcome = train(
            cfg, out, catalogue=catalogue, device=args.device, stop_after=args.stop_after
        )
    status, payload = outcome["status"], outcome["payload"]
    if status in ("done", "diverged") and outcome["rank"] == 0:
        write_result(
            out,
            stage="train",
            key=key,
            config=cfg.to_dict(),
            payload=payload,
            status=status,
            error=outcome["error"],
            started_at=started,
        )
    final = payload["final"]
    print(
        f"{status}: {key} at step {payload['steps_done']}/{payload['steps_target']} "
        f"loss={final['loss']} align_cos={final['align_cos']} -> {out}",
        file=sys.stderr if status == "diverged" else sys.stdout,
    )
    if outcome["error"]:
        print(f"error: {outcome['error']}", file=sys.stderr)
    return 1 if status == "diverged" else 0


COMMAND = Command(
    name="train",
    help="train one SiT run (REPA / iREPA / none) from a run config; resumes automatically",
    examples="""
        harness train sweeps/examples/run-tiny.yaml --catalogue encoders.yaml --device cpu
        harness train run.yaml --catalogue encoders.yaml
        harness train run.yaml --set train.steps=1000 --out /tmp/run1 --device cpu
        torchrun --nproc-per-node 8 -m harness train run.yaml --catalogue encoders.yaml
    """,
    add_arguments=add_arguments,
    run=run,
    order=30,
)
