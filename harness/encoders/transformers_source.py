"""``source: transformers``: a Hugging Face ``transformers`` vision model.

Entry fields: ``model_id`` (HF repo), ``revision`` (pinned commit), ``params.config`` (the
model's config.json fields incl. ``model_type``, embedded so that a random-weights model builds
offline; the real path reads the repo's own config). Tokens are ``hidden_states`` of block
``layer`` (the model's final ``layernorm`` when ``final_norm``; ``last_hidden_state`` already
has it), prefix tokens (CLS, registers) dropped. Position embeddings are interpolated to the
input size (Dinov2 always does; others get ``interpolate_pos_encoding=True``).
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import nn

from harness.config.encoders import EncoderSpec
from harness.encoders.base import Backbone, BuildRequest, EncoderError, seeded_init
from harness.encoders.network import offline_reason
from harness.encoders.weights import hf_cache_dir, hf_file
from harness.errors import WeightsError

# the weights file of a transformers repo (the first present counts; shards have an index)
WEIGHT_FILES = ["model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"]


class TransformersBackbone(Backbone):
    def __init__(self, model: nn.Module, spec: EncoderSpec, weights_id: str) -> None:
        super().__init__()
        self.model = getattr(model, "vision_model", model)
        self.layer = spec.layer
        self.final_norm = spec.final_norm
        self.num_prefix = spec.num_prefix_tokens
        self.weights_id = weights_id
        self.norm = getattr(self.model, "layernorm", None) or getattr(
            self.model, "post_layernorm", None
        )
        params = inspect.signature(self.model.forward).parameters
        self.extra = (
            {"interpolate_pos_encoding": True} if "interpolate_pos_encoding" in params else {}
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        want_hidden = self.layer >= 0 or not self.final_norm
        out = self.model(pixel_values=x, output_hidden_states=want_hidden, **self.extra)
        if want_hidden:
            seq = out.hidden_states[self.layer + 1 if self.layer >= 0 else -1]
            if self.final_norm and self.norm is not None:
                seq = self.norm(seq)
        else:
            seq = out.last_hidden_state  # (B, P + h*w, D), final norm applied
        patches = seq[:, self.num_prefix :]
        b, n, d = patches.shape
        h, w = x.shape[-2] // self._patch, x.shape[-1] // self._patch
        if h * w != n:
            side = math.isqrt(n)
            h, w = (side, side) if side * side == n else (h, w)
        if h * w != n:
            raise EncoderError(
                f"{n} patch tokens do not form the expected {h}x{w} grid; check "
                "num_prefix_tokens in encoders.yaml"
            )
        cls = seq[:, 0] if self.num_prefix else None
        return patches.reshape(b, h, w, d), cls

    @property
    def _patch(self) -> int:
        size = getattr(self.model.config, "patch_size", 16)
        return size[0] if isinstance(size, list | tuple) else int(size)


def build(spec: EncoderSpec, request: BuildRequest) -> Backbone:
    from transformers import AutoConfig, AutoModel

    if request.random_weights:
        fields = dict(spec.params["config"])
        model_type = fields.pop("model_type", None)
        if not model_type:
            raise EncoderError(f"encoder {spec.name!r}: params.config needs model_type")
        config = AutoConfig.for_model(model_type, **fields)
        with seeded_init():
            model = AutoModel.from_config(config)
        return TransformersBackbone(model.eval(), spec, "random-init:seed0")
    locate(spec, download=None)  # cached, or downloadable here: else one clear MissingWeights
    try:
        model = AutoModel.from_pretrained(
            spec.model_id, revision=spec.revision, local_files_only=offline_reason() is not None
        )
    except OSError as exc:
        raise WeightsError(
            f"encoder {spec.name!r}: {spec.model_id}@{spec.revision or 'main'} could not be "
            f"loaded from {hf_cache_dir()}: {str(exc).splitlines()[0]}",
            hint=f"refill it: `harness encoders fetch {spec.name}` on a machine with internet",
        ) from exc
    commit = getattr(model.config, "_commit_hash", None) or spec.revision or "main"
    return TransformersBackbone(model.eval(), spec, f"hf:{spec.model_id}@{commit[:12]}")


def locate(spec: EncoderSpec, *, download: bool | None = False) -> str:
    """The cached config and weights of the repo (``download`` as for ``hf_file``)."""
    hf_file(spec.model_id, ["config.json"], spec.revision, spec.name, download=download)
    return str(hf_file(spec.model_id, WEIGHT_FILES, spec.revision, spec.name, download=download))


def fetch(spec: EncoderSpec) -> str:
    from huggingface_hub import snapshot_download

    reason = offline_reason()
    if reason:  # already cached counts as fetched; else one clear "needs network"
        path = locate(spec, download=True)  # offline: the cache, or MissingWeights(reason)
        return f"hf:{spec.model_id} (already cached: {path}; not refreshed, {reason})"
    try:
        path = snapshot_download(spec.model_id, revision=spec.revision)
    except Exception as exc:  # network (httpx) and hub errors
        raise WeightsError(
            f"encoder {spec.name!r}: could not download {spec.model_id}: {exc}",
            hint="check the network / HF token (gated models need `hf auth login`)",
        ) from exc
    return f"hf:{spec.model_id}@{path.rstrip('/').split('/')[-1][:12]}"
