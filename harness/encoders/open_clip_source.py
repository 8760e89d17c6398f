"""``source: open_clip``: the image tower of an open_clip model.

Entry fields: ``model_id`` (open_clip model name, e.g. ``ViT-L-14``), ``pretrained`` (tag, e.g.
``openai``; null = random by design), ``params``: ``force_quick_gelu`` (the OpenAI weights use
QuickGELU), ``vision_cfg`` / ``text_cfg`` (partial overrides of the model config, e.g. fewer
layers). The class-token position embedding is resampled (bicubic) when the requested grid is
not the model's native one. Tokens are the patch tokens of block ``layer`` (``ln_post`` when
``final_norm``, which REPA's CLIP loader does not apply).
"""

from __future__ import annotations

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
from harness.encoders.weights import hf_file, url_file, weights_digest
from harness.errors import WeightsError


class OpenClipBackbone(Backbone):
    def __init__(self, visual: nn.Module, spec: EncoderSpec, weights_id: str) -> None:
        super().__init__()
        self.visual = visual
        self.layer = spec.layer
        self.final_norm = spec.final_norm
        self.weights_id = weights_id
        num_prefix_check(spec, 1)  # open_clip ViTs always have one class token

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.visual.forward_intermediates(
            x,
            indices=[self.layer] if self.layer >= 0 else 1,
            stop_early=True,
            normalize_intermediates=self.final_norm,
            intermediates_only=True,
            output_fmt="NCHW",
            output_extra_tokens=True,
        )
        tokens = out["image_intermediates"][-1].permute(0, 2, 3, 1)  # (B, h, w, D)
        return tokens, out["image_intermediates_prefix"][-1][:, 0]


def _model_kwargs(spec: EncoderSpec) -> dict[str, Any]:
    import open_clip

    params = dict(spec.params)
    kwargs: dict[str, Any] = {"force_quick_gelu": bool(params.pop("force_quick_gelu", False))}
    config = open_clip.get_model_config(spec.model_id)
    if config is None:
        raise EncoderError(f"encoder {spec.name!r}: open_clip has no model {spec.model_id!r}")
    for tower in ("vision_cfg", "text_cfg"):
        if tower in params:
            kwargs[tower] = {**config[tower], **params.pop(tower)}
    if params:
        raise EncoderError(
            f"encoder {spec.name!r}: unknown open_clip params {sorted(params)}; allowed: "
            "force_quick_gelu, vision_cfg, text_cfg"
        )
    return kwargs


def resolve_weights(spec: EncoderSpec, *, download: bool | None = None) -> tuple[str, str]:
    """(local checkpoint path, identity) of an open_clip pretrained tag (cache or download;
    ``download`` as for :func:`harness.encoders.weights.hf_file`)."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(spec.model_id, spec.pretrained)
    if not cfg:
        raise EncoderError(
            f"encoder {spec.name!r}: open_clip has no pretrained tag {spec.pretrained!r} for "
            f"{spec.model_id!r}",
            hint=f"tags: {open_clip.list_pretrained_tags_by_model(spec.model_id)}",
        )
    hub = cfg.get("hf_hub")
    if hub:  # "org/repo/" or "org/repo/filename"
        parts = hub.strip("/").split("/")
        repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
        names = (
            [filename]
            if filename
            else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        )
        path = hf_file(repo_id, names, spec.revision, spec.name, download=download)
    elif cfg.get("url"):
        path = url_file(cfg["url"], spec.name, download=download)
    else:
        raise WeightsError(
            f"encoder {spec.name!r}: open_clip tag {spec.pretrained!r} has no location"
        )
    return str(path), f"open_clip:{spec.model_id}/{spec.pretrained}:{weights_digest(path)}"


def build(spec: EncoderSpec, request: BuildRequest) -> Backbone:
    import open_clip

    kwargs = _model_kwargs(spec)
    if request.random_weights or spec.pretrained is None:
        with seeded_init():
            model = open_clip.create_model(spec.model_id, pretrained=None, **kwargs)
        weights_id = "random-init:seed0" + (
            " (random by design)" if spec.pretrained is None else ""
        )
    else:
        path, weights_id = resolve_weights(spec)
        model = open_clip.create_model(spec.model_id, pretrained=path, **kwargs)
    visual = model.visual
    del model
    _resample_positions(visual, request.grid)
    return OpenClipBackbone(visual, spec, weights_id)


def _resample_positions(visual: nn.Module, grid: tuple[int, int]) -> None:
    from timm.layers import resample_abs_pos_embed

    if tuple(visual.grid_size) == tuple(grid):
        return
    pos = visual.positional_embedding.data[None]  # (1, 1 + h*w, D)
    new = resample_abs_pos_embed(
        pos, new_size=list(grid), old_size=list(visual.grid_size), num_prefix_tokens=1
    )
    visual.positional_embedding = nn.Parameter(new[0], requires_grad=False)
    visual.grid_size = tuple(grid)
    visual.image_size = (grid[0] * visual.patch_size[0], grid[1] * visual.patch_size[1])


def fetch(spec: EncoderSpec) -> str:
    if spec.pretrained is None:
        return "random-init (nothing to fetch)"
    return resolve_weights(spec, download=True)[1]


def locate(spec: EncoderSpec) -> str:
    """The cached weights file (no download); MissingWeights when it is not there."""
    if spec.pretrained is None:
        return "random-init (by design)"
    return resolve_weights(spec, download=False)[0]
