"""Correlation statistics for the encoder study: pure functions on 1-D numpy arrays.

Point estimates and p-values come from :mod:`scipy.stats` (``pearsonr``, ``spearmanr``,
``kendalltau``). The seeded paired bootstrap, the partial correlation and the leave-one-out
influence are ours; they reuse vectorised row-wise estimators (``(B, n)`` resamples at once)
that agree with scipy on the original sample.

Inputs may hold NaNs: a pair with a non-finite value on either side is excluded and counted
(``n_excluded``). Fewer than 3 usable pairs or a constant input give ``r = NaN`` with a
``note`` saying why, never an exception::

    >>> res = correlate(lp, fid, "pearson", n_boot=2000, seed=0)
    >>> res.r, res.ci_low, res.ci_high, res.p, res.n
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

METHODS = ("pearson", "spearman", "kendall")
MIN_N = 3  # fewer usable pairs than this: no estimate
_CHUNK_ELEMENTS = 4_000_000  # memory cap for the (B, pairs) Kendall sign matrices


@dataclass(frozen=True)
class Correlation:
    """One correlation estimate with its bootstrap interval.

    Attributes:
        method: ``pearson``, ``spearman`` or ``kendall``.
        r: the estimate (NaN when undefined).
        p: two-sided p-value (NaN when undefined).
        ci_low, ci_high: percentile bootstrap interval at ``level`` (NaN when undefined).
        n: pairs used; ``n_excluded``: pairs dropped for NaN/inf values.
        level: confidence level of the interval; ``n_boot``: resamples drawn,
        ``n_boot_valid``: resamples whose statistic was defined (not constant).
        note: why the estimate is missing or fragile ("" when fine).
    """

    method: str
    r: float
    p: float
    ci_low: float
    ci_high: float
    n: int
    n_excluded: int = 0
    level: float = 0.95
    n_boot: int = 0
    n_boot_valid: int = 0
    note: str = ""

    def as_dict(self) -> dict[str, float | int | str]:
        return {
            "method": self.method,
            "r": self.r,
            "p": self.p,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "n": self.n,
            "n_excluded": self.n_excluded,
            "level": self.level,
            "n_boot": self.n_boot,
            "n_boot_valid": self.n_boot_valid,
            "note": self.note,
        }


# ----------------------------------------------------------------------------- cleaning


def finite_rows(*columns: Sequence[float] | np.ndarray) -> tuple[list[np.ndarray], int]:
    """Drop every row where any column is NaN/inf.

    Returns:
        The filtered float64 columns and the number of rows dropped.
    """
    arrays = [np.asarray(c, dtype=np.float64).ravel() for c in columns]
    lengths = {a.shape[0] for a in arrays}
    if len(lengths) != 1:
        raise ValueError(f"columns differ in length: {sorted(lengths)}")
    keep = np.logical_and.reduce([np.isfinite(a) for a in arrays])
    return [a[keep] for a in arrays], int((~keep).sum())


def _why_undefined(*arrays: np.ndarray) -> str:
    n = arrays[0].shape[0]
    if n < MIN_N:
        return f"n = {n} < {MIN_N}: correlation undefined"
    for a in arrays:
        if np.ptp(a) == 0:
            return "constant input: correlation undefined"
    return ""


# ----------------------------------------------------------------------------- point estimates


def _scipy_estimate(test: Callable, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """``test``'s statistic and two-sided p-value on the finite rows; NaNs when undefined."""
    (x, y), _ = finite_rows(x, y)
    if _why_undefined(x, y):
        return np.nan, np.nan
    res = test(x, y)
    return float(res.statistic), float(res.pvalue)


def pearson(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Pearson r and two-sided p-value (``scipy.stats.pearsonr``); NaNs when undefined."""
    return _scipy_estimate(sps.pearsonr, x, y)


def spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Spearman ρ and two-sided p-value (``scipy.stats.spearmanr``); NaNs when undefined."""
    return _scipy_estimate(sps.spearmanr, x, y)


def kendall(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Kendall τ-b and two-sided p-value (``scipy.stats.kendalltau``); NaNs when undefined."""
    return _scipy_estimate(sps.kendalltau, x, y)


POINT_ESTIMATORS: dict[str, Callable[[np.ndarray, np.ndarray], tuple[float, float]]] = {
    "pearson": pearson,
    "spearman": spearman,
    "kendall": kendall,
}


# ----------------------------------------------------------------------------- row-wise estimators


def pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of every row pair of ``x``, ``y`` (B, n) -> (B,); NaN for constant rows."""
    xc = x - x.mean(axis=1, keepdims=True)  # (B, n)
    yc = y - y.mean(axis=1, keepdims=True)  # (B, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(1) / np.sqrt((xc * xc).sum(1) * (yc * yc).sum(1))  # (B,)
    return np.clip(r, -1.0, 1.0)


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman ρ (average ranks for ties) of every row pair (B, n) -> (B,)."""
    return pearson_rows(sps.rankdata(x, axis=1), sps.rankdata(y, axis=1))


def kendall_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall τ-b of every row pair (B, n) -> (B,), chunked to bound memory.

    τ-b = Σ sgn(Δx)·sgn(Δy) / sqrt(Σ sgn(Δx)² · Σ sgn(Δy)²) over pairs i < j, which equals
    (P − Q) / sqrt((P + Q + T_y)(P + Q + T_x)) as in ``scipy.stats.kendalltau``.
    """
    b, n = x.shape
    first, second = np.triu_indices(n, k=1)  # every pair i < j
    # dense integer ranks over the whole matrix keep every within-row order and tie
    rx = np.unique(x, return_inverse=True)[1].reshape(b, n).astype(np.int32)  # (B, n)
    ry = np.unique(y, return_inverse=True)[1].reshape(b, n).astype(np.int32)  # (B, n)
    out = np.empty(b, dtype=np.float64)
    step = max(1, _CHUNK_ELEMENTS // max(1, first.size))
    for start in range(0, b, step):
        xs, ys = rx[start : start + step], ry[start : start + step]
        sx = np.sign(xs[:, first] - xs[:, second]).astype(np.int8)  # (b, n(n-1)/2)
        sy = np.sign(ys[:, first] - ys[:, second]).astype(np.int8)  # (b, n(n-1)/2)
        num = np.einsum("ij,ij->i", sx, sy, dtype=np.int64)
        den = np.sqrt(
            np.count_nonzero(sx, axis=1) * np.count_nonzero(sy, axis=1).astype(np.float64)
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start : start + step] = num / den
    return np.clip(out, -1.0, 1.0)


ROW_ESTIMATORS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "pearson": pearson_rows,
    "spearman": spearman_rows,
    "kendall": kendall_rows,
}


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown correlation method {method!r}; allowed: {', '.join(METHODS)}")


# ----------------------------------------------------------------------------- bootstrap


def bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """Paired resampling indices (n_boot, n), a pure function of (n, n_boot, seed)."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def percentile_interval(samples: np.ndarray, level: float) -> tuple[float, float, int]:
    """Percentile interval of the finite bootstrap ``samples``: (low, high, n_valid)."""
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return np.nan, np.nan, 0
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(low), float(high), int(finite.size)


def bootstrap_ci(
    x: np.ndarray,
    y: np.ndarray,
    method: str = "pearson",
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, int]:
    """Seeded paired percentile-bootstrap interval of a correlation.

    Args:
        x, y: finite 1-D samples of equal length (clean them with :func:`finite_rows`).
        method: ``pearson``, ``spearman`` or ``kendall``.
        n_boot: number of resamples; seed: RNG seed (same seed, same interval).
        level: confidence level, e.g. 0.95.

    Returns:
        ``(low, high, n_valid)``: resamples with a constant side are undefined and skipped;
        ``n_valid`` counts the rest.
    """
    _check_method(method)
    idx = bootstrap_indices(x.shape[0], n_boot, seed)  # (B, n)
    samples = ROW_ESTIMATORS[method](x[idx], y[idx])  # (B,)
    return percentile_interval(samples, level)


def correlate(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    method: str = "pearson",
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> Correlation:
    """Correlation of ``x`` and ``y`` with p-value and seeded bootstrap CI.

    Args:
        x, y: 1-D samples; rows with a NaN/inf on either side are excluded and counted.
        method: ``pearson``, ``spearman`` or ``kendall``.
        n_boot: bootstrap resamples (0 skips the interval); seed: bootstrap seed.
        level: confidence level of the interval.

    Returns:
        A :class:`Correlation`; ``r`` is NaN (with ``note``) for n < 3 or constant input.
    """
    _check_method(method)
    (xs, ys), dropped = finite_rows(x, y)
    note = _why_undefined(xs, ys)
    if note:
        return Correlation(
            method, np.nan, np.nan, np.nan, np.nan, xs.size, dropped, level, note=note
        )
    r, p = POINT_ESTIMATORS[method](xs, ys)
    low = high = np.nan
    valid = 0
    if n_boot > 0:
        low, high, valid = bootstrap_ci(xs, ys, method, n_boot=n_boot, seed=seed, level=level)
    return Correlation(method, r, p, low, high, xs.size, dropped, level, n_boot, valid)


def correlate_all(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    methods: Sequence[str] = METHODS,
    **kwargs: float | int,
) -> dict[str, Correlation]:
    """:func:`correlate` for each of ``methods`` (same seed, same resamples)."""
    return {m: correlate(x, y, m, **kwargs) for m in methods}  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- partial correlation


def _partial_from_pairwise(r_xy: np.ndarray, r_xz: np.ndarray, r_yz: np.ndarray) -> np.ndarray:
    """First-order partial correlation from the three pairwise correlations (vectorised)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (r_xy - r_xz * r_yz) / np.sqrt((1.0 - r_xz**2) * (1.0 - r_yz**2))
    return np.clip(r, -1.0, 1.0)


def partial_correlate(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    control: Sequence[float] | np.ndarray,
    method: str = "pearson",
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> Correlation:
    """Partial correlation of ``x`` and ``y`` controlling for ``control``.

    Equals the correlation of the residuals of ``x`` and of ``y`` after a least-squares fit
    on ``control`` (with intercept). ``spearman`` does the same on ranks. The p-value is the
    t test with ``n − 3`` degrees of freedom; the interval is a seeded paired bootstrap.

    Args:
        x, y: the two variables; control: the variable held fixed (all 1-D, equal length).
        method: ``pearson`` or ``spearman``.
        n_boot, seed, level: bootstrap settings as in :func:`correlate`.

    Returns:
        A :class:`Correlation` (method ``partial-<method>``); NaN with a note for n < 4,
        constant input or a control collinear with ``x`` or ``y``.
    """
    if method not in ("pearson", "spearman"):
        raise ValueError(f"partial correlation supports pearson or spearman, not {method!r}")
    name = f"partial-{method}"
    (xs, ys, zs), dropped = finite_rows(x, y, control)
    n = xs.size
    note = f"n = {n} < 4: partial correlation undefined" if n < 4 else _why_undefined(xs, ys, zs)
    if note:
        return Correlation(name, np.nan, np.nan, np.nan, np.nan, n, dropped, level, note=note)

    def estimate(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
        if method == "spearman":  # Pearson partial correlation of the ranks
            a, b, c = (sps.rankdata(v, axis=-1) for v in (a, b, c))
        return _partial_from_pairwise(pearson_rows(a, b), pearson_rows(a, c), pearson_rows(b, c))

    r = float(estimate(xs[None], ys[None], zs[None])[0])
    if not np.isfinite(r):
        note = "control is collinear with x or y: partial correlation undefined"
        return Correlation(name, np.nan, np.nan, np.nan, np.nan, n, dropped, level, note=note)
    dof = n - 3
    if abs(r) >= 1.0:
        p = 0.0
    else:
        t = r * np.sqrt(dof / (1.0 - r * r))
        p = float(2.0 * sps.t.sf(abs(t), dof))
    low = high = np.nan
    valid = 0
    if n_boot > 0:
        idx = bootstrap_indices(n, n_boot, seed)  # (B, n)
        low, high, valid = percentile_interval(estimate(xs[idx], ys[idx], zs[idx]), level)
    return Correlation(name, r, p, low, high, n, dropped, level, n_boot, valid)


# ----------------------------------------------------------------------------- influence


@dataclass(frozen=True)
class Influence:
    """The correlation without one point, and how much it moved."""

    label: str
    r_all: float
    r_without: float
    delta: float  # r_without - r_all
    flagged: bool  # |delta| > threshold


def leave_one_out(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    labels: Sequence[str],
    method: str = "pearson",
    *,
    threshold: float = 0.1,
) -> list[Influence]:
    """Leave-one-out influence of every point on the correlation.

    Args:
        x, y: samples; rows with NaN/inf are excluded (and get no entry).
        labels: one name per row (e.g. the encoder).
        method: ``pearson``, ``spearman`` or ``kendall``.
        threshold: flag points whose removal changes r by more than this.

    Returns:
        One :class:`Influence` per usable point, largest ``|delta|`` first; empty when fewer
        than 4 points (removing one would leave an undefined correlation).
    """
    _check_method(method)
    arrays, _ = finite_rows(x, y, np.arange(len(labels), dtype=np.float64))
    xs, ys, pos = arrays
    n = xs.size
    if n < MIN_N + 1 or _why_undefined(xs, ys):
        return []
    names = [str(labels[int(i)]) for i in pos]
    estimator = ROW_ESTIMATORS[method]
    r_all = float(estimator(xs[None], ys[None])[0])
    keep = ~np.eye(n, dtype=bool)  # (n, n): row i drops point i
    loo_x = np.broadcast_to(xs, (n, n))[keep].reshape(n, n - 1)  # (n, n-1)
    loo_y = np.broadcast_to(ys, (n, n))[keep].reshape(n, n - 1)  # (n, n-1)
    r_without = estimator(loo_x, loo_y)  # (n,)
    out = [
        Influence(
            label=names[i],
            r_all=r_all,
            r_without=float(r_without[i]),
            delta=float(r_without[i] - r_all),
            flagged=bool(np.isfinite(r_without[i]) and abs(r_without[i] - r_all) > threshold),
        )
        for i in range(n)
    ]
    return sorted(out, key=lambda inf: -abs(inf.delta) if np.isfinite(inf.delta) else 0.0)


def regression_band(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    grid: np.ndarray,
    level: float = 0.95,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares line of ``y`` on ``x`` and its confidence band for the mean, on ``grid``.

    The band is ``ŷ ± t_{n-2} · s · sqrt(1/n + (g − x̄)² / Sxx)`` (classical OLS interval).

    Returns:
        ``(fit, low, high)`` arrays shaped like ``grid``; NaNs when fewer than 3 finite pairs
        or a constant ``x``.
    """
    (xs, ys), _ = finite_rows(x, y)
    grid = np.asarray(grid, dtype=np.float64)
    if xs.size < MIN_N or np.ptp(xs) == 0:
        nan = np.full_like(grid, np.nan)
        return nan, nan, nan
    n = xs.size
    slope, intercept = np.polyfit(xs, ys, 1)
    fit = intercept + slope * grid
    residual = ys - (intercept + slope * xs)
    s = np.sqrt((residual @ residual) / (n - 2))
    sxx = ((xs - xs.mean()) ** 2).sum()
    half = sps.t.ppf(0.5 + level / 2, n - 2) * s * np.sqrt(1.0 / n + (grid - xs.mean()) ** 2 / sxx)
    return fit, fit - half, fit + half
