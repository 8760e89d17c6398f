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
from typing import Any

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
        "--out",
        metavar="DIR",
        help="run directory (default: results/stages/train/<key>, the sweep's for this run)",
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
    from harness.config.data import resolved_data
    from harness.config.run import load_run
    from harness.errors import ConfigError
    from harness.paths import results_root, stage_dir
    from harness.stages import STAGES
    from harness.stages import train as train_stage
    from harness.train.loop import checkpoint_on_signals, train

    started = time.time()
    cfg = load_run(args.config, args.overrides)
    cfg = cfg.model_copy(update={"data": resolved_data(cfg.data)})  # as a sweep plans it
    catalogue = None
    if cfg.uses_encoder:
        if not args.catalogue:
            raise ConfigError(
                f"{args.config}: method {cfg.method!r} aligns to {cfg.targets}: "
                "pass the encoder catalogue with --catalogue encoders.yaml"
            )
        catalogue = load_config(args.catalogue, kind="catalogue")
    # the sweep's train instance of this run: same config, same key, same directory
    specs = [catalogue.get(name) for name in cfg.targets] if catalogue else []
    config = train_stage.instance(cfg, specs)
    key = STAGES.get("train").key(config, _upstream(cfg))
    out = Path(args.out) if args.out else stage_dir(results_root(), "train", key)
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
            config=config,
            payload=payload,
            status=status,
            error=outcome["error"],
            started_at=started,
        )
    final = payload["final"]
    print(
        f"{status}: {config['run_id']} at step {payload['steps_done']}/{payload['steps_target']} "
        f"loss={final['loss']} align_cos={final['align_cos']} -> {out}",
        file=sys.stderr if status == "diverged" else sys.stdout,
    )
    if outcome["error"]:
        print(f"error: {outcome['error']}", file=sys.stderr)
    return 1 if status == "diverged" else 0


def _upstream(cfg: Any) -> list[str]:
    """The upstream keys a sweep gives this run: the latent cache of a latent-space run."""
    from harness.stages import STAGES, latents

    upstream = latents.upstream_of(cfg)
    return [STAGES.get("latents").key(upstream)] if upstream else []


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
