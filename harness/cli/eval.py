"""``harness eval CKPT|RUN_DIR``: sample a checkpoint and compute FID, IS, KID, precision/recall
(and FD-DINOv2) with the full protocol recorded.

RUN_DIR is a training run directory (``checkpoints/step_*.pt``; the newest valid one, or
``--step N``). The reference statistics come from ``--reference DIR`` or are computed (once,
cached) for the run's dataset. Samples are written in shards, so rerunning a killed eval
resumes it. Results: ``results/stages/eval/<key>/result.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from typing import Any

from harness.cli import NON_NEGATIVE_INT, POSITIVE_INT, Command, add_trust_checkpoint_argument
from harness.errors import ArtifactError, StageError
from harness.eval.commands import add_common_options

_STEP = re.compile(r"step_(\d+)\.pt$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target", metavar="CKPT|RUN_DIR", help="a checkpoint file or a training run directory"
    )
    parser.add_argument(
        "--config",
        metavar="YAML",
        help="sweep or file with an eval: section (default: paper protocol)",
    )
    parser.add_argument(
        "--num-samples",
        type=POSITIVE_INT,
        metavar="N",
        help="samples to generate (default: eval.num_samples = 50000)",
    )
    parser.add_argument(
        "--step",
        type=NON_NEGATIVE_INT,
        metavar="N",
        help="checkpoint step in RUN_DIR (default: newest valid)",
    )
    parser.add_argument(
        "--reference",
        metavar="DIR",
        help="a fid_ref directory (default: computed for the run's data)",
    )
    parser.add_argument(
        "--out", metavar="DIR", help="artifact directory (default: results/stages/eval/<key>)"
    )
    add_trust_checkpoint_argument(parser)
    add_common_options(parser, "eval.sampler.num_steps=50")


def run(args: argparse.Namespace) -> int:
    from harness.config.eval import EvalConfig
    from harness.eval.commands import load_sections

    overrides = list(args.overrides)
    if args.num_samples is not None:
        overrides.append(f"eval.num_samples={args.num_samples}")
    cfg = load_sections(args.config, {"eval": EvalConfig}, overrides)["eval"]
    ckpt, step, run_dir = resolve_checkpoint(Path(args.target), args.step)
    payload, out = evaluate_and_record(
        ckpt,
        step,
        cfg,
        run_dir=run_dir,
        reference=args.reference,
        out=args.out,
        device=args.device,
        num_samples_option="--num-samples" if args.num_samples is not None else "eval.num_samples",
    )
    flag = (
        "  (substitute extractor: not an FID)"
        if payload["protocol"]["extractor_substitute"]
        else ""
    )
    for name, value in payload["metrics"].items():
        print(f"{name:>10}: {value:.6g}{flag if name == 'fid' else ''}")
    for name, why in payload["skipped"].items():
        print(f"{name:>10}: skipped ({why})")
    print(f"wrote {out / 'result.json'}")
    return 0


def resolve_checkpoint(target: Path, step: int | None) -> tuple[Path, int, Path | None]:
    """(checkpoint file, its step, its run directory or None)."""
    from harness.train.checkpoint import checkpoint_path, latest_checkpoint

    if target.is_dir():
        ckpt = checkpoint_path(target, step) if step is not None else latest_checkpoint(target)
        if ckpt is None or not ckpt.is_file():
            which = f"step {step}" if step is not None else "a valid checkpoint"
            raise ArtifactError(
                f"{target}: no {which} under checkpoints/",
                hint="train first, or pass a checkpoint file",
            )
        run_dir: Path | None = target
    elif target.is_file():
        ckpt = target
        run_dir = target.parent.parent if target.parent.name == "checkpoints" else None
    else:
        raise ArtifactError(f"{target}: no such checkpoint or run directory")
    match = _STEP.search(ckpt.name)
    if step is None and match is None:
        raise StageError(f"{ckpt}: cannot tell the training step from the name; pass --step N")
    return ckpt, step if step is not None else int(match.group(1)), run_dir  # type: ignore[union-attr]


def evaluate_and_record(
    ckpt: Path,
    step: int,
    cfg: Any,
    *,
    run_dir: Path | None,
    reference: str | None,
    out: str | None,
    device: str | None,
    num_samples_option: str = "eval.num_samples",
) -> tuple[dict[str, Any], Path]:
    """Evaluate ``ckpt`` and write ``result.json`` (only when every metric was computed)."""
    from harness.artifacts import write_result
    from harness.cli.fid_ref import compute_and_record
    from harness.config.run import run_id
    from harness.eval.commands import resolve_device, stage_key
    from harness.eval.driver import evaluate_checkpoint
    from harness.paths import results_root, stage_dir

    started = time.time()
    run = _run_config(ckpt, run_dir)
    if reference is None:
        _, reference_dir = compute_and_record(run.data, cfg, device=device)
    else:
        reference_dir = Path(reference)
    key = stage_key(
        "eval", run_id=run_id(run), step=step, eval=cfg.to_dict(), reference=str(reference_dir)
    )
    directory = Path(out) if out else stage_dir(results_root(), "eval", key)
    payload = evaluate_checkpoint(
        ckpt,
        cfg,
        directory,
        reference_dir=reference_dir,
        step=step,
        device=resolve_device(device),
        expect_model=run.model,
        num_samples_option=num_samples_option,
    )
    config = {
        "eval": cfg.to_dict(),
        "checkpoint": str(ckpt),
        "step": step,
        "reference_dir": str(reference_dir),
    }
    write_result(
        directory, stage="eval", key=key, config=config, payload=payload, started_at=started
    )
    return payload, directory


def _run_config(ckpt: Path, run_dir: Path | None) -> Any:
    """The run's config: ``run.json`` of the run directory, else the one stored in the checkpoint."""
    import json

    from harness.config.run import RunConfig
    from harness.train.checkpoint import load_checkpoint, run_from_checkpoint

    if run_dir is not None and (run_dir / "run.json").is_file():
        try:
            return RunConfig.model_validate(json.loads((run_dir / "run.json").read_text())["run"])
        except (OSError, ValueError, KeyError) as exc:
            raise ArtifactError(f"{run_dir / 'run.json'}: unreadable run config: {exc}") from exc
    return run_from_checkpoint(load_checkpoint(ckpt), ckpt)


COMMAND = Command(
    name="eval",
    help="sample a checkpoint and compute FID / IS / KID / PR (+ FD-DINOv2), resumable",
    examples="""
        harness eval results/stages/train/<key> --num-samples 10000
        harness eval run/checkpoints/step_0100000.pt --config sweeps/irepa-sitxl-100k.yaml
        harness eval RUN_DIR --step 400000 --reference results/stages/fid_ref/<key>
        harness eval RUN_DIR --set eval.sampler.num_steps=50 --set eval.sampler.cfg_scale=1.8
    """,
    add_arguments=add_arguments,
    run=run,
    order=46,
)
