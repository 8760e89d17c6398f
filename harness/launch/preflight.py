"""Checks before anything is submitted: every input the jobs of a plan will read is there.

:func:`check_inputs` looks, without downloading anything, at what the stages about to run need:

* the dataset (``data.root`` with ``train/`` and ``val/`` for folder datasets);
* the reference statistics (the ADM ``.npz`` of ``eval.reference.path``);
* the per-channel latent statistics (``train.latent_stats``, read by training and by the
  evals that decode its samples): present, readable, one value per latent channel;
* the feature extractors' weights (Inception / DINOv2 in the torch.hub cache, or
  ``eval.feature_extractor_weights_path``); the substitute ``harness-cnn`` trains itself;
* the weights of every encoder (HF hub / torch.hub caches, checkpoint files, package files),
  through :func:`harness.encoders.locate_weights`, the same resolution ``harness encoders
  check`` uses. Random-weights sweeps and encoders that need no download (builtin, in-house)
  pass.

All problems are collected; one error lists each with the command or step that fixes it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from harness.config.resources import ENCODER_KINDS
from harness.errors import DataError, HarnessError, MissingInputs
from harness.plan import CPU_STUDY_HINT, Plan, PlannedStage, resolved_data


def check_inputs(plan: Plan, todo: Iterable[PlannedStage] | None = None) -> None:
    """Fail before submitting, naming every missing input and how to provide it.

    Args:
        plan: the plan.
        todo: the stage instances about to be submitted (None = all of the plan).

    Raises:
        HarnessError: the one missing input (its own error: DataError, MissingWeights, ...), or
            :class:`~harness.errors.MissingInputs` listing several.
    """
    from harness.encoders.weights import MissingWeights, missing_report

    stages = list(plan.stages if todo is None else todo)
    kinds = {s.stage for s in stages}
    problems = [
        *_data_problems(plan, kinds),
        *_latent_stats_problems(plan, kinds),
        *_extractor_problems(plan, kinds),
    ]
    weights = []
    for problem in _encoder_problems(stages):
        (weights if isinstance(problem, MissingWeights) else problems).append(problem)
    if len(problems) + len(weights) == 1:
        raise (problems or weights)[0]
    if problems or weights:
        raise MissingInputs(
            f"sweep {plan.sweep.name}: {len(problems) + len(weights)} inputs the jobs need are "
            "missing (nothing was submitted)",
            problems,
            more=missing_report(weights) if weights else None,  # one fetch command for all
        )


def _data_problems(plan: Plan, kinds: set[str]) -> list[HarnessError]:
    sweep = plan.sweep
    data = resolved_data(sweep.data)
    problems: list[HarnessError] = []
    if data.source == "folder" and kinds & {"latents", "fid_ref", "spatial", "probe", "train"}:
        root = Path(data.root or "")
        missing = [sub for sub in ("train", "val") if not (root / sub).is_dir()]
        if missing:
            problems.append(
                DataError(
                    f"sweep {sweep.name}: data.root {root} has no {'/'.join(missing)}/ folder"
                    + (" (the folder does not exist)" if not root.exists() else ""),
                    hint="the paper presets train on ImageNet-1K (layout train/<wnid>/*.JPEG and "
                    "val/<wnid>/*): link it at data/imagenet or pass --set "
                    "data.root=/path/to/imagenet; " + CPU_STUDY_HINT,
                )
            )
    reference = sweep.eval.reference
    if "fid_ref" in kinds and reference.source == "npz":
        path = Path(reference.path or "").expanduser()
        if not path.is_file():
            problems.append(
                DataError(
                    f"sweep {sweep.name}: eval.reference.path {path} does not exist",
                    hint="download the ADM reference batch once (VIRTUAL_imagenet256_labeled.npz "
                    "from openai/guided-diffusion's evaluations README) and set "
                    "eval.reference.path; " + CPU_STUDY_HINT,
                )
            )
    return problems


def _latent_stats_problems(plan: Plan, kinds: set[str]) -> list[HarnessError]:
    """``train.latent_stats`` of the latent-space runs, read as training and eval will read it."""
    if not kinds & {"train", "eval"}:
        return []
    from harness.train.latent_stats import read_latent_stats

    problems: list[HarnessError] = []
    seen: set[tuple[str, int]] = set()
    for stage in plan.stages:
        run = stage.config.get("run") if stage.stage == "train" else None
        if not run or run["model"]["space"] != "latent" or not run["train"]["latent_stats"]:
            continue
        check = (run["train"]["latent_stats"], run["model"]["in_channels"] or 4)
        if check in seen:
            continue
        seen.add(check)
        try:
            read_latent_stats(*check)
        except HarnessError as exc:
            problems.append(exc)
    return problems


def _extractor_problems(plan: Plan, kinds: set[str]) -> list[HarnessError]:
    """Weights of the extractors that ``fid_ref`` / ``eval`` load (as the stages resolve them)."""
    if not kinds & {"fid_ref", "eval"}:
        return []
    from harness.eval.features import resolve_extractor
    from harness.eval.reference import dinov2_extractor

    cfg = plan.sweep.eval
    problems: list[HarnessError] = []
    checks = [lambda: dinov2_extractor(cfg)]
    if cfg.extractor != "harness-cnn":  # the substitute is trained by the fid_ref stage
        checks.insert(
            0,
            lambda: resolve_extractor(
                cfg.extractor,
                weights_path=cfg.feature_extractor_weights_path,
                random_weights=cfg.random_weights_extractor,
            ),
        )
    for check in checks:
        try:
            check()
        except HarnessError as exc:
            problems.append(exc)
    return problems


def _encoder_problems(stages: list[PlannedStage]) -> list[HarnessError]:
    """Each encoder whose stages will load real weights, looked up once in the local caches."""
    from harness.config.encoders import EncoderSpec
    from harness.encoders import locate_weights
    from harness.encoders.weights import locate_cached
    from harness.stages import typed

    problems: list[HarnessError] = []
    seen: set[str] = set()
    for stage in stages:
        spec = stage.config.get("encoder_spec") if stage.stage in ENCODER_KINDS else None
        random = stage.config.get(
            "random_weights", stage.config.get("run", {}).get("random_weights")
        )
        if not spec or random or spec["name"] in seen:
            continue
        seen.add(spec["name"])
        try:
            entry = typed(EncoderSpec, spec)
            if locate_cached(entry) is None:  # only the source's module can tell
                locate_weights(entry)
        except HarnessError as exc:
            problems.append(exc)
    return problems
