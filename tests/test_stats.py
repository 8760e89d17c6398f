"""harness.report.stats against scipy, regression residuals and brute force."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from harness.report import stats

SCIPY = {"pearson": sps.pearsonr, "spearman": sps.spearmanr, "kendall": sps.kendalltau}


def _sample(seed: int, n: int = 27, ties: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = 0.6 * x + rng.normal(size=n)
    if ties:  # ties on both sides exercise average ranks and tau-b
        x[3] = x[5]
        y[7] = y[9] = y[11]
    return x, y


@pytest.mark.parametrize("method", stats.METHODS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_point_estimates_match_scipy(method: str, seed: int) -> None:
    x, y = _sample(seed)
    expected = SCIPY[method](x, y)
    r, p = stats.POINT_ESTIMATORS[method](x, y)
    res = stats.correlate(x, y, method, n_boot=0)
    assert r == pytest.approx(expected.statistic, abs=1e-9)
    assert p == pytest.approx(expected.pvalue, abs=1e-9)
    assert (res.r, res.p, res.n, res.n_excluded) == (r, p, x.size, 0)


@pytest.mark.parametrize("method", stats.METHODS)
def test_row_estimators_match_scipy_on_bootstrap_resamples(method: str) -> None:
    x, y = _sample(3, n=15)
    idx = stats.bootstrap_indices(x.size, 200, seed=4)  # resamples are full of duplicates
    rows = stats.ROW_ESTIMATORS[method](x[idx], y[idx])
    for i in range(len(idx)):
        xs, ys = x[idx[i]], y[idx[i]]
        if np.ptp(xs) == 0 or np.ptp(ys) == 0:
            assert np.isnan(rows[i])
            continue
        assert rows[i] == pytest.approx(SCIPY[method](xs, ys).statistic, abs=1e-9)


def test_kendall_rows_chunking_is_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _sample(5, n=30)
    idx = stats.bootstrap_indices(x.size, 50, seed=1)
    whole = stats.kendall_rows(x[idx], y[idx])
    monkeypatch.setattr(stats, "_CHUNK_ELEMENTS", 1000)  # one resample per chunk
    np.testing.assert_array_equal(stats.kendall_rows(x[idx], y[idx]), whole)


def test_nans_are_excluded_and_counted() -> None:
    x, y = _sample(6)
    x_nan, y_nan = x.copy(), y.copy()
    x_nan[[0, 4]] = np.nan
    y_nan[10] = np.inf
    keep = np.ones(x.size, bool)
    keep[[0, 4, 10]] = False
    for method in stats.METHODS:
        dirty = stats.correlate(x_nan, y_nan, method, n_boot=300, seed=2)
        clean = stats.correlate(x[keep], y[keep], method, n_boot=300, seed=2)
        assert dirty.n_excluded == 3 and dirty.n == x.size - 3
        assert (dirty.r, dirty.ci_low, dirty.ci_high) == (clean.r, clean.ci_low, clean.ci_high)


@pytest.mark.parametrize(
    ("x", "y", "note"),
    [
        ([1.0, 2.0], [2.0, 1.0], "n = 2 < 3"),
        ([1.0, np.nan, 3.0], [1.0, 2.0, 3.0], "n = 2 < 3"),
        ([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0], "constant input"),
        ([], [], "n = 0 < 3"),
    ],
)
def test_undefined_correlations_are_nan_with_a_reason(x: list, y: list, note: str) -> None:
    for method in stats.METHODS:
        res = stats.correlate(x, y, method)
        assert np.isnan(res.r) and np.isnan(res.p) and np.isnan(res.ci_low)
        assert note in res.note
    assert np.isnan(stats.partial_correlate(x, y, y).r)


def test_bootstrap_is_reproducible_and_contains_the_estimate() -> None:
    for seed in range(6):
        x, y = _sample(seed, n=20 + seed)
        for method in stats.METHODS:
            a = stats.correlate(x, y, method, n_boot=1000, seed=7)
            b = stats.correlate(x, y, method, n_boot=1000, seed=7)
            other = stats.correlate(x, y, method, n_boot=1000, seed=8)
            assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)
            assert (a.ci_low, a.ci_high) != (other.ci_low, other.ci_high)
            assert a.ci_low <= a.r <= a.ci_high
            assert a.n_boot_valid == 1000
            narrow = stats.correlate(x, y, method, n_boot=1000, seed=7, level=0.5)
            assert a.ci_low < narrow.ci_low <= narrow.ci_high < a.ci_high


def test_bootstrap_interval_covers_the_true_correlation() -> None:
    rho, n, reps = 0.6, 40, 120
    cov = [[1.0, rho], [rho, 1.0]]
    rng = np.random.default_rng(11)
    hits = 0
    for rep in range(reps):
        x, y = rng.multivariate_normal([0.0, 0.0], cov, size=n).T
        res = stats.correlate(x, y, "pearson", n_boot=500, seed=rep)
        hits += res.ci_low <= rho <= res.ci_high
    assert 0.85 <= hits / reps <= 1.0  # nominal 95%; percentile CIs run slightly short


def _residuals(v: np.ndarray, control: np.ndarray) -> np.ndarray:
    design = np.column_stack([np.ones_like(control), control])
    beta, *_ = np.linalg.lstsq(design, v, rcond=None)
    return v - design @ beta


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_partial_correlation_equals_residual_correlation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=30)
    x = 0.8 * z + rng.normal(size=30)
    y = -0.5 * z + 0.4 * x + rng.normal(size=30)
    res = stats.partial_correlate(x, y, z, "pearson", n_boot=500, seed=1)
    expected = np.corrcoef(_residuals(x, z), _residuals(y, z))[0, 1]
    assert res.r == pytest.approx(expected, abs=1e-9)
    assert res.ci_low <= res.r <= res.ci_high
    # p-value: the t test of x's coefficient in y ~ 1 + x + z (an independent computation)
    design = np.column_stack([np.ones_like(z), x, z])
    beta, rss, *_ = np.linalg.lstsq(design, y, rcond=None)
    dof = z.size - 3
    se = np.sqrt(rss[0] / dof * np.linalg.inv(design.T @ design)[1, 1])
    assert res.p == pytest.approx(2 * sps.t.sf(abs(beta[1] / se), dof), rel=1e-9)
    ranks = [sps.rankdata(v) for v in (x, y, z)]
    spearman = stats.partial_correlate(x, y, z, "spearman", n_boot=0)
    rank_expected = np.corrcoef(_residuals(ranks[0], ranks[2]), _residuals(ranks[1], ranks[2]))
    assert spearman.r == pytest.approx(rank_expected[0, 1], abs=1e-9)


def test_partial_correlation_removes_a_common_cause() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=400)
    x = z + 0.3 * rng.normal(size=400)
    y = z + 0.3 * rng.normal(size=400)  # x and y related only through z
    assert stats.correlate(x, y, n_boot=0).r > 0.8
    assert abs(stats.partial_correlate(x, y, z, n_boot=0).r) < 0.1
    assert stats.partial_correlate(x, 2 * x + 1, z, n_boot=0).r == pytest.approx(1.0, abs=1e-9)
    collinear = stats.partial_correlate(x, y, 3 * x - 2, n_boot=0)
    assert np.isnan(collinear.r) and "collinear" in collinear.note


def test_leave_one_out_matches_brute_force_and_flags_outliers() -> None:
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, 20)
    y = -2 * x + 0.2 * rng.normal(size=20)
    x[0], y[0] = 3.0, 4.0  # one far outlier against the trend
    labels = [f"enc-{i}" for i in range(20)]
    out = stats.leave_one_out(x, y, labels, "pearson", threshold=0.1)
    r_all = sps.pearsonr(x, y).statistic
    by_label = {inf.label: inf for inf in out}
    for i, name in enumerate(labels):
        keep = np.arange(20) != i
        expected = sps.pearsonr(x[keep], y[keep]).statistic
        assert by_label[name].r_without == pytest.approx(expected, abs=1e-9)
        assert by_label[name].delta == pytest.approx(expected - r_all, abs=1e-9)
        assert by_label[name].flagged == (abs(expected - r_all) > 0.1)
    assert out[0].label == "enc-0" and out[0].flagged
    assert sum(inf.flagged for inf in out) == 1
    x[5] = np.nan  # excluded points get no entry
    assert "enc-5" not in {inf.label for inf in stats.leave_one_out(x, y, labels)}
    assert stats.leave_one_out([1, 2, 3], [3, 1, 2], ["a", "b", "c"]) == []


def test_regression_band_is_the_ols_line_with_a_band_narrowest_at_the_mean() -> None:
    x, y = _sample(9, n=25, ties=False)
    grid = np.linspace(x.min(), x.max(), 41)
    fit, low, high = stats.regression_band(x, y, grid, level=0.95)
    slope, intercept = np.polyfit(x, y, 1)
    np.testing.assert_allclose(fit, intercept + slope * grid, atol=1e-12)
    width = high - low
    assert (low < fit).all() and (fit < high).all()
    assert grid[np.argmin(width)] == pytest.approx(x.mean(), abs=grid[1] - grid[0])
    # at the mean of x the half-width is t * s / sqrt(n)
    res = y - (intercept + slope * x)
    s = np.sqrt(res @ res / (x.size - 2))
    at_mean = stats.regression_band(x, y, np.array([x.mean()]))
    expected = sps.t.ppf(0.975, x.size - 2) * s / np.sqrt(x.size)
    assert (at_mean[2] - at_mean[0])[0] == pytest.approx(expected, rel=1e-9)
    assert np.isnan(stats.regression_band([1.0, 1.0, 1.0], [1.0, 2.0, 3.0], grid)[0]).all()
