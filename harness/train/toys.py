"""A tiny frozen target encoder for tests, CPU smoke runs and ``harness bench train --encoder
toy``. It is not a catalogue encoder and never stands in for one in a study.

``PatchEncoder`` is a seeded random two-layer patch network: the tokens of an image are a fixed
nonlinear function of its pixels on the requested grid, so the SiT can learn to align to them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ToyOutput:
    """Mirrors ``harness.encoders.EncoderOutput``."""

    tokens: torch.Tensor  # (B, T, D) float32
    pooled: torch.Tensor  # (B, D)
    grid: tuple[int, int]


class PatchEncoder(nn.Module):
    """uint8 images (B, 3, H, W) -> (B, h*w, dim) tokens on ``grid`` (frozen, seeded).

    Args:
        grid: the token grid (h, w); H and W must be divisible by h and w.
        dim: token width.
        seed: weight seed.
    """

    def __init__(self, grid: tuple[int, int] = (8, 8), dim: int = 32, seed: int = 0) -> None:
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))
        self.embed_dim = dim
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("w1", torch.randn(dim, 3, 3, 3, generator=gen) / 27**0.5)
        self.register_buffer("w2", torch.randn(dim, dim, generator=gen) / dim**0.5)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> ToyOutput:
        x = images.float() / 127.5 - 1.0  # (B, 3, H, W)
        x = F.adaptive_avg_pool2d(x, (2 * self.grid[0], 2 * self.grid[1]))  # (B, 3, 2h, 2w)
        x = F.gelu(F.conv2d(x, self.w1.to(x), stride=2, padding=1))  # (B, D, h, w)
        tokens = torch.einsum("bchw,dc->bhwd", x, self.w2.to(x)).flatten(1, 2)  # (B, T, D)
        return ToyOutput(tokens=tokens, pooled=tokens.mean(1), grid=self.grid)
