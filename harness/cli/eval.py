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
from harness.cli.sections import add_common_options
from harness.errors import ArtifactError, StageError

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
    from harness.cli.sections import load_sections
    from harness.config.eval import EvalConfig

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
    """Evaluate ``ckpt`` and write ``result.json`` (only when every metric was computed); an
    evaluation already done under the same key (by this command or a sweep) is returned."""
    from harness.artifacts import is_done, read_result, write_result
    from harness.cli.fid_ref import compute_and_record
    from harness.cli.sections import resolve_device
    from harness.eval.driver import evaluate_checkpoint
    from harness.paths import results_root, stage_dir
    from harness.stages import STAGES
    from harness.stages import eval as evaluation

    started = time.time()
    run = _run_config(ckpt, run_dir)
    if reference is None:
        _, reference_dir = compute_and_record(run.data, cfg, device=device)
    else:
        reference_dir = Path(reference)
    # the sweep's eval instance: its config, the train run's and the reference's keys
    config = evaluation.instance(run, step, cfg)
    needs = [_train_key(ckpt, run_dir), _reference_key(reference_dir)]
    key = STAGES.get("eval").key(config, needs)
    directory = Path(out) if out else stage_dir(results_root(), "eval", key)
    if is_done(directory):  # evaluated before, by this command or by a sweep
        return read_result(directory)["payload"], directory  # type: ignore[index]
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
    config = {**config, "checkpoint": str(ckpt), "reference_dir": str(reference_dir)}
    write_result(
        directory, stage="eval", key=key, config=config, payload=payload, started_at=started
    )
    return payload, directory


def _train_key(ckpt: Path, run_dir: Path | None) -> str:
    """The key of the train instance that wrote ``ckpt`` (its run directory's ``result.json``
    or ``spec.json``), else the checkpoint file's content."""
    from harness.io import file_hash

    key = _recorded_key(run_dir, "train") if run_dir is not None else None
    return key or f"checkpoint:{file_hash(ckpt, 64)}"


def _reference_key(reference_dir: Path) -> str:
    """The key of a ``fid_ref`` instance directory, else the statistics' own reference key."""
    from harness.eval.reference import load_reference

    return _recorded_key(reference_dir, "fid_ref") or (
        f"reference:{load_reference(reference_dir).key}"
    )


def _recorded_key(directory: Path, stage: str) -> str | None:
    """The instance key recorded in ``directory`` (``result.json``, else ``spec.json``)."""
    from harness.artifacts import read_result
    from harness.errors import HarnessError
    from harness.launch.runner import read_spec

    for read in (read_result, read_spec):
        try:
            record = read(directory)
        except HarnessError:  # absent or unreadable: the next record, or None
            continue
        if record and record.get("stage") == stage and record.get("key"):
            return str(record["key"])
    return None


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
