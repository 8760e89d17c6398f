"""Training checkpoints: atomic writes, validity checks, retention, and loading for sampling.

``<out>/checkpoints/step_0000100.pt`` is a torch zip archive holding::

    step, data_position, model, ema, align (projectors), optimizer, scaler,
    rng {torch, cuda, numpy, python}, run (the resolved RunConfig as a dict), format

It is written to a temporary file, fsynced and renamed (``harness.io.atomic_write``), so a crash
or SIGKILL leaves the previous checkpoints untouched. A checkpoint counts as valid when the zip
archive passes its CRC check (catches truncation and bit rot) and loads with the expected keys;
resume picks the newest valid one.
"""

from __future__ import annotations

import logging
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from harness.config.model import ModelConfig
from harness.config.run import RunConfig
from harness.errors import ArtifactError
from harness.io import atomic_write
from harness.logs import event, get_logger

log = get_logger(__name__)

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_FORMAT = 1
REQUIRED_KEYS = ("format", "step", "model", "ema", "run")
_NAME = re.compile(r"^step_(\d{7,})\.pt$")


def checkpoint_path(out_dir: str | Path, step: int) -> Path:
    """``<out_dir>/checkpoints/step_<step:07d>.pt``."""
    return Path(out_dir) / CHECKPOINT_DIR / f"step_{step:07d}.pt"


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """All checkpoint files (valid or not), oldest first."""
    directory = Path(out_dir) / CHECKPOINT_DIR
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def is_valid(path: str | Path) -> bool:
    """True when ``path`` is a complete, uncorrupted torch zip archive (CRC-checked)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest valid checkpoint; truncated or corrupt files are skipped (and logged)."""
    for step, path in reversed(list_checkpoints(out_dir)):
        if is_valid(path):
            return path
        event(log, "checkpoint.skipped_corrupt", level=logging.WARNING, path=str(path), step=step)
    return None


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically (temporary file + fsync + rename)."""
    path = Path(path)
    with atomic_write(path) as handle:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, handle)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint; raises ArtifactError when it is missing, corrupt or not ours."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"checkpoint {path} does not exist")
    if not is_valid(path):
        raise ArtifactError(
            f"checkpoint {path} is truncated or corrupt (zip CRC check failed)",
            hint="delete it; training resumes from the previous valid checkpoint",
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise ArtifactError(f"checkpoint {path} cannot be loaded: {exc}") from exc
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ArtifactError(f"{path} is not a harness training checkpoint (missing {missing})")
    if state["format"] != CHECKPOINT_FORMAT:
        raise ArtifactError(
            f"{path}: checkpoint format {state['format']} (this harness reads {CHECKPOINT_FORMAT})"
        )
    return state


def prune_checkpoints(out_dir: str | Path, keep_last: int, keep_steps: Iterable[int]) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints and those at ``keep_steps``."""
    found = list_checkpoints(out_dir)
    keep = {step for step, _ in found[-keep_last:]} | set(keep_steps)
    removed = []
    for step, path in found:
        if step not in keep:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def run_from_checkpoint(state: dict[str, Any], path: str | Path) -> RunConfig:
    """The RunConfig stored in a checkpoint."""
    try:
        return RunConfig.model_validate(state["run"])
    except ValueError as exc:
        raise ArtifactError(
            f"{path}: its stored run config does not validate with this harness version: {exc}"
        ) from exc


def load_for_sampling(
    ckpt_path: str | Path,
    device: str | torch.device = "cpu",
    *,
    expect_model: ModelConfig | None = None,
) -> tuple[torch.nn.Module, RunConfig]:
    """The EMA SiT (eval mode, on ``device``) and the run config of a training checkpoint.

    Args:
        ckpt_path: a ``step_*.pt`` file.
        device: where to put the model.
        expect_model: when given, the checkpoint's model config must agree with every field of
            it that is set (``None`` fields, e.g. an unresolved input size, are not compared).

    Raises:
        ArtifactError: missing/corrupt file, another model config, or weights that do not fit.
    """
    from harness.models.sit import SiT

    state = load_checkpoint(ckpt_path, map_location="cpu")
    run = run_from_checkpoint(state, ckpt_path)
    if expect_model is not None:
        stored = run.model.to_dict()
        wrong = {
            k: v for k, v in expect_model.to_dict().items() if v is not None and stored[k] != v
        }
        if wrong:
            raise ArtifactError(
                f"checkpoint {ckpt_path} was trained with model {stored}, which differs in "
                f"{sorted(wrong)} from the expected {expect_model.to_dict()}"
            )
    model = SiT.from_config(run.model)
    try:
        model.load_state_dict(state["ema"])
    except RuntimeError as exc:
        raise ArtifactError(
            f"checkpoint {ckpt_path}: EMA weights do not fit {run.model.name}: {exc}"
        ) from exc
    return model.to(device).eval().requires_grad_(False), run
