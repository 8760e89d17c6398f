"""The seed-to-seed noise floor of the generation metrics, and which differences exceed it.

*Noise floor.* Within one comparable set of evaluations, a *cell* — one (sweep, model size,
protocol, step) — every (method, encoder) *group* that was trained with two or more seeds gives
a sample standard deviation ``s_g`` over its ``n_g`` seeds. The cell's floor is the pooled
within-group standard deviation ::

    σ = sqrt( Σ_g (n_g − 1) · s_g²  /  Σ_g (n_g − 1) ),   df = Σ_g (n_g − 1)

(the usual pooled variance: every group is assumed to share one seed-to-seed spread; no group
with a single seed contributes). A cell where no group has two seeds has no floor.

*Comparisons.* Two groups ``a`` and ``b`` of the same cell are compared on their seed means
``m_a`` (``n_a`` seeds) and ``m_b`` (``n_b`` seeds). The difference ``Δ = m_a − m_b`` *exceeds
the floor* when ::

    |Δ| > t_{(1 + level)/2, df} · σ · sqrt(1/n_a + 1/n_b)

— a two-sided pooled two-sample t-test at the report's confidence level (``level``, default
0.95; the factor is ≈ 2 with many seeds and larger with few). A group with one seed is assumed to
have the floor's spread. Without a floor the comparison *cannot be judged* and no win is claimed.

What is compared: every (method, encoder) against the baseline (``none``) at every step; within
each method at each step the best against the worst and the best against the runner-up encoder
(best by the primary metric, FID/FD, lower is better); iREPA against REPA per encoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.report.data import BASELINE, GEN_METRICS, METHOD_LABELS

CELL = ["sweep", "model", "protocol", "fid_label", "step"]  # one comparable set of evaluations
GROUP = ["method", "encoder"]
YES, NO, UNJUDGED = "yes", "no", "cannot be judged"
RULE = (
    "a difference of seed means exceeds the noise floor when |Δ| > t · σ · √(1/n₁ + 1/n₂), "
    "with σ the pooled within-group seed-to-seed standard deviation of its model size, step and "
    "protocol (every method/encoder group with ≥ 2 seeds; σ² = Σ(n_g−1)s_g² / Σ(n_g−1)), n₁, n₂ "
    "the seeds behind each mean and t the two-sided {level:.0%} Student-t quantile with "
    "Σ(n_g−1) degrees of freedom (≈ 2 with many seeds)"
)
FLOOR_COLUMNS = [
    *CELL,
    "metric",
    "sigma",
    "df",
    "n_groups",
    "n_seeds",
    "seeds_per_group",
    "groups",
]
COMPARISON_COLUMNS = [
    "kind",
    *CELL,
    "metric",
    "method",
    "encoder",
    "value",
    "n",
    "versus",
    "versus_value",
    "versus_n",
    "delta",
    "threshold",
    "sigma",
    "df",
    "exceeds_floor",
    "direction",
]


def metric_label(metric: str, fid_label: str) -> str:
    """The reader's name of a generation metric (FID or FD for the primary one)."""
    return short_fid(fid_label) if metric == "fid" else GEN_METRICS[metric][0]


def short_fid(fid_label: str) -> str:
    """``FD`` for a substitute-extractor label, else the label itself (``FID``)."""
    return "FD" if str(fid_label).startswith("FD") else str(fid_label)


def group_means(evals: pd.DataFrame) -> pd.DataFrame:
    """Long table: per cell, group and metric, the seed mean, sd and n (finite values only)."""
    cols = [*CELL, *GROUP, "metric", "mean", "sd", "n", "seeds"]
    if evals.empty:
        return pd.DataFrame(columns=cols)
    long = evals.melt(
        id_vars=[*CELL, *GROUP, "seed", "run_id"],
        value_vars=list(GEN_METRICS),
        var_name="metric",
        value_name="value",
    )
    long = long[np.isfinite(pd.to_numeric(long.value, errors="coerce").astype(float))]
    if long.empty:
        return pd.DataFrame(columns=cols)
    grouped = long.groupby([*CELL, *GROUP, "metric"], sort=True)
    out = grouped.agg(mean=("value", "mean"), sd=("value", "std"), n=("run_id", "nunique"))
    out["seeds"] = grouped.seed.agg(lambda s: " ".join(str(int(v)) for v in sorted(set(s))))
    return out.reset_index()[cols]


def noise_floor(means: pd.DataFrame) -> pd.DataFrame:
    """Per cell and metric: the pooled seed-to-seed σ (see the module docstring)."""
    rows = []
    for key, g in means.groupby([*CELL, "metric"], sort=True):
        repeated = g[g.n >= 2]
        if repeated.empty:
            continue
        df = float((repeated.n - 1).sum())
        sigma = float(np.sqrt(((repeated.n - 1) * repeated.sd**2).sum() / df))
        labels = [
            f"{METHOD_LABELS.get(m, m)}" + ("" if e == BASELINE else f" · {e}")
            for m, e in zip(repeated.method, repeated.encoder)
        ]
        rows.append(
            {
                **dict(zip([*CELL, "metric"], key)),
                "sigma": sigma,
                "df": df,
                "n_groups": len(repeated),
                "n_seeds": int(repeated.n.sum()),
                "seeds_per_group": _tally(repeated.n),
                "groups": ", ".join(labels),
            }
        )
    return pd.DataFrame(rows, columns=FLOOR_COLUMNS)


def _tally(ns: pd.Series) -> str:
    """``2 seeds: 24 groups; 3 seeds: 1 group``."""
    counts = ns.astype(int).value_counts().sort_index()
    return "; ".join(f"{n} seeds: {k} group{'s' if k > 1 else ''}" for n, k in counts.items())


def threshold(sigma: float, df: float, n_a: float, n_b: float, level: float) -> float:
    """``t_{(1+level)/2, df} · σ · sqrt(1/n_a + 1/n_b)`` (NaN without a floor)."""
    from scipy import stats as sps

    if not (np.isfinite(sigma) and df > 0):
        return float("nan")
    t = float(sps.t.ppf(0.5 + level / 2.0, df))
    return t * sigma * float(np.sqrt(1.0 / n_a + 1.0 / n_b))


def judge(delta: float, limit: float) -> str:
    """``yes`` / ``no`` / ``cannot be judged`` for a difference against its threshold."""
    if not np.isfinite(limit) or not np.isfinite(delta):
        return UNJUDGED
    return YES if abs(delta) > limit else NO


def direction(metric: str, delta: float) -> str:
    """``better`` / ``worse`` / ``same`` for ``a − b = delta`` on ``metric``."""
    if not np.isfinite(delta) or delta == 0:
        return "same"
    lower_better = GEN_METRICS[metric][1]
    return "better" if (delta < 0) == lower_better else "worse"


def comparisons(means: pd.DataFrame, floor: pd.DataFrame, level: float) -> pd.DataFrame:
    """Every comparison the report states, each marked against the noise floor."""
    floors = {tuple(r[c] for c in [*CELL, "metric"]): r for _, r in floor.iterrows()}
    rows: list[dict[str, object]] = []

    def add(kind: str, key: tuple, a: pd.Series, b: pd.Series, versus: str) -> None:
        f = floors.get(key)
        sigma = float(f["sigma"]) if f is not None else float("nan")
        df = float(f["df"]) if f is not None else 0.0
        delta = float(a["mean"] - b["mean"])
        limit = threshold(sigma, df, float(a.n), float(b.n), level)
        rows.append(
            {
                "kind": kind,
                **dict(zip([*CELL, "metric"], key)),
                "method": a.method,
                "encoder": a.encoder,
                "value": float(a["mean"]),
                "n": int(a.n),
                "versus": versus,
                "versus_value": float(b["mean"]),
                "versus_n": int(b.n),
                "delta": delta,
                "threshold": limit,
                "sigma": sigma,
                "df": df,
                "exceeds_floor": judge(delta, limit),
                "direction": direction(str(key[-1]), delta),
            }
        )

    for key, g in means.groupby([*CELL, "metric"], sort=True):
        metric = str(key[-1])
        base = g[g.method == BASELINE]
        trained = g[g.method != BASELINE]
        if len(base):
            b = base.iloc[0]
            for _, a in trained.iterrows():
                add("vs baseline", key, a, b, METHOD_LABELS[BASELINE])
        if metric == "fid":
            for _method, m in trained.groupby("method", sort=True):
                ranked = m.sort_values(["mean", "encoder"]).reset_index(drop=True)
                if len(ranked) >= 2:
                    best, worst = ranked.iloc[0], ranked.iloc[-1]
                    add("best vs worst", key, best, worst, _named(worst))
                    add("best vs runner-up", key, best, ranked.iloc[1], _named(ranked.iloc[1]))
        pairs = trained.pivot_table(index="encoder", columns="method", values="mean")
        if {"repa", "irepa"} <= set(pairs.columns):
            for encoder in pairs.dropna(subset=["repa", "irepa"]).index:
                a = trained[(trained.method == "irepa") & (trained.encoder == encoder)].iloc[0]
                b = trained[(trained.method == "repa") & (trained.encoder == encoder)].iloc[0]
                add("iREPA vs REPA", key, a, b, _named(b))
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def _named(row: pd.Series) -> str:
    return f"{row.encoder} ({METHOD_LABELS.get(row.method, row.method)})"


@dataclass(frozen=True)
class Noise:
    """The seed means, the noise floor and the marked comparisons of a study.

    Attributes:
        means: per cell, (method, encoder) group and metric: seed mean, sd, n, seeds.
        floor: per cell and metric: pooled σ, df, groups and seeds behind it (``FLOOR_COLUMNS``).
        comparisons: ``COMPARISON_COLUMNS``, ``exceeds_floor`` in yes / no / cannot be judged.
        level: the confidence level of the rule.
    """

    means: pd.DataFrame
    floor: pd.DataFrame
    comparisons: pd.DataFrame
    level: float

    @property
    def rule(self) -> str:
        return RULE.format(level=self.level)


def measure(evals: pd.DataFrame, level: float) -> Noise:
    """Seed means, noise floor and comparisons of ``evals`` (``Study.evals``)."""
    means = group_means(evals)
    floor = noise_floor(means)
    return Noise(means, floor, comparisons(means, floor, level), level)
