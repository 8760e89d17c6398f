"""Representation alignment (REPA / iREPA): projector(s), target normalisation, loss.

The methods themselves are declarative (``harness.config.train.METHODS``: which projector,
λ, target normalisation and loss). This module holds the torch pieces they name:

* ``TARGET_NORMS``: ``none`` (REPA) and ``zscore`` (iREPA's spatial normalisation);
* the alignment losses of ``harness.config.train.ALIGN_LOSSES``: ``cosine``
  (:func:`negative_cosine`, negative cosine per token, averaged over tokens);
* :class:`Alignment`: one projector per target encoder, applied to the SiT hidden state after
  block ``encoder_depth``; the loss is averaged over tokens and over target encoders.

Targets are the encoder's patch tokens for the clean images, resized to the SiT token grid when
the grids differ. Every normalisation runs in fp32 (REPA#46: fp16 ``F.normalize`` NaNs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from harness.config.train import ALIGN_LOSSES, METHODS, AlignConfig
from harness.errors import StageError
from harness.models.projectors import build_projector
from harness.registry import Registry

ZSCORE_EPS = 1e-6  # iREPA: x <- (x - γ mean_T x) / (std_T x + 1e-6)

__all__ = [
    "ALIGN_LOSSES",
    "METHODS",
    "TARGET_NORMS",
    "Alignment",
    "TargetEncoder",
    "check_target",
    "cosine_alignment",
    "negative_cosine",
    "resize_tokens",
    "zscore_tokens",
]


@runtime_checkable
class TargetEncoder(Protocol):
    """What training needs from an encoder (``harness.encoders.Encoder`` satisfies it):
    ``enc(uint8 (B,3,H,W)) -> object with .tokens (B,T,D)``, plus ``embed_dim`` and ``grid``."""

    embed_dim: int
    grid: tuple[int, int]

    def __call__(self, images: torch.Tensor) -> object: ...


# ---------------------------------------------------------------------------------------------
# Target normalisations
# ---------------------------------------------------------------------------------------------
def zscore_tokens(x: torch.Tensor, gamma: float = 1.0, eps: float = ZSCORE_EPS) -> torch.Tensor:
    """iREPA spatial normalisation, per image and channel over the tokens (fp32 result).

    ``x <- (x - γ · mean_T(x)) / (std_T(x) + eps)``; std is the unbiased (N-1) estimate, as
    ``torch.std`` in the released code. γ = 1 gives zero mean and unit std over tokens.

    Args:
        x: (B, T, D) tokens.
        gamma: fraction of the spatial mean removed (iREPA default 0.6).
        eps: added to the std.
    """
    x = x.float()
    mean = x.mean(dim=1, keepdim=True)  # (B, 1, D)
    std = x.std(dim=1, keepdim=True)  # (B, 1, D)
    return (x - gamma * mean) / (std + eps)  # (B, T, D)


TARGET_NORMS: Registry[Callable[[torch.Tensor, AlignConfig], torch.Tensor]] = Registry(
    "target normalisation"
)
TARGET_NORMS.register("none", lambda x, cfg: x.float())
TARGET_NORMS.register("zscore", lambda x, cfg: zscore_tokens(x, gamma=cfg.zscore_gamma))


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------
def cosine_alignment(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity over tokens, per sample (B,); fp32 before normalising."""
    pred = F.normalize(pred.float(), dim=-1)  # (B, T, Z)
    target = F.normalize(target.float(), dim=-1)  # (B, T, Z)
    return (pred * target).sum(-1).mean(-1)  # (B,)


def negative_cosine(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The ``cosine`` alignment loss (``ALIGN_LOSSES``): minus the mean cosine, per sample (B,)."""
    return -cosine_alignment(pred, target)


# ---------------------------------------------------------------------------------------------
# Grids
# ---------------------------------------------------------------------------------------------
def check_target(name: str, grid: tuple[int, int], dim: int, sit_grid: tuple[int, int]) -> None:
    """Raise a StageError when encoder tokens on ``grid`` with width ``dim`` cannot serve as
    targets for a SiT with token grid ``sit_grid`` (different aspect ratio, empty grid, dim < 1)."""
    h, w = grid
    if h < 1 or w < 1 or dim < 1:
        raise StageError(f"encoder {name!r}: invalid token grid {grid} / embed_dim {dim}")
    if h * sit_grid[1] != w * sit_grid[0]:
        raise StageError(
            f"encoder {name!r} gives a {h}x{w} token grid, which cannot be resized to the SiT "
            f"token grid {sit_grid[0]}x{sit_grid[1]} (different aspect ratio)",
            hint="build the encoder for the SiT grid (create_encoder(grid=...)) or change "
            "model.input_size / the patch size",
        )


def resize_tokens(
    tokens: torch.Tensor, grid: tuple[int, int], target_grid: tuple[int, int]
) -> torch.Tensor:
    """Bilinearly resize (B, h*w, D) tokens on ``grid`` to ``target_grid`` (antialiased when
    shrinking); a no-op when the grids match."""
    if tuple(grid) == tuple(target_grid):
        return tokens
    b, _t, d = tokens.shape
    h, w = grid
    x = tokens.float().transpose(1, 2).reshape(b, d, h, w)  # (B, D, h, w)
    shrink = target_grid[0] < h or target_grid[1] < w
    x = F.interpolate(x, size=target_grid, mode="bilinear", align_corners=False, antialias=shrink)
    return x.flatten(2).transpose(1, 2)  # (B, T', D)


def encoder_tokens(encoder: Callable[[torch.Tensor], object], images: torch.Tensor) -> torch.Tensor:
    """(B, T, D) tokens of an encoder output (an EncoderOutput or a bare tensor)."""
    out = encoder(images)
    tokens = getattr(out, "tokens", out)
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 3:
        raise StageError(f"encoder returned {type(out).__name__}, expected tokens (B, T, D)")
    return tokens


class TargetCache:
    """Encoder target tokens memoised per training-image index (``train.cache_targets``).

    The training images are never augmented, so a deterministic encoder gives an image the same
    targets at every epoch; each image's tokens are computed the first time it is drawn and kept
    as float16 (N, T, D). Meant for small datasets such as the CPU study's.
    """

    def __init__(self, n_items: int) -> None:
        self.filled = torch.zeros(n_items, dtype=torch.bool)  # (N,)
        self.store: torch.Tensor | None = None  # (N, T, D) float16, allocated on first use

    def lookup(
        self,
        compute: Callable[[torch.Tensor], torch.Tensor],
        images: torch.Tensor,
        index: torch.Tensor,
    ) -> torch.Tensor:
        """Tokens (M, T, D) for ``images`` (M, 3, H, W) with dataset indices ``index`` (M,)."""
        index_cpu = index.detach().to("cpu", torch.int64)
        missing = ~self.filled[index_cpu]  # (M,)
        if missing.any():
            fresh = compute(images[missing.to(images.device)])  # (m, T, D)
            if self.store is None:
                shape = (len(self.filled), *fresh.shape[1:])
                self.store = torch.zeros(shape, dtype=torch.float16, device=fresh.device)
            rows = index_cpu[missing].to(self.store.device)
            self.store[rows] = fresh.to(torch.float16)
            self.filled[index_cpu[missing]] = True
        assert self.store is not None
        return self.store[index_cpu.to(self.store.device)].float()  # (M, T, D)


# ---------------------------------------------------------------------------------------------
# The alignment module
# ---------------------------------------------------------------------------------------------
class Alignment(nn.Module):
    """Projectors plus the alignment objective of one run.

    Args:
        cfg: the resolved alignment config.
        sit_dim: SiT hidden width D.
        target_dims: embedding width of each target encoder.
        grid: the SiT token grid (h, w); targets must already be on it.
    """

    def __init__(
        self, cfg: AlignConfig, sit_dim: int, target_dims: Sequence[int], grid: tuple[int, int]
    ) -> None:
        super().__init__()
        self.cfg = cfg.check_resolved()
        self.grid = grid
        self.projectors = nn.ModuleList(
            build_projector(
                cfg.projector,
                sit_dim,
                dim,
                hidden_dim=cfg.projector_dim,
                kernel_size=cfg.kernel_size,
                grid=grid,
            )
            for dim in target_dims
        )
        self.target_norm = TARGET_NORMS.get("zscore" if cfg.zscore else "none")
        self.loss_fn = ALIGN_LOSSES.get(cfg.loss)

    def project(self, hidden: torch.Tensor) -> list[torch.Tensor]:
        """(B, T, D) SiT tokens -> one (B, T, Z_k) projection per target."""
        return [projector(hidden) for projector in self.projectors]

    def prepare_targets(self, tokens: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Normalise raw encoder tokens (already on the SiT grid); fp32, no grad."""
        return [self.target_norm(t, self.cfg) for t in tokens]

    def loss(
        self, projected: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(alignment loss, mean cosine) as scalars, averaged over samples, tokens, targets."""
        losses = [self.loss_fn(p, t).mean() for p, t in zip(projected, targets, strict=True)]
        cosines = [
            cosine_alignment(p.detach(), t).mean() for p, t in zip(projected, targets, strict=True)
        ]
        return torch.stack(losses).mean(), torch.stack(cosines).mean()


def projector_flops(cfg: AlignConfig, sit_dim: int, target_dim: int, tokens: int) -> float:
    """Forward FLOPs of one projector for one image (for MFU accounting)."""
    cfg = cfg.check_resolved()
    if cfg.projector == "mlp":
        p = cfg.projector_dim
        macs = sit_dim * p + p * p + p * target_dim
    elif cfg.projector == "conv":
        macs = sit_dim * target_dim * cfg.kernel_size**2
    else:
        macs = sit_dim * target_dim
    return 2.0 * macs * tokens
