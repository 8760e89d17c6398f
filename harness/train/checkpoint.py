"""Training checkpoints: atomic writes, validity checks, retention, and loading for sampling.

``<out>/checkpoints/step_0000100.pt`` is a torch zip archive holding only tensors, numbers,
strings, ``None``, lists, tuples and dicts (format 2)::

    step, data_position, model, ema, align (projectors), optimizer, scaler,
    rng {torch, cuda, numpy, python} (all as tensors, see :func:`encode_rng`),
    run (the resolved RunConfig as JSON text), run_id, format

so it loads with ``torch.load(weights_only=True)``, which never runs code from the file. A file
that needs full unpickling (format 1, written by earlier harness versions with numpy/python RNG
state objects, or a file planted in a shared results tree) is refused with
:class:`UntrustedCheckpointError` unless the user trusts it: ``--trust-checkpoint`` on ``harness
sample`` / ``eval`` / ``probe`` / ``train`` (``$HARNESS_TRUST_CHECKPOINT=1``), or converts it
once with ``harness checkpoint convert PATH`` (:func:`convert_checkpoint`).

It is written to a temporary file, fsynced and renamed (``harness.io.atomic_write``), so a crash
or SIGKILL leaves the previous checkpoints untouched. A checkpoint counts as valid when the zip
archive passes its CRC check (catches truncation and bit rot) and loads with the expected keys;
resume picks the newest valid one.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.config.model import ModelConfig
from harness.config.run import RunConfig
from harness.errors import ArtifactError
from harness.io import atomic_write
from harness.logs import event, get_logger

log = get_logger(__name__)

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_FORMAT = 2
READABLE_FORMATS = (1, 2)  # 1: pickled RNG state objects and the run as a dict (needs trust)
REQUIRED_KEYS = ("format", "step", "model", "ema", "run")
ENV_TRUST = (
    "HARNESS_TRUST_CHECKPOINT"  # "1": load checkpoints that need pickle (--trust-checkpoint)
)
_NAME = re.compile(r"^step_(\d{7,})\.pt$")


class UntrustedCheckpointError(ArtifactError):
    """A checkpoint needs pickle to load and the user has not said that they trust it."""


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
    """Write ``state`` atomically (temporary file + fsync + rename).

    ``state`` must hold only what ``torch.load(weights_only=True)`` reads back (tensors, numbers,
    strings, None, lists, tuples, dicts): see :func:`encode_rng` and :func:`encode_run`.
    """
    path = Path(path)
    with atomic_write(path) as handle:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, handle)
    return path


def trust_from_env() -> bool:
    """Whether ``$HARNESS_TRUST_CHECKPOINT`` (set by ``--trust-checkpoint``) is on."""
    return os.environ.get(ENV_TRUST, "").strip().lower() in {"1", "true", "yes"}


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", *, trust: bool | None = None
) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; raises ArtifactError when it is missing,
    corrupt or not ours.

    Args:
        trust: also unpickle a file that ``weights_only`` refuses (default:
            :func:`trust_from_env`). Unpickling runs code from the file.

    Raises:
        UntrustedCheckpointError: the file needs pickle and ``trust`` is off.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"checkpoint {path} does not exist")
    if not is_valid(path):
        raise ArtifactError(
            f"checkpoint {path} is truncated or corrupt (zip CRC check failed)",
            hint="delete it; training resumes from the previous valid checkpoint",
        )
    trust = trust_from_env() if trust is None else trust
    try:
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as exc:
            if not trust:
                raise _untrusted(path, exc) from None
            event(log, "checkpoint.unpickled", level=logging.WARNING, path=str(path))
            state = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise ArtifactError(f"checkpoint {path} cannot be loaded: {exc}") from exc
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ArtifactError(f"{path} is not a harness training checkpoint (missing {missing})")
    if state["format"] not in READABLE_FORMATS:
        raise ArtifactError(
            f"{path}: checkpoint format {state['format']} (this harness reads "
            f"{', '.join(map(str, READABLE_FORMATS))})"
        )
    return state


def _untrusted(path: Path, exc: pickle.UnpicklingError) -> UntrustedCheckpointError:
    """The refusal of a checkpoint that needs pickle, with what torch objected to."""
    text = str(exc)
    found = re.search(r"Unsupported (?:global|operand)[^\n]*", text)
    reason = found.group(0).split(" was not ")[0] if found else text.strip().splitlines()[0]
    return UntrustedCheckpointError(
        f"checkpoint {path} needs pickle to load ({reason}); unpickling a file runs code "
        "from it as you, so harness refuses",
        hint="if you wrote it (checkpoints of harness before format 2 need this), convert it "
        f"once: harness checkpoint convert {path}; or pass --trust-checkpoint. Never do either "
        "for a file of unknown origin",
    )


def convert_checkpoint(path: str | Path) -> bool:
    """Rewrite a trusted older checkpoint in place (atomically) as format 2.

    Unpickles ``path``: only for files the user trusts. Returns False when it was already a
    format-2 checkpoint that loads without pickle (left untouched).

    Raises:
        ArtifactError: missing, corrupt or not a harness checkpoint.
    """
    try:
        load_checkpoint(path, trust=False)
        return False
    except UntrustedCheckpointError:
        pass
    state = load_checkpoint(path, trust=True)
    state.pop("format")
    if "rng" in state:
        state["rng"] = encode_rng(state["rng"])
    state["run"] = encode_run(state["run"])
    save_checkpoint(path, state)
    load_checkpoint(path, trust=False)  # it now loads without pickle, or this raises
    event(log, "checkpoint.converted", path=str(path), format=CHECKPOINT_FORMAT)
    return True


# ---------------------------------------------------------------------------------------------
# pickle-free encodings of the run config and the RNG states
# ---------------------------------------------------------------------------------------------
def encode_run(run: dict[str, Any] | str) -> str:
    """The run config as JSON text (already-encoded text passes through)."""
    return run if isinstance(run, str) else json.dumps(run, sort_keys=True)


def decode_run(run: dict[str, Any] | str) -> dict[str, Any]:
    """The run config dict of a checkpoint (format 2: JSON text; format 1: a dict)."""
    return json.loads(run) if isinstance(run, str) else run


def encode_rng(rng: dict[str, Any]) -> dict[str, Any]:
    """RNG states as tensors and plain values: numpy's and python's state tuples become dicts.

    Already-encoded states pass through, so this also converts format-1 checkpoints.
    """
    out = dict(rng)
    if isinstance(rng.get("numpy"), tuple):
        name, key, pos, has_gauss, cached_gaussian = rng["numpy"]
        out["numpy"] = {
            "bit_generator": str(name),
            "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),  # uint32 values, exact
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        }
    if isinstance(rng.get("python"), tuple):
        version, internal, gauss_next = rng["python"]
        out["python"] = {
            "version": int(version),
            "internal": torch.tensor(internal, dtype=torch.int64),  # 624 words < 2**32 + index
            "gauss_next": None if gauss_next is None else float(gauss_next),
        }
    return out


def decode_rng(rng: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`encode_rng`: the tuples ``np.random.set_state`` and
    ``random.setstate`` take (format-1 tuples pass through)."""
    out = dict(rng)
    state = rng.get("numpy")
    if isinstance(state, dict):
        key = state["key"].numpy().astype(np.uint32)
        out["numpy"] = (
            state["bit_generator"],
            key,
            state["pos"],
            state["has_gauss"],
            state["cached_gaussian"],
        )
    state = rng.get("python")
    if isinstance(state, dict):
        internal = tuple(int(v) for v in state["internal"].tolist())
        out["python"] = (state["version"], internal, state["gauss_next"])
    return out


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
        return RunConfig.model_validate(decode_run(state["run"]))
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
