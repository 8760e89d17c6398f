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
from harness.encoders.timm_source import TimmBackbone
from harness.encoders.weights import checkpoint_path, fetch_hint, offline
from harness.errors import WeightsError


def hub_location(spec: EncoderSpec) -> tuple[str, str]:
    """(repo_or_dir, source) for ``torch.hub.load``."""
    local = Path(spec.hub_repo).expanduser()
    if local.is_dir():
        return str(local), "local"
    repo = spec.hub_repo if spec.revision is None else f"{spec.hub_repo}:{spec.revision}"
    return repo, "github"


def load_hub_model(spec: EncoderSpec, *, allow_download: bool) -> nn.Module:
    import torch

    repo, source = hub_location(spec)
    if source == "github":
        owner_name, _, ref = repo.partition(":")
        cached = Path(torch.hub.get_dir()) / "_".join([*owner_name.split("/"), ref or "main"])
        if not cached.is_dir() and not allow_download:
            raise WeightsError(
                f"encoder {spec.name!r}: torch.hub repository {repo} is not in {cached.parent} "
                "(offline)",
                hint=fetch_hint(spec.name),
            )
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
        raise WeightsError(
            f"encoder {spec.name!r}: torch.hub.load({repo!r}, {spec.model_id!r}) failed: {exc}",
            hint=fetch_hint(spec.name),
        ) from exc


def build(spec: EncoderSpec, request: BuildRequest) -> Backbone:
    model = build_arch(spec, request)
    if request.random_weights:
        return TimmBackbone(model, spec, "random-init:seed0")
    hub_model = load_hub_model(spec, allow_download=not offline())
    load_into(model, remap_state_dict(hub_model.state_dict(), spec.params), spec)
    repo, _ = hub_location(spec)
    return TimmBackbone(model, spec, f"torch_hub:{repo}:{spec.model_id}")


def fetch(spec: EncoderSpec) -> str:
    load_hub_model(spec, allow_download=True)
    return f"torch_hub:{hub_location(spec)[0]}:{spec.model_id}"
