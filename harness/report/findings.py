"""The report's first section, "What this study found": the result in plain words, computed from
the study (never hard-coded), with the noise floor deciding which differences count.

Four statements, each per comparable set (model size, method, protocol, the reported step):

(a) whether alignment beat the no-alignment baseline by more than the seed-to-seed noise floor,
    and with which encoders (:mod:`harness.report.noise`; without repeated seeds: "cannot be
    judged", never a win);
(b) which encoder metric tracks generation quality most closely (largest |Pearson r| over
    encoders, seed means), with its bootstrap CI and whether the CI excludes 0;
(c) how each metric's r compares with the papers' direction (:data:`PAPERS`): the same
    direction, the opposite one, or not resolved (the CI includes 0);
(d) whether the baseline's samples are data-like: precision, recall, and class accuracy against
    its ceiling (the same classifier on real images) and chance.

Before them, the check that the study learned at all (:func:`learned`): when every evaluation
has precision and recall ≈ 0, or the typical run's class accuracy is ≈ chance, the section
says the study did not learn and that its differences and correlations describe noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harness.metrics import SPATIAL_METRICS
from harness.report.analysis import Analysis
from harness.report.data import BASELINE, METHOD_LABELS, SHORT_LABELS, Study
from harness.report.noise import NO, UNJUDGED, YES, Noise, short_fid
from harness.report.options import ReportOptions

# What the papers report (iREPA, arXiv 2512.10794; 27 encoders, SiT, ImageNet 256): stated, not
# tuned to this study.
PAPERS = {
    "spatial_r": (-0.89, -0.85),  # Pearson r of LDS, CDS, SRSS, RMSC with FID
    "lp_abs_r": 0.26,  # |Pearson r| of linear-probe accuracy with FID
}
PAPER_SENTENCE = (
    "The papers find that higher spatial-structure metrics (LDS, CDS, SRSS, RMSC) go with lower "
    "(better) FID, r ≈ −0.85 to −0.89 over 27 encoders, while linear-probe accuracy correlates "
    "only weakly (|r| = 0.26)."
)
NEAR_ZERO = 0.01  # precision and recall at or below this: no sample lands near the real data
CHANCE_GAP = 0.10  # class accuracy closing less than this share of the chance → ceiling gap
DATA_LIKE = 0.80  # class accuracy at least this share of the ceiling: data-like classes
LIST_AT_MOST = 8  # encoders named per statement (the tables have all)


@dataclass(frozen=True)
class Findings:
    """The first section: ``lines`` (one statement each) and the verdicts behind them.

    Attributes:
        lines: the statements, in reading order.
        learned: False when the evaluations look like noise, True when they do not, None when
            nothing (precision, recall, class accuracy) could tell.
        why_not: why the study is judged not to have learned ("" otherwise).
        beat_baseline: (facet, encoder) pairs that beat the baseline beyond the floor.
    """

    lines: list[str]
    learned: bool | None
    why_not: str = ""
    beat_baseline: list[tuple[str, str]] = field(default_factory=list)


def _num(value: float, digits: int = 2) -> str:
    return "n/a" if not np.isfinite(value) else f"{value:.{digits}f}"


def _signed(value: float) -> str:
    return "n/a" if not np.isfinite(value) else f"{value:+.2f}".replace("-", "−")


def _ci(row: object) -> str:
    r, lo, hi = row.r, row.ci_low, row.ci_high  # type: ignore[attr-defined]
    if np.isfinite(lo) and np.isfinite(hi):
        return f"r = {_signed(r)} [{_signed(lo)}, {_signed(hi)}]"
    return f"r = {_signed(r)} (no CI)"


def _excludes_zero(row: object, min_n: int) -> bool | None:
    """Whether the bootstrap CI excludes 0; None without a CI or with fewer than ``min_n``
    encoders (a percentile bootstrap of so few points says nothing)."""
    lo, hi = row.ci_low, row.ci_high  # type: ignore[attr-defined]
    if not (np.isfinite(lo) and np.isfinite(hi)) or row.n < min_n:  # type: ignore[attr-defined]
        return None
    return bool(lo > 0 or hi < 0)


def _unresolved(row: object, min_n: int) -> str:
    """Why a correlation has no verdict: too few encoders, or no CI."""
    n = int(row.n)  # type: ignore[attr-defined]
    return f"n = {n} < {min_n} encoders" if n < min_n else "no CI"


def _names(rows: pd.DataFrame, label: str) -> str:
    items = [
        f"{e} ({label} {_num(v)}, Δ {_signed(d)})"
        for e, v, d in zip(rows.encoder, rows.value, rows.delta)
    ]
    more = len(items) - LIST_AT_MOST
    return ", ".join(items[:LIST_AT_MOST]) + (f" and {more} more" if more > 0 else "")


# ----------------------------------------------------------------------------- did it learn?


def reported_evals(study: Study) -> pd.DataFrame:
    """The evaluations at each (sweep, model)'s reported step (the step of the correlations)."""
    steps = pd.concat(
        [study.points[["sweep", "model", "step"]], study.baselines[["sweep", "model", "step"]]]
    ).drop_duplicates()
    if study.evals.empty or steps.empty:
        return study.evals.iloc[:0]
    return study.evals.merge(steps, on=["sweep", "model", "step"])


def chance_and_ceiling(rows: pd.DataFrame) -> tuple[float, float]:
    """Chance (1 / classes; NaN when unknown) and the real-image ceiling (NaN when unknown)."""
    classes = pd.to_numeric(rows.get("num_classes"), errors="coerce")
    chance = (
        1.0 / float(classes.median()) if classes is not None and classes.notna().any() else np.nan
    )
    real = pd.to_numeric(rows.get("class_accuracy_real"), errors="coerce")
    ceiling = float(real.median()) if real is not None and real.notna().any() else np.nan
    return chance, ceiling


def near_chance(accuracy: float, chance: float, ceiling: float) -> bool:
    """Class accuracy closing less than ``CHANCE_GAP`` of the gap from chance to the ceiling
    (ceiling 1 when unknown)."""
    if not (np.isfinite(accuracy) and np.isfinite(chance)):
        return False
    top = ceiling if np.isfinite(ceiling) and ceiling > chance else 1.0
    return bool(accuracy < chance + CHANCE_GAP * (top - chance))


def learned(study: Study) -> tuple[bool | None, str]:
    """Whether the reported evaluations look like a model that learned, and why not."""
    rows = reported_evals(study)
    if rows.empty:
        return None, ""
    p, r = rows.precision.astype(float), rows.recall.astype(float)
    acc = rows.class_accuracy.astype(float)
    reasons = []
    both = p.notna() & r.notna()
    if both.any() and ((p[both] <= NEAR_ZERO) & (r[both] <= NEAR_ZERO)).all():
        reasons.append(
            f"precision and recall are ≈ 0 (≤ {NEAR_ZERO}) in all {int(both.sum())} evaluations"
        )
    chance, ceiling = chance_and_ceiling(rows)
    if acc.notna().any() and near_chance(float(acc.median()), chance, ceiling):
        reasons.append(
            f"the median class accuracy of the samples, {_num(float(acc.median()))}, is ≈ chance "
            f"({_num(chance)}; ceiling {_num(ceiling)})"
        )
    if reasons:
        return False, "; ".join(reasons)
    if both.any() or acc.notna().any():
        return True, ""
    return None, ""


# ----------------------------------------------------------------------------- the statements


def _facet_meta(study: Study) -> pd.DataFrame:
    cols = ["facet", "sweep", "model", "method", "protocol", "fid_label", "step"]
    return study.points.drop_duplicates("facet")[cols]


def alignment_lines(study: Study, noise: Noise, did_learn: bool | None) -> tuple[list[str], list]:
    """(a): per facet, which encoders beat the baseline beyond the noise floor."""
    lines, wins = [], []
    comp = noise.comparisons
    for f in _facet_meta(study).itertuples():
        fd = short_fid(f.fid_label)
        method = METHOD_LABELS.get(f.method, f.method)
        rows = comp[
            (comp.kind == "vs baseline")
            & (comp.metric == "fid")
            & (comp.sweep == f.sweep)
            & (comp.model == f.model)
            & (comp.protocol == f.protocol)
            & (comp.step == f.step)
            & (comp.method == f.method)
        ].sort_values("delta")
        head = f"{f.facet}: "
        if rows.empty:
            lines.append(
                head + f"no baseline (no alignment) evaluated at this step and protocol, so "
                f"whether {method} helped cannot be said."
            )
            continue
        base = f"the baseline ({fd} {_num(rows.versus_value.iloc[0])}, {rows.versus_n.iloc[0]} seed(s))"
        if (rows.exceeds_floor == UNJUDGED).all():
            lines.append(
                head + "no noise floor measured: differences cannot be judged (no method/encoder "
                f"group has ≥ 2 seeds at this step). Apparent only: {base}; encoders {fd} "
                f"{_num(rows.value.min())}–{_num(rows.value.max())}. No win is claimed."
            )
            continue
        better = rows[(rows.exceeds_floor == YES) & (rows.direction == "better")]
        worse = rows[(rows.exceeds_floor == YES) & (rows.direction == "worse")]
        within = rows[rows.exceeds_floor == NO]
        sigma = rows.sigma.iloc[0]
        floor = f"noise floor σ = {_num(sigma)} {fd} (df {int(rows.df.iloc[0])})"
        if did_learn is False:
            lines.append(
                head + f"{len(better) + len(worse)} of {len(rows)} encoders differ from {base} "
                f"beyond the {floor} ({len(better)} lower, {len(worse)} higher), but the study did "
                f"not learn, so this is no evidence that {method} helped or hurt."
            )
            continue
        if len(better):
            text = (
                f"{method} beat {base} by more than the {floor} with {len(better)} of "
                f"{len(rows)} encoders: {_names(better, fd)}."
            )
            wins += [(f.facet, e) for e in better.encoder]
        else:
            text = (
                f"{method} did not beat {base} by more than the {floor} with any of the "
                f"{len(rows)} encoders."
            )
        if len(worse):
            text += f" Worse than the baseline beyond the floor: {_names(worse, fd)}."
        if len(within):
            names = ", ".join(list(within.encoder)[:LIST_AT_MOST])
            more = len(within) - LIST_AT_MOST
            text += (
                f" Within the floor (not distinguishable from the baseline): {len(within)} "
                f"({names}{f' and {more} more' if more > 0 else ''})."
            )
        lines.append(head + text)
    return lines, wins


def _unresolved_verdict(row: object, min_n: int, includes_zero: str) -> str | None:
    """The verdict of a correlation that says nothing (not computable, too few points, or a CI
    that includes 0: ``includes_zero``); None when its CI excludes 0."""
    if not np.isfinite(row.r):  # type: ignore[attr-defined]
        return "not computable"
    excludes = _excludes_zero(row, min_n)
    if excludes is None:
        return f"not resolved ({_unresolved(row, min_n)})"
    return None if excludes else includes_zero


def _spatial_verdict(row: object, min_n: int) -> str:
    unresolved = _unresolved_verdict(row, min_n, "not resolved (the CI includes 0)")
    if unresolved is not None:
        return unresolved
    return "same direction as the papers" if row.r < 0 else "opposite to the papers"  # type: ignore[attr-defined]


def _lp_verdict(row: object, min_n: int) -> str:
    unresolved = _unresolved_verdict(
        row, min_n, "not resolved, consistent with the papers' weak relation"
    )
    if unresolved is not None:
        return unresolved
    if abs(row.r) > 2 * PAPERS["lp_abs_r"]:  # type: ignore[attr-defined]
        return "stronger than the papers' weak relation"
    return "weak, as in the papers"


def correlation_lines(
    study: Study, analysis: Analysis, options: ReportOptions, did_learn: bool | None
) -> list[str]:
    """(b) and (c): per facet, the metric that tracks FID most closely and the papers' check."""
    corr = analysis.correlations
    if corr.empty:
        return ["No correlations could be computed."]
    lines = []
    pearson = corr[corr.method == "pearson"]
    for f in _facet_meta(study).itertuples():
        rows = pearson[pearson.scope == f.facet].set_index("metric")
        finite = rows[np.isfinite(rows.r)]
        fd = short_fid(f.fid_label)
        head = f"{f.facet}: "
        if finite.empty:
            lines.append(head + "no encoder metric could be correlated with " + fd + ".")
            continue
        top = finite.loc[finite.r.abs().idxmax()]
        n = int(top.n)
        min_n = options.min_n
        excludes = _excludes_zero(top, min_n)
        ci_note = (
            "the CI excludes 0"
            if excludes
            else f"not resolved: {_unresolved(top, min_n)}"
            if excludes is None
            else "the CI includes 0: not resolved"
        )
        noise = " (these describe noise: the study did not learn)" if did_learn is False else ""
        text = (
            f"the encoder metric that tracks {fd} most closely is "
            f"{SHORT_LABELS[str(top.name)]}: Pearson {_ci(top)}, n = {n} encoders "
            f"(seed means; {ci_note}){noise}."
        )
        checks = [
            f"{SHORT_LABELS[m]} {_ci(rows.loc[m])}: {_spatial_verdict(rows.loc[m], min_n)}"
            for m in SPATIAL_METRICS
            if m in rows.index
        ]
        if "lp_top1" in rows.index:
            lp = rows.loc["lp_top1"]
            checks.append(f"LP {_ci(lp)}: {_lp_verdict(lp, min_n)}")
        text += (
            " Against the papers (higher spatial metric → lower FID): " + "; ".join(checks) + "."
        )
        lines.append(head + text)
    return lines


def baseline_lines(study: Study, noise: Noise) -> list[str]:
    """(d): are the baseline's samples data-like at the reported step?"""
    rows = reported_evals(study)
    base = rows[rows.method == BASELINE]
    if base.empty:
        return [
            "No baseline (no alignment) evaluation at the reported step: whether its "
            "samples are data-like cannot be said."
        ]
    lines = []
    several_sweeps = base.sweep.nunique() > 1
    for (sweep, model, protocol, step), g in base.groupby(
        ["sweep", "model", "protocol", "step"], sort=True
    ):
        p, r = float(g.precision.mean()), float(g.recall.mean())
        acc = float(g.class_accuracy.mean())
        chance, ceiling = chance_and_ceiling(g)
        where = (
            (f"{sweep} · " if several_sweeps else "")
            + f"{model} · step {int(step):,}"
            + (f" · {protocol}" if study.evals.protocol.nunique() > 1 else "")
        )
        measured = f"precision {_num(p)}, recall {_num(r)}"
        if np.isfinite(acc):
            measured += (
                f", class accuracy {_num(acc)} vs a ceiling of {_num(ceiling)} (the classifier "
                f"on real images; chance {_num(chance)})"
            )
        else:
            measured += ", class accuracy not measured (evaluations without it)"
        pr_zero = np.isfinite(p) and np.isfinite(r) and p <= NEAR_ZERO and r <= NEAR_ZERO
        if pr_zero or near_chance(acc, chance, ceiling):
            verdict = "not data-like"
        elif (
            np.isfinite(acc)
            and np.isfinite(ceiling)
            and acc >= DATA_LIKE * ceiling
            and (np.isfinite(p) and p > NEAR_ZERO and np.isfinite(r) and r > NEAR_ZERO)
        ):
            verdict = "data-like"
        elif not np.isfinite(acc) and np.isfinite(p) and np.isfinite(r):
            verdict = "near the real data in feature space; the classes cannot be judged"
        elif not np.isfinite(acc):
            verdict = "not judged (nothing measured)"
        else:
            verdict = "partly data-like"
        lines.append(
            f"Baseline (no alignment) samples, {where} ({len(g)} seed(s)): {measured}: {verdict}."
        )
    return lines


def summarise(study: Study, analysis: Analysis, noise: Noise, options: ReportOptions) -> Findings:
    """The first section of the report (see the module docstring)."""
    if study.evals.empty:
        lines = [
            "No training runs are evaluated in this report (encoder metrics against the papers' "
            "published gFIDs): nothing says whether alignment beat a baseline."
        ]
        lines += correlation_lines(study, analysis, options, None)
        return Findings([*lines, PAPER_SENTENCE], None)
    did_learn, why = learned(study)
    lines = []
    if did_learn is False:
        lines.append(
            f"The study did not learn: {why}. Every difference and correlation in this report "
            "describes noise, not the encoders."
        )
    elif did_learn is None:
        lines.append(
            "Precision, recall and class accuracy were not measured, so whether the models "
            "learned cannot be checked; read the differences below with that in mind."
        )
    aligned, wins = alignment_lines(study, noise, did_learn)
    lines += aligned
    lines += correlation_lines(study, analysis, options, did_learn)
    lines.append(PAPER_SENTENCE)
    lines += baseline_lines(study, noise)
    lines.append(f"Rule: {noise.rule}.")
    return Findings(lines, did_learn, why, wins)
