"""``source: timm``: any ``timm`` model; weights through timm's pretrained tags (HF hub cache or
URL files in ``$TORCH_HOME/hub/checkpoints``).

Entry fields: ``model_id`` (timm architecture), ``pretrained`` (tag; null = random by design),
``revision`` (pins the HF repo commit), ``params`` (extra ``timm.create_model`` kwargs, e.g.
``depth``; ``img_size: null`` for models that take any input size, like SAM2's Hiera).
Position embeddings are resampled to the requested grid at build time (``img_size``); tokens
come from ``forward_intermediates`` (block ``layer``, the final norm when ``final_norm``). For a
CNN (e.g. EfficientNet) ``layer`` indexes the stages of ``model.feature_info`` (strides 2, 4, 8,
16, 32: ``layer: 3`` is stride 16) and the stage's (B, C, h, w) map becomes the (B, h, w, C)
tokens; CNN entries set ``final_norm: false`` (their intermediates have no norm) and
``img_size: null`` (they take any input size).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.config.encoders import EncoderSpec
from harness.encoders.base import (
    Backbone,
    BuildRequest,
    EncoderError,
    num_prefix_check,
    seeded_init,
)
from harness.encoders.weights import TIMM_HUB_FILES, hf_commit, hf_file, url_file, weights_digest
from harness.errors import WeightsError


class TimmBackbone(Backbone):
    """Tokens of a timm model via ``forward_intermediates``."""

    def __init__(self, model: nn.Module, spec: EncoderSpec, weights_id: str) -> None:
        super().__init__()
        self.model = model
        self.layer = spec.layer
        self.final_norm = spec.final_norm
        self.weights_id = weights_id
        self.num_prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
        self.has_cls = getattr(model, "cls_token", None) is not None
        num_prefix_check(spec, self.num_prefix)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        kwargs: dict[str, Any] = {
            "indices": [self.layer] if self.layer >= 0 else 1,
            "stop_early": True,
            "intermediates_only": True,
            "output_fmt": "NCHW",
        }
        if self.final_norm:
            kwargs["norm"] = True
        if self.num_prefix:
            kwargs["return_prefix_tokens"] = True
        out = self.model.forward_intermediates(x, **kwargs)[-1]
        spatial, prefix = out if self.num_prefix else (out, None)
        tokens = spatial.permute(0, 2, 3, 1)  # (B, h, w, D)
        cls = prefix[:, 0] if prefix is not None and self.has_cls else None
        return tokens, cls


def timm_name(spec: EncoderSpec) -> str:
    return spec.model_id if spec.pretrained is None else f"{spec.model_id}.{spec.pretrained}"


def create_kwargs(params: dict[str, Any], request: BuildRequest) -> dict[str, Any]:
    """``timm.create_model`` kwargs: no classifier, the requested input size, entry params."""
    kwargs: dict[str, Any] = {"num_classes": 0, "img_size": request.input_size}
    kwargs.update(params)
    if kwargs.get("img_size", 0) is None:
        kwargs.pop("img_size")
    return kwargs


def build(spec: EncoderSpec, request: BuildRequest) -> Backbone:
    import timm

    name = timm_name(spec)
    kwargs = create_kwargs(spec.params, request)
    if request.random_weights or spec.pretrained is None:
        with seeded_init():
            model = _create(timm, name, spec, pretrained=False, **kwargs)
        why = " (random by design)" if spec.pretrained is None else ""
        return TimmBackbone(model, spec, f"random-init:seed0{why}")
    path, weights_id = resolve_weights(spec)
    model = _create(
        timm, name, spec, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs
    )
    return TimmBackbone(model, spec, weights_id)


def _create(timm: Any, name: str, spec: EncoderSpec, **kwargs: Any) -> nn.Module:
    try:
        return timm.create_model(name, **kwargs)
    except RuntimeError as exc:
        if kwargs.get("pretrained") and ("size mismatch" in str(exc) or "Missing key" in str(exc)):
            raise WeightsError(
                f"encoder {spec.name!r}: timm could not load the weights into {name}: {exc}"
            ) from exc
        raise
    except (TypeError, ValueError) as exc:
        raise EncoderError(
            f"encoder {spec.name!r}: timm.create_model({name!r}, ...) rejected the entry's "
            f"settings: {exc}",
            hint="check model_id, pretrained and params in encoders.yaml",
        ) from exc


def resolve_weights(spec: EncoderSpec, *, download: bool | None = None) -> tuple[Path, str]:
    """The local weights file of a pretrained timm entry and its identity string (``download``
    as for :func:`harness.encoders.weights.hf_file`)."""
    import timm

    name = timm_name(spec)
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        raise EncoderError(
            f"encoder {spec.name!r}: timm has no pretrained config {name!r}",
            hint="list the tags with timm.list_pretrained('<arch>*')",
        )
    if spec.hf_repo and spec.hf_repo != cfg.hf_hub_id:
        raise EncoderError(
            f"encoder {spec.name!r}: hf_repo {spec.hf_repo!r} is not where timm's {name!r} "
            f"weights are ({cfg.hf_hub_id or cfg.url})",
            hint=f"set hf_repo: {cfg.hf_hub_id}" if cfg.hf_hub_id else "remove hf_repo",
        )
    if cfg.hf_hub_id:
        files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else []
        files += TIMM_HUB_FILES
        path = hf_file(
            cfg.hf_hub_id, list(dict.fromkeys(files)), spec.revision, spec.name, download=download
        )
        commit = hf_commit(path) or spec.revision or "main"
        return path, f"timm:{name}@{commit}:{weights_digest(path)}"
    if cfg.url:
        path = url_file(cfg.url, spec.name, download=download)
        return path, f"timm:{name}:{path.name}:{weights_digest(path)}"
    raise WeightsError(f"encoder {spec.name!r}: timm config {name!r} has no weights location")


def fetch(spec: EncoderSpec) -> str:
    """Download the entry's weights into the caches; returns the weights identity."""
    if spec.pretrained is None:
        return "random-init (nothing to fetch)"
    return resolve_weights(spec, download=True)[1]


def locate(spec: EncoderSpec) -> str:
    """The cached weights file (no download); MissingWeights when it is not there."""
    if spec.pretrained is None:
        return "random-init (by design)"
    return str(resolve_weights(spec, download=False)[0])
