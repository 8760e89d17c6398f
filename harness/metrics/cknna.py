"""CKNNA: CKA restricted to mutual k-nearest neighbours (Huh et al. 2024; REPA App. C.1).

For n samples with representations X (n, D1) and Y (n, D2), K = X Xᵀ and L = Y Yᵀ are
inner-product kernels (on L2-normalised rows by default, i.e. cosine kernels). With row-centred
entries K̄_ij = K_ij − mean_l K_il (likewise L̄)::

    Align(K, L) = Σ_i Σ_j α_ij · K̄_ij · L̄_ij,   α_ij = 1[i ≠ j, j ∈ kNN_K(i), j ∈ kNN_L(i)]
    CKNNA(K, L) = Align(K, L) / sqrt(Align(K, K) · Align(L, L))

kNN_K(i) are the k rows with the largest K_ij, j ≠ i. (CKA's 1/(n−1)² factor cancels.) With k = n−1
every pair counts and CKNNA is CKA with row-centred (rather than doubly centred) kernels.

This follows the definition in the papers; the Platonic-representation code instead applies an
unbiased HSIC estimator to the masked kernels, which gives slightly different numbers. Memory is
O(block · n): rows are processed in blocks and only the k neighbours of each row are gathered.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from harness.metrics import MetricError


def cknna(
    x: torch.Tensor,
    y: torch.Tensor,
    k: int = 10,
    *,
    normalize: bool = True,
    block_size: int = 1024,
) -> float:
    """Mutual-kNN CKA between two representations of the same n samples.

    Args:
        x: (n, D1) features (e.g. pooled encoder features of n images).
        y: (n, D2) features of the same images, same order (e.g. SiT hidden states).
        k: neighbours per sample (REPA: 10).
        normalize: L2-normalise rows first (cosine kernels).
        block_size: rows per block (memory is O(block_size · n)).

    Returns:
        CKNNA in [-1, 1]; 1 for identical representations (up to rotation and scale).

    Raises:
        MetricError: mismatched sample counts, k out of range, non-finite values.
    """
    _check(x, y, k)
    x, y = x.double(), y.double()
    if normalize:
        x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    n = x.shape[0]
    kl = kk = ll = 0.0
    for start in range(0, n, block_size):
        rows = torch.arange(start, min(n, start + block_size), device=x.device)
        kb, lb = x[rows] @ x.T, y[rows] @ y.T  # (b, n)
        kc = kb - kb.mean(1, keepdim=True)  # row-centred
        lc = lb - lb.mean(1, keepdim=True)
        nn_k, nn_l = _neighbours(kb, rows, k), _neighbours(lb, rows, k)  # (b, k)
        kk += kc.gather(1, nn_k).square().sum().item()
        ll += lc.gather(1, nn_l).square().sum().item()
        mutual = (nn_k[:, :, None] == nn_l[:, None, :]).any(-1)  # (b, k): nn_k also in nn_l
        kl += (kc.gather(1, nn_k) * lc.gather(1, nn_k) * mutual).sum().item()
    denom = math.sqrt(kk * ll)
    return kl / denom if denom > 0 else math.nan


def _neighbours(kernel: torch.Tensor, rows: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest entries of each row, excluding the row's own sample."""
    masked = kernel.clone()
    masked[torch.arange(len(rows)), rows] = -math.inf
    return masked.topk(k, dim=1).indices


def _check(x: torch.Tensor, y: torch.Tensor, k: int) -> None:
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor) or t.ndim != 2:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise MetricError(f"cknna: {name} must be a (n, D) tensor, got {got}")
        if not bool(torch.isfinite(t).all()):
            raise MetricError(f"cknna: {name} {tuple(t.shape)} contains NaN/inf")
    if x.shape[0] != y.shape[0]:
        raise MetricError(
            f"cknna: x and y must describe the same samples, got {x.shape[0]} and {y.shape[0]} rows"
        )
    if not 1 <= k < x.shape[0]:
        raise MetricError(f"cknna: k must be in [1, n-1] = [1, {x.shape[0] - 1}], got {k}")
