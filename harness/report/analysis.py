"""Statistics tables of a study: correlations with CIs, partial correlations, influence, heatmap.

Each *scope* is one set of points that may be correlated together: a facet (one model size,
method, protocol and step), and, when a sweep has several model sizes evaluated under the same
protocol, the pooled scope ``all models`` (one point per encoder and model size).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.metrics import SPATIAL_METRICS
from harness.report import stats
from harness.report.data import SHORT_LABELS, X_METRICS
from harness.report.options import ReportOptions

SCOPE_COLUMNS = ["scope", "sweep", "model", "method", "protocol", "step", "fid_label"]
POOLED = "all models"
HEATMAP_VARIABLES = (*X_METRICS, "fid")


@dataclass(frozen=True)
class Analysis:
    """The statistics behind the report (every number also lands in ``tables/*.csv``).

    Attributes:
        correlations: scope columns + metric, method, r, p, ci_low, ci_high, n, n_excluded,
            n_boot_valid, note, small_n.
        partial: scope columns + target, control, method, r, p, ci_low, ci_high, n, note.
        influence: scope columns + metric, encoder, r_all, r_without, delta, flagged.
        heatmap: scope columns + row, column, r, n (pairwise-complete Pearson).
    """

    correlations: pd.DataFrame
    partial: pd.DataFrame
    influence: pd.DataFrame
    heatmap: pd.DataFrame

    def annotation(self, scope: str, metric: str) -> str:
        """``Pearson r = -0.85 [-0.93, -0.70], Spearman ρ = ... , n = 27`` for a figure panel."""
        rows = self.correlations[
            (self.correlations.scope == scope) & (self.correlations.metric == metric)
        ]
        by_method = {r.method: r for r in rows.itertuples()}
        parts = []
        for method, symbol in (("pearson", "Pearson r"), ("spearman", "Spearman ρ")):
            row = by_method.get(method)
            if row is None or not np.isfinite(row.r):
                parts.append(f"{symbol} = n/a")
            elif np.isfinite(row.ci_low):
                parts.append(f"{symbol} = {row.r:.2f} [{row.ci_low:.2f}, {row.ci_high:.2f}]")
            else:
                parts.append(f"{symbol} = {row.r:.2f}")
        n = int(next(iter(by_method.values())).n) if by_method else 0
        return ", ".join(parts) + f", n = {n}"


def scopes(points: pd.DataFrame) -> list[tuple[dict[str, object], pd.DataFrame]]:
    """Every scope of ``points``: each facet, then the pooled ``all models`` scopes."""
    out: list[tuple[dict[str, object], pd.DataFrame]] = []
    for facet, group in points.groupby("facet", sort=False):
        first = group.iloc[0]
        meta = {c: first[c] for c in SCOPE_COLUMNS[1:]}
        out.append(({"scope": facet, **meta}, group))
    for (sweep, method, protocol), group in points.groupby(
        ["sweep", "method", "protocol"], sort=True
    ):
        if group.model.nunique() < 2:
            continue
        steps = sorted({int(s) for s in group.step})
        label = f"{POOLED} · {method} · {protocol}" + (
            f" · {sweep}" if points.sweep.nunique() > 1 else ""
        )
        meta = {
            "scope": label,
            "sweep": sweep,
            "model": POOLED,
            "method": method,
            "protocol": protocol,
            "step": steps[0] if len(steps) == 1 else np.nan,
            "fid_label": group.fid_label.iloc[0],
        }
        pooled = group.assign(encoder=group.encoder + " (" + group.model + ")")
        out.append((meta, pooled))
    return out


def analyse(points: pd.DataFrame, options: ReportOptions) -> Analysis:
    """Compute every statistics table over every scope of ``points``."""
    boot = {"n_boot": options.n_boot, "seed": options.seed, "level": options.level}
    corr, partial, influence, heat = [], [], [], []
    for meta, group in scopes(points):
        fid = group.fid.to_numpy(dtype=np.float64)
        for metric in X_METRICS:
            x = group[metric].to_numpy(dtype=np.float64)
            for method in stats.METHODS:
                res = stats.correlate(x, fid, method, **boot)
                corr.append(
                    {**meta, "metric": metric, **res.as_dict(), "small_n": res.n < options.min_n}
                )
            for inf in stats.leave_one_out(
                x, fid, list(group.encoder), "pearson", threshold=options.influence_threshold
            ):
                influence.append({**meta, "metric": metric, **inf.__dict__, "encoder": inf.label})
        lp = group.lp_top1.to_numpy(dtype=np.float64)
        for spatial in SPATIAL_METRICS:
            s = group[spatial].to_numpy(dtype=np.float64)
            for target, control, xs, zs in (
                (spatial, "lp_top1", s, lp),
                ("lp_top1", spatial, lp, s),
            ):
                for method in ("pearson", "spearman"):
                    res = stats.partial_correlate(xs, fid, zs, method, **boot)
                    partial.append({**meta, "target": target, "control": control, **res.as_dict()})
        heat.extend(_heatmap_rows(meta, group))
    influence_frame = pd.DataFrame(influence)
    if len(influence_frame):
        influence_frame = influence_frame.drop(columns=["label"])
    return Analysis(
        correlations=pd.DataFrame(corr),
        partial=pd.DataFrame(partial),
        influence=influence_frame,
        heatmap=pd.DataFrame(heat),
    )


def _heatmap_rows(meta: dict[str, object], group: pd.DataFrame) -> list[dict[str, object]]:
    rows = []
    for a in HEATMAP_VARIABLES:
        for b in HEATMAP_VARIABLES:
            r, _ = stats.pearson(group[a].to_numpy(np.float64), group[b].to_numpy(np.float64))
            (xa, _), _ = stats.finite_rows(group[a], group[b])
            rows.append({**meta, "row": _name(a), "column": _name(b), "r": r, "n": int(xa.size)})
    return rows


def _name(variable: str) -> str:
    return SHORT_LABELS.get(variable, variable.upper())
