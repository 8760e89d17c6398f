"""``source: torch_hub``: a ``torch.hub`` entry point (the original code of a model), whose
weights are loaded into the equivalent timm architecture so the forward path is timm's.

Entry fields: ``hub_repo`` ("owner/repo" on GitHub, pinned by ``revision``, or a local directory
holding ``hubconf.py``), ``model_id`` (the entry point), ``arch`` (timm architecture), optional
``checkpoint`` (a weights file passed to the entry point as ``params.checkpoint_kwarg``, default
``weights``), and ``params`` as for ``source: checkpoint`` plus ``hub_kwargs`` (entry-point
kwargs). Offline, the repository must already be in ``$TORCH_HOME/hub`` (``harness encoders
fetch`` puts it there) and the entry point's weights in ``$TORCH_HOME/hub/checkpoints``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from harness.config.encoders import EncoderSpec
from harness.encoders.base import Backbone, BuildRequest
from harness.encoders.checkpoint_source import build_arch, load_into, remap_state_dict
from harness.encoders.network import note_failure, offline_reason
from harness.encoders.timm_source import TimmBackbone
from harness.encoders.weights import MissingWeights, checkpoint_path, fetch_hint, local_file
from harness.errors import WeightsError


def hub_location(spec: EncoderSpec) -> tuple[str, str]:
    """(repo_or_dir, source) for ``torch.hub.load``."""
    local = Path(spec.hub_repo).expanduser()
    if local.is_dir():
        return str(local), "local"
    repo = spec.hub_repo if spec.revision is None else f"{spec.hub_repo}:{spec.revision}"
    return repo, "github"


GITHUB = "https://github.com"


def cached_repo(spec: EncoderSpec) -> Path | None:
    """Where torch.hub keeps the entry's GitHub repository (None for a local directory)."""
    import torch

    repo, source = hub_location(spec)
    if source != "github":
        return None
    owner_name, _, ref = repo.partition(":")
    return Path(torch.hub.get_dir()) / "_".join([*owner_name.split("/"), ref or "main"])


def locate(spec: EncoderSpec, *, download: bool | None = False) -> str:
    """The cached repository and checkpoint file (``download`` as for ``hf_file``: the repo is
    only checked for being downloadable; ``torch.hub.load`` fetches it).

    Raises:
        MissingWeights: not cached and no download possible / allowed. Weights that the entry
            point itself downloads are known only when it runs.
    """
    repo = cached_repo(spec)
    if repo is not None and not repo.is_dir():
        reason = None if download is False else offline_reason(GITHUB)
        if reason or download is False:
            raise MissingWeights(
                spec.name, f"torch.hub repository {spec.hub_repo}", repo.parent, reason=reason
            )
    if spec.checkpoint:
        local_file(spec.checkpoint, spec.name, spec.url)
    return str(repo or hub_location(spec)[0])


def load_hub_model(spec: EncoderSpec, *, download: bool | None) -> nn.Module:
    import torch

    locate(spec, download=download)
    repo, source = hub_location(spec)
    kwargs: dict[str, Any] = dict(spec.params.get("hub_kwargs", {}))
    if spec.checkpoint:
        kwargs[spec.params.get("checkpoint_kwarg", "weights")] = str(
            checkpoint_path(spec.checkpoint)
        )
    try:
        return torch.hub.load(
            repo, spec.model_id, source=source, trust_repo=True, skip_validation=True, **kwargs
        )
    except (OSError, RuntimeError) as exc:  # network, missing weights file, bad ref
        reason = note_failure(GITHUB, exc)
        if reason:
            raise MissingWeights(
                spec.name,
                f"torch.hub entry point {repo}:{spec.model_id} (and the weights it downloads)",
                torch.hub.get_dir(),
                reason=reason,
            ) from exc
        raise WeightsError(
            f"encoder {spec.name!r}: torch.hub.load({repo!r}, {spec.model_id!r}) failed: {exc}",
            hint=fetch_hint(spec.name),
        ) from exc


def build(spec: EncoderSpec, request: BuildRequest) -> Backbone:
    model = build_arch(spec, request)
    if request.random_weights:
        return TimmBackbone(model, spec, "random-init:seed0")
    hub_model = load_hub_model(spec, download=None)
    load_into(model, remap_state_dict(hub_model.state_dict(), spec.params), spec)
    repo, _ = hub_location(spec)
    return TimmBackbone(model, spec, f"torch_hub:{repo}:{spec.model_id}")


def fetch(spec: EncoderSpec) -> str:
    load_hub_model(spec, download=True)
    return f"torch_hub:{hub_location(spec)[0]}:{spec.model_id}"
