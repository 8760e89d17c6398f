"""CKNNA against a direct dense implementation of its definition, and known answers."""

from __future__ import annotations

import math

import pytest
import torch

from harness.metrics import MetricError
from harness.metrics.cknna import cknna


def dense_cknna(x: torch.Tensor, y: torch.Tensor, k: int) -> float:
    """The definition with full n×n matrices and explicit masks (Huh et al. 2024, eq. for Align)."""
    x = torch.nn.functional.normalize(x.double(), dim=-1)
    y = torch.nn.functional.normalize(y.double(), dim=-1)
    n = x.shape[0]

    def knn_mask(kernel: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(n, n, dtype=torch.bool)
        for i in range(n):
            others = [j for j in range(n) if j != i]
            order = sorted(others, key=lambda j: -kernel[i, j].item())[:k]
            mask[i, order] = True
        return mask

    def align(a: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor) -> float:
        ac = a - a.mean(1, keepdim=True)
        bc = b - b.mean(1, keepdim=True)
        return float((alpha * ac * bc).sum())

    kx, ky = x @ x.T, y @ y.T
    mx, my = knn_mask(kx), knn_mask(ky)
    return align(kx, ky, mx & my) / math.sqrt(align(kx, kx, mx) * align(ky, ky, my))


@pytest.mark.parametrize(("n", "k"), [(40, 5), (64, 10), (30, 29)])
def test_matches_dense_definition(n: int, k: int) -> None:
    gen = torch.Generator().manual_seed(n)
    latent = torch.randn(n, 6, generator=gen)
    x = latent @ torch.randn(6, 32, generator=gen) + 0.3 * torch.randn(n, 32, generator=gen)
    y = latent @ torch.randn(6, 20, generator=gen) + 1.0 * torch.randn(n, 20, generator=gen)
    expected = dense_cknna(x, y, k)
    assert cknna(x, y, k) == pytest.approx(expected, abs=1e-9)
    assert cknna(x, y, k, block_size=7) == pytest.approx(expected, abs=1e-9)  # row blocks


def test_identical_and_rotated_representations_give_one() -> None:
    x = torch.randn(200, 16)
    rotation, _ = torch.linalg.qr(torch.randn(16, 16))
    assert cknna(x, x, 10) == pytest.approx(1.0, abs=1e-9)
    assert cknna(x, 3.0 * x @ rotation, 10) == pytest.approx(1.0, abs=1e-9)


def test_independent_representations_give_about_zero() -> None:
    gen = torch.Generator().manual_seed(0)
    values = [
        cknna(torch.randn(500, 32, generator=gen), torch.randn(500, 32, generator=gen), 10)
        for _ in range(3)
    ]
    assert max(abs(v) for v in values) < 0.05


def test_shared_structure_scores_between_noise_and_identity() -> None:
    gen = torch.Generator().manual_seed(1)
    latent = torch.randn(300, 4, generator=gen)
    x = latent @ torch.randn(4, 24, generator=gen)
    y = latent @ torch.randn(4, 24, generator=gen) + 0.5 * torch.randn(300, 24, generator=gen)
    assert 0.2 < cknna(x, y, 10) < 0.99


@pytest.mark.parametrize(
    ("x", "y", "k", "message"),
    [
        (torch.randn(10, 4), torch.randn(9, 4), 3, "same samples"),
        (torch.randn(10, 4), torch.randn(10, 4), 10, r"k must be in \[1, n-1\]"),
        (torch.randn(10), torch.randn(10, 4), 3, r"\(n, D\)"),
        (torch.full((10, 4), math.nan), torch.randn(10, 4), 3, "NaN"),
    ],
)
def test_bad_inputs_are_clear_errors(x, y, k, message) -> None:
    with pytest.raises(MetricError, match=message):
        cknna(x, y, k)
