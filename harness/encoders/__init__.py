"""Vision encoders behind one interface (see ``encoders.yaml`` and ``harness.config.encoders``).

::

    spec = load_catalogue("encoders.yaml").get("dinov2-vit-b")
    enc = create_encoder(spec, grid=(16, 16), device="cuda", dtype=torch.bfloat16)
    out = enc(images_uint8)          # images (B, 3, H, W) uint8, any H, W
    out.tokens                        # (B, 256, 768) float32, row-major 16x16 grid
    out.pooled                        # (B, 768): the CLS token, or the mean of the tokens
    enc.embed_dim, enc.grid, enc.num_params, enc.weights_id

One small module per source (``timm``, ``open_clip``, ``transformers``, ``torch_hub``,
``checkpoint``, ``builtin``, ``inhouse``), each registered lazily in :data:`SOURCES`
(``harness.config.encoders``) with ``build(spec, request)``, ``fetch(spec)`` and ``locate(spec)``. All three find weights through
the same per-source resolution (:mod:`harness.encoders.weights`): ``locate`` never downloads
(the pre-submit check of ``harness sweep``), ``build`` downloads only when the network allows
(probed once, :mod:`harness.encoders.network`), ``fetch`` exists to download.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from harness.config.encoders import SOURCES, EncoderSpec
from harness.encoders.weights import MissingWeights

if TYPE_CHECKING:
    import torch

    from harness.encoders.base import Backbone, BuildRequest, Encoder

# torch-free at import (the offline and pre-submit checks locate weights without torch): the
# model classes come from harness.encoders.base on first use
_FROM_BASE = ("Backbone", "BuildRequest", "Encoder", "EncoderError", "EncoderOutput")


def __getattr__(name: str) -> Any:
    if name in _FROM_BASE:
        from harness.encoders import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "SOURCES",
    "Backbone",
    "BuildRequest",
    "Encoder",
    "EncoderError",
    "EncoderOutput",
    "MissingWeights",
    "create_encoder",
    "fetch_weights",
    "locate_weights",
]


class Source(Protocol):
    """How one ``source:`` value builds encoders and pre-fills caches: the module registered
    under that name in :data:`harness.config.encoders.SOURCES`."""

    def build(self, spec: EncoderSpec, request: BuildRequest) -> Backbone: ...

    def fetch(self, spec: EncoderSpec) -> str: ...

    def locate(self, spec: EncoderSpec) -> str: ...


def create_encoder(
    spec: EncoderSpec,
    *,
    grid: int | tuple[int, int] = (16, 16),
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    random_weights: bool = False,
) -> Encoder:
    """Build the encoder of a catalogue entry, in eval mode, for a token grid.

    Args:
        spec: the catalogue entry.
        grid: token grid (h, w) (or a side) the caller needs; the input is resized to
            grid * patch_size and position embeddings are interpolated to it.
        device: where the model lives.
        dtype: compute dtype (default float32); not float32 means autocast (bf16 on GPUs).
        random_weights: the same architecture with seeded random init and no file access.

    Raises:
        WeightsError: the weights are not in the offline caches (says how to fetch them).
        EncoderError: the entry contradicts the model (prefix tokens, width, bad params).
    """
    import torch

    from harness.encoders.base import BuildRequest, Encoder, EncoderError

    hw = (grid, grid) if isinstance(grid, int) else (int(grid[0]), int(grid[1]))
    if min(hw) < 1:
        raise EncoderError(f"encoder {spec.name!r}: grid {hw} must be positive")
    request = BuildRequest(
        grid=hw,
        input_size=(hw[0] * spec.patch_size, hw[1] * spec.patch_size),
        device=torch.device(device),
        random_weights=random_weights,
    )
    backbone = SOURCES.get(spec.source).build(spec, request)
    backbone.requires_grad_(False)
    encoder = Encoder(spec, backbone, request, dtype or torch.float32).to(request.device)
    return encoder.eval()


def fetch_weights(spec: EncoderSpec) -> str:
    """Download an entry's weights into the caches the jobs read (needs internet).

    Raises:
        MissingWeights: no network / downloads disabled here, and the weights are not cached
            yet (already cached weights are reported, not refreshed).
    """
    return SOURCES.get(spec.source).fetch(spec)


def locate_weights(spec: EncoderSpec) -> str:
    """Where an entry's weights are, from the local caches and files only: no download, no
    network, nothing built (what a job will read).

    Raises:
        MissingWeights: they are not there (names the file, the folder searched, the fill).
        WeightsError / EncoderError: the entry cannot have weights as written.
    """
    return SOURCES.get(spec.source).locate(spec)
