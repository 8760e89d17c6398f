"""Alignment projectors: SiT hidden tokens (B, T, D) -> encoder token space (B, T, Z).

Each class is an entry of the lazy registry ``harness.config.train.PROJECTORS`` (the one list of
projector names, which config validation reads without importing this module). Every projector
has the same constructor ``cls(in_dim, out_dim, *, hidden_dim, kernel_size, grid)``.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.config.train import PROJECTORS


def _xavier_linears(module: nn.Module) -> None:
    """REPA initialises its projector like the rest of SiT: xavier weights, zero biases."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)


class MLPProjector(nn.Module):
    """REPA: Linear(D, P) - SiLU - Linear(P, P) - SiLU - Linear(P, Z), applied per token."""

    def __init__(
        self, in_dim: int, out_dim: int, *, hidden_dim: int, kernel_size: int, grid: tuple[int, int]
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, out_dim),
        )
        _xavier_linears(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, T, Z)


class LinearProjector(nn.Module):
    """One linear map per token (an ablation baseline)."""

    def __init__(
        self, in_dim: int, out_dim: int, *, hidden_dim: int, kernel_size: int, grid: tuple[int, int]
    ) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)
        _xavier_linears(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)  # (B, T, Z)


class ConvProjector(nn.Module):
    """iREPA: one ``Conv2d(D, Z, k, padding=k // 2)`` over the (h, w) token grid.

    A k x k conv mixes each token with its neighbours, so the projector itself keeps spatial
    structure (and is translation-equivariant away from the zero-padded border).
    """

    def __init__(
        self, in_dim: int, out_dim: int, *, hidden_dim: int, kernel_size: int, grid: tuple[int, int]
    ) -> None:
        super().__init__()
        self.grid = grid
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h, w = self.grid
        if h * w != t:
            raise ValueError(f"conv projector: {t} tokens do not form the {h}x{w} grid")
        x = x.transpose(1, 2).reshape(b, d, h, w)  # (B, D, h, w)
        return self.conv(x).flatten(2).transpose(1, 2)  # (B, T, Z)


def build_projector(
    kind: str,
    in_dim: int,
    out_dim: int,
    *,
    hidden_dim: int,
    kernel_size: int,
    grid: tuple[int, int],
) -> nn.Module:
    """Build the projector registered as ``kind`` (RegistryError with suggestions if unknown)."""
    cls = PROJECTORS.get(kind)
    return cls(in_dim, out_dim, hidden_dim=hidden_dim, kernel_size=kernel_size, grid=grid)
