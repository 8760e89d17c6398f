"""Per-channel latent statistics (``train.latent_stats``): the file format and its reader.

The released iREPA LDM code (and REPA-E) normalise SD-VAE latents per channel instead of the
single 0.18215 factor: the SiT sees ``z_sit = (z - bias_c) * scale_c`` and samples are decoded
with ``z = z_sit / scale_c + bias_c``. The statistics come from a small file the user provides,
in one of two forms, each array of length C (the latent channels, 4 for the SD-VAE):

* ``mean`` and ``std``: ``z_sit = (z - mean_c) / std_c`` (so ``bias = mean``, ``scale = 1/std``);
* ``scale`` and ``bias``: ``z_sit = (z - bias_c) * scale_c`` (the released ``latents_scale`` /
  ``latents_bias``, flattened).

File types: ``.npz`` (``numpy.savez``; read with ``allow_pickle=False``) or ``.json`` (one
object with the two lists). Pickled files (``torch.save`` ``.pt``) are never read: convert them
once, e.g. ``np.savez("stats.npz", scale=t["latents_scale"].flatten().numpy(), bias=...)``.

This module imports numpy only (no torch), so the pre-submit check can read the file.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from harness.errors import DataError

PAIRS = (("mean", "std"), ("scale", "bias"))
FORMAT_HINT = (
    "train.latent_stats is a .npz (numpy.savez) or .json file holding either `mean` and `std` "
    "(z_sit = (z - mean) / std) or `scale` and `bias` (z_sit = (z - bias) * scale), each an "
    "array of one number per latent channel"
)


def read_latent_stats(path: str | Path, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel ``(scale, bias)`` (float64, shape (C,)) of the stats file ``path``.

    Args:
        path: a ``.npz`` or ``.json`` file in the module docstring's format.
        channels: C, the latent channels the run expects (``model.in_channels``).

    Raises:
        DataError: the file is missing or unreadable, has no complete key pair, an array has the
            wrong number of channels, or a value is not finite (or std/scale not positive).
    """
    path = Path(path).expanduser()
    where = f"train.latent_stats {path}"
    if not path.is_file():
        raise DataError(f"{where} does not exist", hint=FORMAT_HINT)
    arrays = _load(path, where)
    pairs = [pair for pair in PAIRS if all(k in arrays for k in pair)]
    if len(pairs) != 1:
        found = ", ".join(sorted(arrays)) or "none"
        problem = "both" if pairs else "neither"
        raise DataError(
            f"{where}: holds {problem} of the key pairs (mean, std) and (scale, bias) "
            f"(keys found: {found})",
            hint=FORMAT_HINT,
        )
    values = {}
    for key in pairs[0]:
        try:
            value = np.asarray(arrays[key], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise DataError(
                f"{where}: key {key!r} is not numeric: {exc}", hint=FORMAT_HINT
            ) from None
        if value.size != channels:
            raise DataError(
                f"{where}: key {key!r} has shape {tuple(value.shape)}, expected ({channels},) "
                f"(one value per latent channel)",
                hint=FORMAT_HINT,
            )
        value = value.reshape(-1)
        if not np.all(np.isfinite(value)):
            raise DataError(f"{where}: key {key!r} has non-finite values {value.tolist()}")
        values[key] = value
    positive = "std" if pairs[0] == ("mean", "std") else "scale"
    if not np.all(values[positive] > 0):
        raise DataError(
            f"{where}: key {positive!r} must be positive, got {values[positive].tolist()}"
        )
    if positive == "std":
        return 1.0 / values["std"], values["mean"]
    return values["scale"], values["bias"]


def _load(path: Path, where: str) -> dict[str, object]:
    try:
        if path.suffix == ".json":
            doc = json.loads(path.read_text())
            if not isinstance(doc, dict):
                raise ValueError("the file is not a JSON object")
            return doc
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as stats:
                return {key: stats[key] for key in stats.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{where}: unreadable: {exc}", hint=FORMAT_HINT) from exc
    raise DataError(
        f"{where}: unsupported file type {path.suffix!r} (.npz or .json)", hint=FORMAT_HINT
    )
