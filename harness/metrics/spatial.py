"""Spatial-structure metrics of patch tokens: LDS, CDS, SRSS, RMSC (iREPA §3, App. B).

Definitions (exactly those of the iREPA analysis code, ``metrics/spatial_metrics.py``). Tokens
``x_t`` (B, T, D) lie on an (h, w) grid in row-major order; every token is L2-normalised in
float32 (eps 1e-8), cos(t, t') is their dot product and d(t, t') the Manhattan distance.

* **LDS** = mean cos over 4-neighbour pairs − mean cos over pairs with d ≥ ``far_dist`` (6).
  (No far pair: the far mean counts as 0, like the published code's clamped denominator.)
* **CDS** = −slope of the least-squares line through g(δ) = mean cos over pairs at d = δ, for
  δ = 1..``cds_max_dist`` (8) where such pairs exist (fewer than two distances: 0).
* **SRSS** (needs foreground masks) = mean over valid foreground anchors a of
  [mean cos(a, fg tokens at 1 ≤ d ≤ ``srss_pos_dist``) − mean cos(a, bg tokens at
  d ≥ ``srss_neg_dist``)]; an anchor is valid when both sets are non-empty. NaN for an image
  with no valid anchor, or with fewer than ``srss_min_fg`` / ``srss_min_bg`` fg / bg tokens.
* **RMSC** = sqrt(mean_t ||x_t − mean_t' x_t'||²) of the normalised tokens.

How it is computed (no T×T matrix for LDS, CDS, RMSC). They are sums of dot products over
token pairs grouped by offset o = (dy, dx), i.e. the autocorrelation A(o) = Σ_p <x_p, x_{p+o}>
of the token field. Along rows it is taken in a zero-padded DFT basis (cos/sin of length
L = h + R, one GEMM), along columns as diagonals of a small (w × w) Gram per frequency, so only
offsets |dy|, |dx| <= R = max(cds_max_dist, far_dist - 1) are formed: O(T·D·(h + R)) GEMM FLOPs
per image instead of a dense O(T²·D) Gram plus T² masks. Far-pair sums are "all pairs (||Σ x||²)
minus near pairs". SRSS folds each anchor's two means into per-token weights that depend on the
masks only (α_a = 1 / (n_pos(a)·n_valid), β_a = 1 / (n_neg(a)·n_valid), counted by one small
convolution of the masks): SRSS = Σ_a α_a Σ_pos cos − Σ_a β_a Σ_neg cos. Negatives are "all
background minus background within reach (d < srss_neg_dist)": one weighted sum per image,
<Σ_a β_a x_a, Σ_bg x>, minus the pairs within reach, which only join anchors that have
background within reach to background that has foreground within reach: one GEMM of those
per image (per band of rows on tall grids), masked by distance. Positives are the dot products
of the few foreground-neighbour pairs. So SRSS costs ~ (boundary anchors × nearby background)
× D, not anchors × T × D. Images are processed in cache-sized chunks, in one buffer reused by
every chunk, so memory does not grow with the batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F

from harness.errors import did_you_mean
from harness.metrics import MetricError


@dataclass(frozen=True)
class SpatialParams:
    """Every radius and threshold of the metrics (defaults: the published analysis code)."""

    far_dist: int = 6  # LDS: far pairs have d >= far_dist
    cds_max_dist: int = 8  # CDS: correlogram fitted at d = 1..cds_max_dist
    srss_pos_dist: int = 1  # SRSS: positives are fg tokens at 1 <= d <= srss_pos_dist
    srss_neg_dist: int = 6  # SRSS: negatives are bg tokens at d >= srss_neg_dist
    srss_min_fg: int = 0  # SRSS: NaN for an image with fewer fg tokens
    srss_min_bg: int = 0  # SRSS: NaN for an image with fewer bg tokens
    eps: float = 1e-8  # L2-normalisation epsilon
    chunk_bytes: int = (
        4 << 20
    )  # images per internal chunk: ~this many bytes of tokens (cache-sized)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "eps":
                if not (isinstance(value, float | int) and value > 0):
                    raise MetricError(
                        f"spatial_metrics: eps must be a positive number, got {value!r}"
                    )
                continue
            minimum = 0 if f.name.startswith("srss_min") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise MetricError(
                    f"spatial_metrics: {f.name} must be an integer >= {minimum}, got {value!r}"
                )
        if self.srss_neg_dist <= self.srss_pos_dist:
            raise MetricError(
                f"spatial_metrics: srss_neg_dist ({self.srss_neg_dist}) must be > "
                f"srss_pos_dist ({self.srss_pos_dist})"
            )


def spatial_metrics(
    features: torch.Tensor,
    grid: int | Sequence[int] | None = None,
    masks: torch.Tensor | None = None,
    *,
    name: str | None = None,
    **params: Any,
) -> dict[str, torch.Tensor]:
    """Per-image spatial-structure metrics of patch tokens.

    Args:
        features: (B, T, D) patch tokens in row-major grid order (any float dtype).
        grid: (h, w) or a side for a square grid; None infers a square grid from T.
        masks: optional (B, T) bool foreground masks (row-major, same grid); enables "srss".
        name: the encoder's name, used in error messages.
        **params: fields of :class:`SpatialParams` (far_dist, cds_max_dist, srss_pos_dist,
            srss_neg_dist, srss_min_fg, srss_min_bg, eps, chunk_bytes); others are errors.

    Returns:
        {"lds", "cds", "rmsc"[, "srss"]} -> (B,) float64 tensors on the features' device.

    Raises:
        MetricError: bad shapes, a grid that does not match T, a mask of the wrong shape,
            non-finite features, or an unknown parameter.
    """
    p = _params(params)
    who = f"encoder {name!r}" if name else "spatial_metrics"
    features, (h, w) = _check_features(features, grid, who)
    srss = None
    if masks is not None:
        srss = _srss_weights(_check_masks(masks, features.shape, who), (h, w), p)
    b, t, d = features.shape
    chunk = min(b, max(1, p.chunk_bytes // max(1, t * d * 4)))
    basis = _basis(h, w, max(p.cds_max_dist, p.far_dist - 1, 1), str(features.device))
    # one buffer for the normalised tokens and scratch (their row DFT; SRSS's gathered tokens),
    # reused by every chunk: fresh buffers per chunk make the allocator unmap and re-fault
    # their pages each time, which costs as much as the arithmetic
    scratch = max(basis.dft.shape[0] * w, 0 if srss is None else 2 * t)
    work = features.new_empty(chunk * d * (t + scratch), dtype=torch.float32)
    parts: list[dict[str, torch.Tensor]] = []
    for start in range(0, b, chunk):
        stop = min(start + chunk, b)
        part = None if srss is None else srss[start:stop]
        parts.append(_chunk_metrics(features[start:stop], (h, w), basis, work, part, p))
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------
def _params(params: dict[str, Any]) -> SpatialParams:
    allowed = [f.name for f in fields(SpatialParams)]
    for key in params:
        if key not in allowed:
            raise MetricError(
                f"spatial_metrics: unknown parameter {key!r}{did_you_mean(key, allowed)}",
                hint=f"allowed: {', '.join(allowed)}",
            )
    return SpatialParams(**params)


def _check_features(
    features: Any, grid: int | Sequence[int] | None, who: str
) -> tuple[torch.Tensor, tuple[int, int]]:
    if not isinstance(features, torch.Tensor) or features.ndim != 3:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features)
        raise MetricError(f"{who}: features must be a (B, T, D) tensor, got {shape}")
    b, t, d = features.shape
    if b == 0 or t == 0 or d == 0:
        raise MetricError(f"{who}: features (B, T, D) = {(b, t, d)} has an empty dimension")
    if not features.is_floating_point():
        raise MetricError(f"{who}: features must be floating point, got {features.dtype}")
    if grid is None:
        side = math.isqrt(t)
        if side * side != t:
            raise MetricError(
                f"{who}: features {tuple(features.shape)} have T={t} tokens, not a square "
                "number; pass grid=(h, w)"
            )
        hw = (side, side)
    else:
        hw = (grid, grid) if isinstance(grid, int) else tuple(int(g) for g in grid)
        if len(hw) != 2 or min(hw) < 1 or hw[0] * hw[1] != t:
            raise MetricError(
                f"{who}: grid {tuple(hw)} does not match features {tuple(features.shape)} "
                f"(h*w must equal T={t})"
            )
    sums = features.sum(tuple(range(1, features.ndim)))  # NaN/inf propagate into the sum
    if not bool(torch.isfinite(sums).all()):
        suspects = torch.nonzero(~torch.isfinite(sums)).flatten()
        finite = torch.isfinite(features[suspects]).flatten(1).all(1)
        bad = suspects[~finite]
        if bad.numel():
            raise MetricError(
                f"{who}: features {tuple(features.shape)} contain NaN/inf in {bad.numel()} "
                f"image(s), first at batch index {int(bad[0])}",
                hint="check the encoder's dtype (bf16/fp16 overflow) and its input preprocessing",
            )
    return features, (int(hw[0]), int(hw[1]))


def _check_masks(masks: Any, shape: torch.Size, who: str) -> torch.Tensor:
    b, t, _ = shape
    if not isinstance(masks, torch.Tensor) or tuple(masks.shape) != (b, t):
        got = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks)
        raise MetricError(
            f"{who}: masks must be (B, T) = {(b, t)} to match features {tuple(shape)}, got {got}"
        )
    if masks.dtype != torch.bool:
        if (
            masks.is_floating_point()
            or masks.is_complex()
            or bool(((masks != 0) & (masks != 1)).any())
        ):
            raise MetricError(f"{who}: masks must be bool (or 0/1 integers), got {masks.dtype}")
        masks = masks.bool()
    return masks


# ---------------------------------------------------------------------------------------------
# the fast path
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Basis:
    """Constants for correlations with offsets |dy| <= ry, |dx| <= rx on an (h, w) grid."""

    ry: int
    rx: int
    dft: torch.Tensor  # (K + S, h): cos rows (k = 0..K-1), then the S non-zero sin rows
    sin_rows: torch.Tensor  # (S,) long: the frequency k of each sin row
    coef: torch.Tensor  # (ry+1, K) float64: Re-spectrum -> C(dy) + C(-dy) (C(0) for dy = 0)
    diag: torch.Tensor  # (w*w, 2rx+1): one-hot of the column offset c' - c
    dist: torch.Tensor  # (ry+1, 2rx+1) long: dy + |dx| of each table cell
    pairs: tuple[float, ...]  # unordered token pairs at each distance 0..reach


@lru_cache(maxsize=32)
def _basis(h: int, w: int, reach: int, device: str) -> _Basis:
    ry, rx = min(reach, h - 1), min(reach, w - 1)
    length = h + ry
    freqs = length // 2 + 1
    k = torch.arange(freqs, dtype=torch.float64)
    angle = 2 * math.pi * k[:, None] * torch.arange(h, dtype=torch.float64)[None] / length
    # sin rows of k = 0 and of the Nyquist frequency are zero in theory: drop them (rounding
    # leaves ~1e-16 there, whose products underflow to slow denormals); keep the cos rows
    has_sin = (k > 0) & (2 * k < length)
    dft = torch.cat([torch.cos(angle), torch.sin(angle)[has_sin]]).to(torch.float32)  # (L', h)
    mult = torch.full((freqs,), 2.0, dtype=torch.float64)  # Hermitian pairs k, L-k
    mult[0] = 1.0
    if length % 2 == 0:
        mult[-1] = 1.0
    dy = torch.arange(ry + 1, dtype=torch.float64)
    coef = mult[None] * torch.cos(2 * math.pi * dy[:, None] * k[None] / length) / length
    coef[1:] *= 2.0
    col = torch.arange(w)
    offset = (col[None, :] - col[:, None]).reshape(-1)  # c' - c for (c, c') row-major
    diag = torch.zeros(w * w, 2 * rx + 1)
    keep = offset.abs() <= rx
    diag[torch.nonzero(keep).flatten(), (offset[keep] + rx)] = 1.0
    dxs = torch.arange(-rx, rx + 1)
    dist = torch.arange(ry + 1)[:, None] + dxs.abs()[None, :]
    counts = [0.0] * (reach + 1)  # ordered pairs at each distance 0..reach
    for y in range(-ry, ry + 1):
        for x in range(-rx, rx + 1):
            if abs(y) + abs(x) <= reach:
                counts[abs(y) + abs(x)] += (h - abs(y)) * (w - abs(x))
    pairs = tuple(c / 2 for c in counts)  # unordered (distance 0: half the self pairs)
    dev = torch.device(device)
    sin_rows = torch.nonzero(has_sin).flatten()
    return _Basis(
        ry, rx, dft.to(dev), sin_rows.to(dev), coef.to(dev), diag.to(dev), dist.to(dev), pairs
    )


def _row_dft(x: torch.Tensor, basis: _Basis, out: torch.Tensor) -> torch.Tensor:
    """Row-direction DFT of a token field: (b, h, w, D) -> (b, K + S, w, D), written to ``out``
    (any tensor with that many elements)."""
    b, h, w, d = x.shape
    out = out.view(b, basis.dft.shape[0], w, d)
    torch.matmul(basis.dft, x.reshape(b, h, w * d), out=out.view(b, -1, w * d))
    return out


def _field_sum(f: torch.Tensor) -> torch.Tensor:
    """Σ over all positions of a token field, from its row DFT (b, K + S, w, D) -> (b, D)."""
    return f[:, 0].double().sum(1)


def _corr_table(fa: torch.Tensor, fb: torch.Tensor, basis: _Basis) -> torch.Tensor:
    """Offset table of the cross-correlation C(o) = Σ_p <a_p, b_{p+o}> from row DFTs.

    Returns (b, ry+1, 2rx+1) float64: row 0 holds C(0, dx); row dy > 0 holds
    C(dy, dx) + C(-dy, dx), for dx = -rx..rx.
    """
    b, rows, w, d = fa.shape
    freqs = basis.coef.shape[1]
    gram = torch.bmm(fa.reshape(b * rows, w, d), fb.reshape(b * rows, w, d).transpose(1, 2))
    gram = gram.view(b, rows, w * w)
    re = gram[:, :freqs].index_add(1, basis.sin_rows, gram[:, freqs:])  # cos·cos + sin·sin
    per_dx = torch.matmul(re, basis.diag).double()  # (b, K, 2rx+1)
    return torch.einsum("yk,bkx->byx", basis.coef, per_dx)


def _ring_sums(table: torch.Tensor, basis: _Basis, reach: int) -> torch.Tensor:
    """Unordered-pair sums at each distance 0..reach of an autocorrelation table -> (b, reach+1)."""
    onehot = F.one_hot(basis.dist.clamp(max=reach + 1), reach + 2)[..., : reach + 1]
    return 0.5 * torch.einsum("byx,yxr->br", table, onehot.double())


def _chunk_metrics(
    feats: torch.Tensor,
    grid: tuple[int, int],
    basis: _Basis,
    work: torch.Tensor,
    srss: _SrssWeights | None,
    p: SpatialParams,
) -> dict[str, torch.Tensor]:
    """The metrics of one chunk of images; ``work`` is scratch space (see spatial_metrics)."""
    b, t, d = feats.shape
    h, w = grid
    feats = feats.to(torch.float32)
    norms = torch.linalg.vector_norm(feats, dim=-1, keepdim=True)  # (b, T, 1)
    x = torch.div(feats, norms.clamp(min=p.eps), out=work[: b * t * d].view(b, t, d))
    sq_norms = (norms / norms.clamp(min=p.eps)).square().squeeze(-1).double()  # ||x_t||² (b, T)
    out: dict[str, torch.Tensor] = {}

    reach = max(p.cds_max_dist, p.far_dist - 1, 1)
    scratch = work[b * t * d :]
    fx = _row_dft(x.view(b, h, w, d), basis, out=scratch[: b * d * basis.dft.shape[0] * w])
    x_sum = _field_sum(fx)  # (b, D)
    rings = _ring_sums(_corr_table(fx, fx, basis), basis, reach)  # (b, reach+1)
    pairs = torch.tensor(basis.pairs, dtype=torch.float64, device=x.device)  # (reach+1,)

    # LDS: 4-neighbours vs "all pairs minus pairs closer than far_dist"
    near = rings[:, 1] / pairs[1] if pairs[1] > 0 else torch.full_like(rings[:, 1], math.nan)
    all_pairs = (x_sum.square().sum(-1) - sq_norms.sum(1)) / 2  # Σ_{t<t'} cos (b,)
    close = slice(1, p.far_dist)
    far_pairs = t * (t - 1) / 2 - float(pairs[close].sum())
    far_sum = all_pairs - rings[:, close].sum(1)
    out["lds"] = near - (far_sum / far_pairs if far_pairs > 0 else torch.zeros_like(far_sum))

    # CDS: least-squares slope of the correlogram at distances 1..cds_max_dist
    present = [dist for dist in range(1, p.cds_max_dist + 1) if pairs[dist] > 0]
    if len(present) >= 2:
        dists = torch.tensor(present, dtype=torch.float64, device=x.device)
        g = rings[:, present] / pairs[present]  # (b, n)
        centred = dists - dists.mean()
        out["cds"] = -((g - g.mean(1, keepdim=True)) @ centred) / (centred @ centred)
    else:
        out["cds"] = torch.zeros(b, dtype=torch.float64, device=x.device)

    out["rmsc"] = _rmsc(x, sq_norms, x_sum)
    if srss is not None:
        out["srss"] = _srss(x, srss, (h, w), p, scratch)
    return out


def _rmsc(x: torch.Tensor, sq_norms: torch.Tensor, x_sum: torch.Tensor) -> torch.Tensor:
    """sqrt(mean_t ||x_t - m||²) = sqrt(mean_t ||x_t||² - ||m||²); images whose value is small
    (where that difference loses float32 digits) are recomputed directly."""
    t = x.shape[1]
    mean_sq = (sq_norms.mean(1) - (x_sum / t).square().sum(-1)).clamp(min=0)  # (b,)
    redo = torch.nonzero(mean_sq < 1e-2).flatten()
    if redo.numel():
        xr = x[redo].double()
        mean_sq[redo] = (xr - xr.mean(1, keepdim=True)).square().sum(-1).mean(1)
    return mean_sq.sqrt()


@dataclass(frozen=True)
class _SrssWeights:
    """What SRSS needs from the masks alone, for a batch of images (all (B, T) but n_valid).

    SRSS = Σ_a α_a pos(a) − Σ_a β_a neg(a) with α_a = valid_a / (n_pos(a)·n_valid) and
    β_a = valid_a / (n_neg(a)·n_valid): per-anchor means folded into per-token weights.
    """

    fg: torch.Tensor  # bool: foreground
    alpha: torch.Tensor  # float64: weight of each anchor's positive sum (0: not a valid anchor)
    beta: torch.Tensor  # float64: weight of each anchor's negative sum
    near: torch.Tensor  # bool: has background within reach (d < srss_neg_dist)
    partner: torch.Tensor  # bool: background token with foreground within reach
    n_valid: torch.Tensor  # (B,) long: valid anchors per image

    def __getitem__(self, index: slice) -> _SrssWeights:
        return _SrssWeights(*(getattr(self, f.name)[index] for f in fields(self)))


def _srss_weights(fg: torch.Tensor, grid: tuple[int, int], p: SpatialParams) -> _SrssWeights:
    """SRSS's per-token weights for foreground masks fg (B, T): every anchor's positives and
    negatives are counted by one small convolution of the masks (no T×T)."""
    bg = ~fg
    n_fg, n_bg = fg.sum(1), bg.sum(1)  # (B,)
    enough = (n_fg >= max(p.srss_min_fg, 1)) & (n_bg >= max(p.srss_min_bg, 1))
    near_bg, n_pos, near_fg = _srss_counts(fg, grid, p.srss_pos_dist, p.srss_neg_dist - 1)
    n_neg = n_bg[:, None] - near_bg  # background at d >= srss_neg_dist
    valid = fg & enough[:, None] & (n_pos > 0) & (n_neg > 0)  # (B, T)
    n_valid = valid.sum(1)
    per_image = valid / n_valid.clamp(min=1)[:, None].double()
    alpha, beta = per_image / n_pos.clamp(min=1), per_image / n_neg.clamp(min=1)
    return _SrssWeights(fg, alpha, beta, near_bg > 0, bg & (near_fg > 0), n_valid)


def _srss(
    x: torch.Tensor,
    sw: _SrssWeights,
    grid: tuple[int, int],
    p: SpatialParams,
    scratch: torch.Tensor,
) -> torch.Tensor:
    """SRSS of normalised tokens x (b, T, D) from the mask-derived weights ``sw``;
    ``scratch``: at least 2·b·T·D float32 elements.

    Σ_a β_a neg(a) = <Σ_a β_a x_a, Σ_bg x> − Σ_a β_a near(a), where near(a) sums over the
    background within reach (d < srss_neg_dist): beyond one weighted sum per image, only pairs
    closer than srss_neg_dist count, and only the foreground and the background near it are
    read again (gathered into ``scratch``). Images without a valid anchor are NaN.
    """
    b, t, d = x.shape
    weights = torch.stack([~sw.fg, sw.beta], 1).to(x.dtype)  # (b, 2, T)
    sums = torch.bmm(weights, x).double()  # (b, 2, D): Σ_bg x, Σ_a β_a x_a (no cancellation)
    srss = -(sums[:, 0] * sums[:, 1]).sum(-1)

    fg_tok = torch.nonzero(sw.fg.flatten()).flatten()  # (F,) by image, then token
    bg_tok = torch.nonzero(sw.partner.flatten()).flatten()  # (G,) background near foreground
    rows = torch.cat([fg_tok, bg_tok])  # fg and bg are disjoint: F + G <= b·T
    tokens = torch.index_select(
        x.reshape(b * t, d), 0, rows, out=scratch[: rows.numel() * d].view(-1, d)
    )
    xf, xg = tokens[: fg_tok.numel()], tokens[fg_tok.numel() :]  # (F, D), (G, D)
    buffer = scratch[b * t * d : (b * t + fg_tok.numel()) * d].view(-1, d)  # (F, D)
    positives = _srss_positives(xf, fg_tok, sw, grid, p.srss_pos_dist, buffer)  # (F,)
    srss.index_add_(0, fg_tok // t, positives)
    srss += _srss_near(xf, xg, fg_tok, bg_tok, sw, grid, p.srss_neg_dist - 1, buffer)
    return torch.where(sw.n_valid > 0, srss, torch.full_like(srss, math.nan))


def _srss_positives(
    xf: torch.Tensor,
    fg_tok: torch.Tensor,
    sw: _SrssWeights,
    grid: tuple[int, int],
    pos_dist: int,
    buffer: torch.Tensor,
) -> torch.Tensor:
    """Σ α_a <x_a, x_b> over foreground pairs at 1 <= d(a, b) <= pos_dist, per foreground token
    (F,) float64. xf (F, D): the foreground tokens fg_tok (flat indices); buffer (F, D) scratch.

    Each pair (p, p + o) is taken once, for o in one half-plane, weighted α_p + α_{p+o}.
    """
    t = grid[0] * grid[1]
    row_of = torch.full((sw.fg.numel(),), -1, dtype=torch.long, device=xf.device)
    row_of[fg_tok] = torch.arange(fg_tok.numel(), device=xf.device)  # token -> row of xf
    pos = fg_tok % t
    table = _half_neighbours(grid, pos_dist, str(xf.device))[pos]  # (F, P)
    other = torch.where(table >= 0, row_of[(fg_tok - pos)[:, None] + table.clamp(min=0)], -1)
    alpha = sw.alpha.flatten()[fg_tok]  # (F,)
    weight = (alpha[:, None] + alpha[other.clamp(min=0)]) * (other >= 0)  # (F, P)
    dots = []
    for k in range(other.shape[1]):  # buffer = xf * xf[other]: one dot product per row
        torch.index_select(xf, 0, other[:, k].clamp(min=0), out=buffer).mul_(xf)
        dots.append(buffer.sum(-1))
    return (torch.stack(dots, 1).double() * weight).sum(1)


def _srss_near(
    xf: torch.Tensor,
    xg: torch.Tensor,
    fg_tok: torch.Tensor,
    bg_tok: torch.Tensor,
    sw: _SrssWeights,
    grid: tuple[int, int],
    reach: int,
    buffer: torch.Tensor,
) -> torch.Tensor:
    """Σ_a β_a near(a) per image, (b,) float64: near(a) = Σ <x_a, x_g> over background tokens
    g with d(a, g) <= reach. xf (F, D), xg (G, D): the foreground tokens fg_tok and the
    background tokens bg_tok that have foreground within reach (flat indices, sorted);
    buffer: (F, D) scratch.

    Only anchors with background within reach contribute: one GEMM per image, those anchors ×
    that background, masked by distance; on grids taller than a band plus twice the reach,
    one GEMM per band of anchor rows, against the background rows within reach.
    """
    b, t = sw.fg.shape
    h, w = grid
    dev = xf.device
    anchor = torch.nonzero(((sw.alpha > 0) & sw.near).flatten()).flatten()  # (A,)
    xa = torch.index_select(xf, 0, torch.searchsorted(fg_tok, anchor), out=buffer[: anchor.numel()])
    xa *= sw.beta.flatten()[anchor, None].to(xa.dtype)  # (A, D): β_a x_a
    coords = _coords(grid, str(dev))
    a_xy, g_xy = coords[anchor % t], coords[bg_tok % t]  # (A, 2), (G, 2)
    band = max(reach + 1, -(-h // 4))  # anchor rows per GEMM
    tops = list(range(0, h, band)) if band + 2 * reach < h else [0]
    top = torch.tensor(tops, device=dev)
    bottom = torch.tensor([*tops[1:], h], device=dev)
    image = torch.arange(b, device=dev)[:, None] * t  # (b, 1): first token of each image
    spans = torch.stack(  # (b, bands, 4): anchors a0..a1-1 against background g0..g1-1
        [
            torch.searchsorted(anchor, image + top * w),
            torch.searchsorted(anchor, image + bottom * w),
            torch.searchsorted(bg_tok, image + (top - reach).clamp(min=0) * w),
            torch.searchsorted(bg_tok, image + (bottom + reach).clamp(max=h) * w),
        ],
        -1,
    ).tolist()
    index, values = [], []
    for i, image_spans in enumerate(spans):
        for a0, a1, g0, g1 in image_spans:
            if a0 < a1 and g0 < g1:
                close = (a_xy[a0:a1, None] - g_xy[None, g0:g1]).abs().sum(-1) <= reach
                values.append(((xa[a0:a1] @ xg[g0:g1].T) * close).sum(dtype=torch.float64))
                index.append(i)
    near = torch.zeros(b, dtype=torch.float64, device=dev)
    if values:
        near.index_add_(0, torch.tensor(index, device=dev), torch.stack(values))
    return near


@lru_cache(maxsize=16)
def _half_neighbours(grid: tuple[int, int], dist: int, device: str) -> torch.Tensor:
    """(T, P) long: token p + o for each offset o = (dy, dx) with 1 <= |dy| + |dx| <= dist in
    one half-plane (dy > 0, or dy = 0 and dx > 0); -1 where p + o is outside the grid."""
    h, w = grid
    coords = _coords(grid, "cpu")
    offsets = torch.tensor(
        [
            (dy, dx)
            for dy in range(dist + 1)
            for dx in range(-dist, dist + 1)
            if (dy > 0 or dx > 0) and dy + abs(dx) <= dist
        ]
    )  # (P, 2)
    moved = coords[:, None] + offsets[None]  # (T, P, 2)
    inside = (moved >= 0).all(-1) & (moved[..., 0] < h) & (moved[..., 1] < w)
    table = torch.where(inside, moved[..., 0] * w + moved[..., 1], -1)
    return table.to(torch.device(device))


@lru_cache(maxsize=16)
def _coords(grid: tuple[int, int], device: str) -> torch.Tensor:
    """(T, 2) long: the (row, column) of each token of an (h, w) grid."""
    ys, xs = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    return torch.stack([ys.reshape(-1), xs.reshape(-1)], 1).to(torch.device(device))


def _srss_counts(
    fg: torch.Tensor, grid: tuple[int, int], pos_dist: int, reach: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per token: background tokens at d <= reach, foreground tokens at 1 <= d <= pos_dist,
    foreground tokens at d <= reach. Three (b, T) float64 tensors (exact integer counts)."""
    h, w = grid
    kernels = _srss_kernels(h, w, pos_dist, reach, str(fg.device))  # (3, 2, 2ry+1, 2rx+1)
    ry, rx = (kernels.shape[-2] - 1) // 2, (kernels.shape[-1] - 1) // 2
    masks = torch.stack([~fg, fg], 1).view(-1, 2, h, w).to(kernels.dtype)  # (b, 2, h, w)
    counts = F.conv2d(masks, kernels, padding=(ry, rx)).round().double().view(-1, 3, h * w)
    return counts[:, 0], counts[:, 1], counts[:, 2]


@lru_cache(maxsize=16)
def _srss_kernels(h: int, w: int, pos_dist: int, reach: int, device: str) -> torch.Tensor:
    """(3, 2, 2ry+1, 2rx+1) float32 kernels over (bg, fg) masks: bg at d <= reach, fg at
    1 <= d <= pos_dist, fg at d <= reach."""
    ry, rx = min(max(reach, pos_dist), h - 1), min(max(reach, pos_dist), w - 1)
    dy = torch.arange(-ry, ry + 1).abs()[:, None]
    dx = torch.arange(-rx, rx + 1).abs()[None, :]
    near, ring = (dy + dx) <= reach, ((dy + dx) >= 1) & ((dy + dx) <= pos_dist)
    kernels = torch.zeros(3, 2, 2 * ry + 1, 2 * rx + 1)
    kernels[0, 0], kernels[1, 1], kernels[2, 1] = near, ring, near
    return kernels.to(torch.device(device))
