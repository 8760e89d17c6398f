"""The report's figures: a registry of functions ``ReportContext -> FigureOutput | Skipped``.

Every figure returns the exact data it plots as a tidy table (written to ``tables/<name>.csv``);
each panel's axes carry a ``gid`` equal to the ``panel`` column of its rows, so a test can
compare the plotted points with the table. Figures are built on standalone
:class:`matplotlib.figure.Figure` objects (no pyplot state, Agg rendering).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from harness.registry import Registry
from harness.report import stats
from harness.report.analysis import Analysis
from harness.report.data import BASELINE, METHOD_LABELS, METRIC_LABELS, X_METRICS, Study
from harness.report.labels import place_labels, place_line_label
from harness.report.noise import NO, UNJUDGED, YES, Noise, measure, short_fid
from harness.report.options import ReportOptions

PANEL_W, PANEL_H = 3.2, 2.9  # inches per scatter panel


@dataclass(frozen=True)
class ReportContext:
    """What a figure function may read."""

    study: Study
    analysis: Analysis
    options: ReportOptions
    reproduction: pd.DataFrame  # our FID vs published FID, matched settings (may be empty)
    root: Path | None = None  # the results root (sample files); None: samples not looked for
    noise: Noise | None = None  # seed-to-seed noise floor (computed from study.evals if None)

    def __post_init__(self) -> None:
        if self.noise is None:
            object.__setattr__(self, "noise", measure(self.study.evals, self.options.level))


@dataclass
class FigureOutput:
    """A rendered figure and the exact data behind it."""

    name: str  # file stem: figures/<name>.png, tables/<name>.csv
    title: str
    caption: str
    figure: Figure
    table: pd.DataFrame


@dataclass(frozen=True)
class Skipped:
    """A figure that has no data in this report, and why."""

    name: str
    reason: str


FigureFn = Callable[[ReportContext], "FigureOutput | Skipped"]
FIGURES: Registry[FigureFn] = Registry("figure")


@contextlib.contextmanager
def figure_style() -> Iterator[None]:
    """Seaborn paper style with text kept as text in vector output."""
    import matplotlib
    import seaborn as sns

    rc = {"svg.fonttype": "none", "pdf.fonttype": 42, "axes.titlesize": 7.5, "axes.labelsize": 8}
    with matplotlib.rc_context(rc), sns.axes_style("whitegrid"), sns.plotting_context("paper"):
        yield


def new_figure(
    nrows: int,
    ncols: int,
    options: ReportOptions,
    *,
    w: float = PANEL_W,
    h: float = PANEL_H,
    **kw: object,
) -> tuple[Figure, np.ndarray]:
    """A constrained-layout figure with an (nrows, ncols) array of axes."""
    fig = Figure(
        figsize=(max(4.0, w * ncols), max(2.5, h * nrows)), dpi=options.dpi, layout="constrained"
    )
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def freeze_layout(fig: Figure) -> None:
    """Run the layout once and stop it, so label offsets computed now stay valid."""
    engine = fig.get_layout_engine()
    if engine is not None:
        engine.execute(fig)
    fig.set_layout_engine("none")


def baseline_fid(
    baselines: pd.DataFrame, sweep: object, model: object, protocol: object, step: object
) -> float | None:
    """FID of the ``none`` runs matching a facet, or None."""
    if baselines.empty:
        return None
    match = baselines[
        (baselines.sweep == sweep)
        & (baselines.model == model)
        & (baselines.protocol == protocol)
        & (baselines.step == step)
    ]
    return float(match.fid.iloc[0]) if len(match) else None


def _room_above(ax: object, fid: float | None) -> None:
    """Raise the top of the y range so the baseline's label sits inside the axes."""
    if fid is None:
        return
    low, high = ax.get_ylim()  # type: ignore[attr-defined]
    span = max(high, fid) - low
    if fid > high - 0.1 * span:
        ax.set_ylim(low, fid + 0.12 * span)  # type: ignore[attr-defined]


def _draw_baseline_h(ax: object, fid: float | None) -> None:
    """The baseline's dashed line (its label: :func:`place_line_label`, once the layout is
    final)."""
    if fid is None:
        return
    ax.axhline(fid, ls="--", lw=0.8, color="0.35", zorder=1)  # type: ignore[attr-defined]


def _fid_legend(labels: pd.Series) -> str:
    """What a short ``FD`` axis label stands for (a line for the title; "" for plain FIDs)."""
    full = sorted({str(f) for f in labels if short_fid(str(f)) != str(f)})
    return "; ".join(f"{f}: not comparable with Inception FIDs" for f in full)


def _with_legend(title: str, labels: pd.Series) -> str:
    legend = _fid_legend(labels)
    return title + (f"\n{legend}" if legend else "")


def x_label(metric: str, values: pd.Series) -> str:
    """Axis label with the unit: LP accuracy in % when the values look like percentages."""
    label = METRIC_LABELS[metric]
    if metric == "lp_top1":
        label += " (%)" if np.nanmax(values.to_numpy(float), initial=0.0) > 1.5 else " (fraction)"
    return label


# ----------------------------------------------------------------------------- (1) Figure 4 style


def _scatter_with_fit(ax: object, x: np.ndarray, y: np.ndarray, level: float) -> None:
    """Points, their least-squares line and its confidence band (paper Figure 4 style)."""
    ax.scatter(x, y, s=16, color="#1f4e79", edgecolor="white", linewidths=0.4, zorder=3)  # type: ignore[attr-defined]
    grid = np.linspace(x.min(), x.max(), 60) if len(x) else np.empty(0)
    fit, low, high = stats.regression_band(x, y, grid, level)
    if np.isfinite(fit).all() and len(grid):
        ax.plot(grid, fit, color="#c0392b", lw=1.2, zorder=2)  # type: ignore[attr-defined]
        ax.fill_between(grid, low, high, color="#c0392b", alpha=0.15, lw=0, zorder=1)  # type: ignore[attr-defined]


@FIGURES.register("fid_vs_metrics")
def fid_vs_metrics(ctx: ReportContext) -> FigureOutput | Skipped:
    """FID vs LP top-1, LDS, CDS, SRSS, RMSC: one row of panels per facet."""

    points = ctx.study.points
    metrics = [m for m in X_METRICS if points[m].notna().any()]
    if points.empty or not metrics:
        return Skipped("fid_vs_metrics", "no evaluated runs with encoder metrics")
    facets = list(dict.fromkeys(points.facet))
    fig, axes = new_figure(len(facets), len(metrics), ctx.options, sharey="row")
    rows, to_label, baseline_labels = [], [], []
    for r, facet in enumerate(facets):
        group = points[points.facet == facet]
        first = group.iloc[0]
        base = baseline_fid(
            ctx.study.baselines, first.sweep, first.model, first.protocol, first.step
        )
        for c, metric in enumerate(metrics):
            ax = axes[r][c]
            panel = f"{facet}|{metric}"
            ax.set_gid(panel)
            data = group.dropna(subset=[metric, "fid"])
            if len(data):
                _scatter_with_fit(
                    ax, data[metric].to_numpy(float), data.fid.to_numpy(float), ctx.options.level
                )
                to_label.append(
                    (ax, data[metric].to_numpy(float), data.fid.to_numpy(float), list(data.encoder))
                )
            _draw_baseline_h(ax, base)
            if base is not None:
                xy = data[[metric, "fid"]].to_numpy(float).reshape(-1, 2)
                baseline_labels.append((ax, base, xy[:, 0], xy[:, 1]))
            if c == len(metrics) - 1:  # shared y: make room above the baseline's label
                _room_above(ax, base)
            note = ctx.analysis.annotation(facet, metric)
            small = len(data) < ctx.options.min_n
            head, _, n_part = note.rpartition(", n = ")
            # short symbols so that two lines fit a panel's width (the caption says which is which)
            head = head.replace("Pearson r", "r").replace("Spearman ρ", "ρ")
            title = head.replace(", ρ", "\nρ") + f", n = {n_part}"
            ax.set_title(
                title + (f"\n(n < {ctx.options.min_n}: indicative only)" if small else ""),
                color="#b03a2e" if small else "0.1",
            )
            ax.set_xlabel(x_label(metric, group[metric]))
            ax.set_ylabel(
                f"{wrap_facet(facet)}\n{short_fid(first.fid_label)} (lower is better)"
                if c == 0
                else ""
            )
            rows.extend(
                {
                    "panel": panel,
                    "facet": facet,
                    "metric": metric,
                    "encoder": e,
                    "x": x,
                    "fid": y,
                    "fid_label": first.fid_label,
                    "n_seeds": n,
                }
                for e, x, y, n in zip(data.encoder, data[metric], data.fid, data.n_seeds)
            )
    fig.suptitle(
        _with_legend(
            "Generation quality vs encoder metrics (one point per encoder, mean over seeds; "
            f"line: least squares, band: {ctx.options.level:.0%} CI)",
            points.fid_label,
        ),
        fontsize=9,
    )
    freeze_layout(fig)
    for ax, base, xs, ys in baseline_labels:
        place_line_label(ax, base, f"no alignment {base:.1f}", xs, ys)
    for ax, xs, ys, labels in to_label:
        place_labels(ax, xs, ys, labels)
    return FigureOutput(
        "fid_vs_metrics",
        "FID vs linear-probe accuracy and spatial-structure metrics",
        "Each point is an encoder (FID averaged over seeds). Titles give Pearson r and Spearman ρ "
        f"with {ctx.options.level:.0%} bootstrap CIs ({ctx.options.n_boot} resamples, seed "
        f"{ctx.options.seed}); dashed line: the run without alignment.",
        fig,
        pd.DataFrame(
            rows,
            columns=["panel", "facet", "metric", "encoder", "x", "fid", "fid_label", "n_seeds"],
        ),
    )


# ----------------------------------------------------------------------------- (2) REPA vs iREPA


@FIGURES.register("repa_vs_irepa")
def repa_vs_irepa(ctx: ReportContext) -> FigureOutput | Skipped:
    """Dumbbell plot of REPA and iREPA FID per encoder, with the relative change."""
    pts = ctx.study.points
    keys = ["sweep", "model", "protocol", "step", "fid_label"]
    if pts.empty or not {"repa", "irepa"} <= set(pts.method):
        return Skipped("repa_vs_irepa", "needs both REPA and iREPA runs evaluated at the same step")
    wide = (
        pts[pts.method.isin(["repa", "irepa"])]
        .pivot_table(index=[*keys, "encoder"], columns="method", values="fid", aggfunc="mean")
        .dropna()
        .reset_index()
    )
    if wide.empty:
        return Skipped(
            "repa_vs_irepa",
            "no encoder has both a REPA and an iREPA FID at the same step and protocol",
        )
    wide["rel_change_pct"] = 100.0 * (wide.irepa - wide.repa) / wide.repa
    assert ctx.noise is not None
    comp = ctx.noise.comparisons
    floor = comp[(comp.kind == "iREPA vs REPA") & (comp.metric == "fid")]
    on = ["sweep", "model", "protocol", "step", "encoder"]
    wide = wide.merge(floor[[*on, "exceeds_floor"]], on=on, how="left")
    wide["exceeds_floor"] = wide.exceeds_floor.fillna(UNJUDGED)
    groups = list(wide.groupby(keys, sort=True))
    heights = [max(2.0, 0.28 * len(g) + 1.0) for _, g in groups]
    fig = Figure(figsize=(7.0, sum(heights)), dpi=ctx.options.dpi, layout="constrained")
    axes = fig.subplots(len(groups), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    rows = []
    for ax, ((sweep, model, protocol, step, fid_label), g) in zip(axes, groups):
        g = g.sort_values("repa", ascending=False).reset_index(drop=True)
        panel = f"{model} · step {int(step):,} · {protocol}" + (
            f" · {sweep}" if wide.sweep.nunique() > 1 else ""
        )
        ax.set_gid(panel)
        y = np.arange(len(g))
        ax.hlines(y, g.repa, g.irepa, color="0.6", lw=1.5, zorder=1)
        ax.scatter(g.repa, y, color="#1f77b4", s=28, zorder=2, label="REPA")
        ax.scatter(g.irepa, y, color="#d62728", marker="D", s=24, zorder=3, label="iREPA")
        for yi, (a, b, rel, ok) in enumerate(
            zip(g.repa, g.irepa, g.rel_change_pct, g.exceeds_floor)
        ):
            mark = {YES: "", NO: " ≈ noise"}.get(ok, " ?")
            ax.text(
                max(a, b),
                yi,
                f"  {rel:+.1f}%{mark}",
                va="center",
                fontsize=6.5,
                color="0.2" if ok == YES else "0.55",
            )
        ax.set_yticks(y, g.encoder, fontsize=7)
        _draw_baseline_v(ax, baseline_fid(ctx.study.baselines, sweep, model, protocol, step))
        ax.set_xlabel(f"{fid_label} (lower is better)")
        ax.set_title(
            f"{panel}: REPA → iREPA, n = {len(g)}, median change {g.rel_change_pct.median():+.1f}%"
        )
        ax.legend(loc="lower right", fontsize=6.5, frameon=True)
        ax.margins(x=0.15)
        rows.extend(
            {
                "panel": panel,
                "sweep": sweep,
                "model": model,
                "protocol": protocol,
                "step": step,
                "encoder": e,
                "fid_repa": a,
                "fid_irepa": b,
                "rel_change_pct": rel,
                "exceeds_floor": ok,
                "fid_label": fid_label,
            }
            for e, a, b, rel, ok in zip(
                g.encoder, g.repa, g.irepa, g.rel_change_pct, g.exceeds_floor
            )
        )
    return FigureOutput(
        "repa_vs_irepa",
        "REPA vs iREPA per encoder",
        "Each row is an encoder: circle REPA, diamond iREPA, with the relative FID change "
        "(negative = iREPA better; '≈ noise': within the seed-to-seed noise floor, '?': no floor "
        "measured, so not judged). Dashed line: the run without alignment.",
        fig,
        pd.DataFrame(rows),
    )


def _draw_baseline_v(ax: object, fid: float | None) -> None:
    if fid is None:
        return
    ax.axvline(fid, ls="--", lw=0.8, color="0.35", zorder=0)  # type: ignore[attr-defined]
    ax.text(
        fid,
        1.0,
        " no alignment",
        transform=ax.get_xaxis_transform(),  # type: ignore[attr-defined]
        ha="left",
        va="top",
        fontsize=6,
        color="0.3",
    )


# ----------------------------------------------------------------------------- (3) convergence


def _palette(encoders: list[str]) -> dict[str, tuple[float, float, float]]:
    import seaborn as sns

    names = sorted(e for e in set(encoders) if e != BASELINE)
    colors = sns.color_palette("tab10" if len(names) <= 10 else "husl", max(1, len(names)))
    return {**dict(zip(names, colors)), BASELINE: (0.0, 0.0, 0.0)}


def _baseline_in_every_method(frame: pd.DataFrame) -> pd.DataFrame:
    """Copy the ``none`` rows into every trained method, so each panel shows the baseline."""
    trained = frame[frame.method != BASELINE]
    none = frame[frame.method == BASELINE]
    if trained.empty:
        return frame
    return pd.concat([trained] + [none.assign(method=m) for m in sorted(trained.method.unique())])


def _line_panels(
    frame: pd.DataFrame,
    panel_keys: list[str],
    quantities: list[tuple[str, str]],
    ctx: ReportContext,
) -> tuple[Figure, pd.DataFrame]:
    """Lines per encoder, one panel per key combination and quantity (wrapped, 3 per row)."""
    from matplotlib.ticker import FuncFormatter

    groups = sorted(frame.groupby(panel_keys, sort=True), key=lambda kg: _panel_order(kg[0]))
    ncols = min(4, len(groups))
    block = math.ceil(len(groups) / ncols)  # rows per quantity: each quantity starts a row
    fig, axes = new_figure(block * len(quantities), ncols, ctx.options, w=3.3, h=2.6)
    colors = _palette(list(frame.encoder))
    steps_k = FuncFormatter(lambda v, _pos: f"{v / 1000:g}K" if abs(v) >= 1000 else f"{v:g}")
    rows, legend = [], {}
    cells = []
    for q, quantity in enumerate(quantities):
        for i, (key, g) in enumerate(groups):
            cells.append((axes[q * block + i // ncols][i % ncols], key, g, quantity))
    used = {id(ax) for ax, *_ in cells}
    for ax, key, g, (column, label) in cells:
        key = key if isinstance(key, tuple) else (key,)
        title = " · ".join(METHOD_LABELS.get(str(k), str(k)) for k in key)
        panel = f"{title}|{column}"
        ax.set_gid(panel)
        for encoder, line in g.dropna(subset=[column]).groupby("encoder", sort=True):
            line = line.sort_values("step")
            baseline = encoder == BASELINE
            (handle,) = ax.plot(
                line.step,
                line[column],
                color=colors[encoder],
                lw=1.6 if baseline else 0.9,
                ls="--" if baseline else "-",
                marker="o" if len(line) <= 12 else None,
                ms=2.5,
            )
            legend.setdefault("no alignment" if baseline else encoder, handle)
            rows.extend(
                {"panel": panel, "quantity": column, "encoder": encoder, "step": s, "value": v}
                for s, v in zip(line.step, line[column])
            )
        ax.set_title(title)
        ax.set_xlabel("training step")
        ax.set_ylabel(label)
        ax.xaxis.set_major_formatter(steps_k)
    for ax in axes.flat:
        if id(ax) not in used:
            ax.set_visible(False)
    fig.legend(
        list(legend.values()),
        list(legend.keys()),
        loc="outside lower center",
        fontsize=LEGEND_FONT,
        ncols=legend_columns(fig.get_figwidth(), list(legend)),
    )
    return fig, pd.DataFrame(rows, columns=["panel", "quantity", "encoder", "step", "value"])


LEGEND_FONT = 6.5  # points


def wrap_facet(facet: str, width: int = 28) -> str:
    """A facet label (``sweep · model · method · step``) on as many lines of at most ``width``
    characters as it needs, broken at its " · " separators: a row's axis label then stays within
    its row."""
    lines, line = [], ""
    for part in facet.split(" · "):
        joined = f"{line} · {part}" if line else part
        if line and len(joined) > width:
            lines.append(line)
            line = part
        else:
            line = joined
    return "\n".join([*lines, line])


def legend_columns(width_in: float, labels: list[str], most: int = 8) -> int:
    """How many legend entries fit side by side in a figure ``width_in`` inches wide: an entry is
    its handle (~30 pt) plus its longest label at ~0.6 em per character; the rest wrap."""
    entry_pt = 30 + 0.6 * LEGEND_FONT * max((len(label) for label in labels), default=1)
    return max(1, min(most, len(labels), int(width_in * 72 // entry_pt)))


def _panel_order(key: object) -> tuple:
    """Panels in study order: model as sorted, then no alignment, REPA, iREPA, other methods."""
    order = {m: i for i, m in enumerate(METHOD_LABELS)}
    key = key if isinstance(key, tuple) else (key,)
    return tuple((order.get(str(k), len(order)), str(k)) for k in key)


@FIGURES.register("convergence")
def convergence(ctx: ReportContext) -> FigureOutput | Skipped:
    """FID vs training step per encoder, one panel per model size, method and protocol."""
    curves = ctx.study.curves
    if curves.empty or curves.step.nunique() < 2:
        return Skipped("convergence", "needs FIDs at two or more training steps")
    merged = _baseline_in_every_method(curves)
    keys = ["model", "method", "protocol"] + (["sweep"] if curves.sweep.nunique() > 1 else [])
    short = " / ".join(sorted({short_fid(f) for f in curves.fid_label}))
    fig, table = _line_panels(merged, keys, [("fid", f"{short} (lower is better)")], ctx)
    fig.suptitle(
        _with_legend(f"Convergence: {short} vs training step (mean over seeds)", curves.fid_label),
        fontsize=9,
    )
    return FigureOutput(
        "convergence",
        "FID vs training step",
        "One line per encoder; dashed black: no alignment.",
        fig,
        table,
    )


@FIGURES.register("training_curves")
def training_curves(ctx: ReportContext) -> FigureOutput | Skipped:
    """Training loss and alignment cosine vs step per encoder (from ``train_log``)."""
    curves = ctx.study.train_curves
    if curves.empty:
        return Skipped("training_curves", "no training logs in the database")
    keys = ["model", "method"] + (["sweep"] if curves.sweep.nunique() > 1 else [])
    if curves.flow_loss.notna().any():
        loss = ("flow_loss", "denoising (flow) loss")
        what = "the denoising (flow-matching) loss alone, without the λ·alignment term"
    else:  # logs written before flow_loss was logged
        loss = ("loss", "total loss (flow loss not logged)")
        what = "the total loss (these logs have no separate flow loss)"
    quantities = [loss]
    if curves.align_cos.notna().any():
        quantities.append(("align_cos", "alignment cosine ↑"))
    fig, table = _line_panels(_baseline_in_every_method(curves), keys, quantities, ctx)
    fig.suptitle("Training curves (mean over seeds)", fontsize=9)
    return FigureOutput(
        "training_curves",
        "Denoising loss and alignment curves",
        f"Top: {what}, comparable across methods; bottom: cosine between projected SiT tokens "
        "and encoder tokens (aligned runs only).",
        fig,
        table,
    )


# ----------------------------------------------------------------------------- (4) heatmap


@FIGURES.register("correlation_heatmap")
def correlation_heatmap(ctx: ReportContext) -> FigureOutput | Skipped:
    """Pearson correlations among LP, LDS, CDS, SRSS, RMSC and FID, one matrix per scope."""
    import seaborn as sns

    heat = ctx.analysis.heatmap
    if heat.empty:
        return Skipped("correlation_heatmap", "no scope with encoder metrics")
    scopes = list(dict.fromkeys(heat.scope))
    ncols = min(3, len(scopes))
    nrows = math.ceil(len(scopes) / ncols)
    fig, axes = new_figure(nrows, ncols, ctx.options, w=3.4, h=3.1)
    order = list(dict.fromkeys(heat.row))
    mesh = None
    for ax, scope in zip(axes.flat, scopes):
        cells = heat[heat.scope == scope]
        matrix = cells.pivot(index="row", columns="column", values="r").reindex(
            index=order, columns=order
        )
        sns.heatmap(
            matrix,
            ax=ax,
            vmin=-1,
            vmax=1,
            cmap="vlag",
            annot=True,
            fmt=".2f",
            square=True,
            cbar=False,
            annot_kws={"fontsize": 6.5},
            linewidths=0.5,
        )
        mesh = ax.collections[0]
        ax.set_gid(scope)
        ax.set_title(f"{scope}\nn = {int(cells.n.max())} ({cells.fid_label.iloc[0]})")
        ax.set_xlabel("")
        ax.set_ylabel("")
    for ax in axes.flat[len(scopes) :]:
        ax.set_visible(False)
    if mesh is not None:
        fig.colorbar(mesh, ax=axes, shrink=0.6, label="Pearson r")
    table = heat.rename(columns={"scope": "panel"})
    return FigureOutput(
        "correlation_heatmap",
        "Correlation heatmap",
        "Pairwise Pearson r over encoders (pairwise-complete).",
        fig,
        table,
    )


# ----------------------------------------------------------------------------- (5) reproduction gap


@FIGURES.register("reproduction_gap")
def reproduction_gap(ctx: ReportContext) -> FigureOutput | Skipped:
    """Our FID vs the published FID for the same encoder, model, method, steps and CFG."""
    pairs = ctx.reproduction
    if pairs.empty:
        return Skipped(
            "reproduction_gap",
            "no run matches a published setting (encoders.published_name, "
            "model, method, training steps and CFG scale must all match)",
        )
    fig, axes = new_figure(1, 1, ctx.options, w=5.2, h=4.6)
    ax = axes[0][0]
    ax.set_gid("reproduction_gap")
    markers = {"repa": "o", "irepa": "D", BASELINE: "X"}
    papers = sorted(pairs.paper.unique())
    colors = dict(zip(papers, ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b"] * 4))
    for (paper, method), g in pairs.groupby(["paper", "method"], sort=True):
        ax.scatter(
            g.published,
            g.ours,
            marker=markers.get(method, "s"),
            color=colors[paper],
            s=30,
            label=f"{METHOD_LABELS.get(method, method)} · {paper}",
            zorder=3,
        )
    lo = float(min(pairs.published.min(), pairs.ours.min()))
    hi = float(max(pairs.published.max(), pairs.ours.max()))
    pad = 0.05 * (hi - lo + 1.0)
    ax.plot(
        [lo - pad, hi + pad],
        [lo - pad, hi + pad],
        color="0.4",
        lw=0.8,
        ls="--",
        label="ours = published",
    )
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("published gFID")
    ax.set_ylabel(" / ".join(sorted(set(pairs.fid_label))) + " (ours)")
    ax.set_title(
        f"Reproduction gap, n = {len(pairs)} matched settings; median gap {pairs.gap.median():+.2f}"
    )
    ax.legend(fontsize=6.5, loc="upper left")
    freeze_layout(fig)
    place_labels(ax, pairs.published.to_numpy(float), pairs.ours.to_numpy(float), list(pairs.label))
    table = pairs.assign(panel="reproduction_gap")
    return FigureOutput(
        "reproduction_gap",
        "Our FID vs the published FID",
        "Points above the diagonal: our FID is worse than the paper's. Settings matched on "
        "encoder (encoders.published_name), model, method, training steps and CFG scale; "
        "sample count, reference batch and extractor may still differ (see the table).",
        fig,
        table,
    )


# ----------------------------------------------------------------------------- (6) samples


def sample_subjects(ctx: ReportContext) -> pd.DataFrame:
    """The runs whose samples are shown: per (sweep, model, protocol) the baseline and, per
    method, the best and the worst encoder by FID at the reported step (seed means); each
    with its lowest seed. Columns: sweep, model, protocol, fid_label, subject, method, encoder,
    seed, run_id."""
    evals, points = ctx.study.evals, ctx.study.points
    cols = [
        "sweep",
        "model",
        "protocol",
        "fid_label",
        "subject",
        "method",
        "encoder",
        "seed",
        "run_id",
    ]
    if evals.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    cells = evals[["sweep", "model", "protocol", "fid_label"]].drop_duplicates()
    for cell in cells.sort_values(["sweep", "model", "protocol"]).itertuples(index=False):
        mine = evals[
            (evals.sweep == cell.sweep)
            & (evals.model == cell.model)
            & (evals.protocol == cell.protocol)
        ]
        picks = [("no alignment", BASELINE, BASELINE)]
        pts = points[
            (points.sweep == cell.sweep)
            & (points.model == cell.model)
            & (points.protocol == cell.protocol)
        ]
        for method in sorted(
            pts.method.unique(),
            key=lambda m: (
                list(METHOD_LABELS).index(m) if m in METHOD_LABELS else len(METHOD_LABELS)
            ),
        ):
            ranked = (
                pts[pts.method == method].dropna(subset=["fid"]).sort_values(["fid", "encoder"])
            )
            if ranked.empty:
                continue
            name = METHOD_LABELS.get(method, method)
            picks.append((f"{name} best: {ranked.encoder.iloc[0]}", method, ranked.encoder.iloc[0]))
            if len(ranked) > 1:
                worst = ranked.encoder.iloc[-1]
                picks.append((f"{name} worst: {worst}", method, worst))
        for subject, method, encoder in picks:
            runs = mine[(mine.method == method) & (mine.encoder == encoder)]
            if runs.empty:
                continue
            first = runs.sort_values(["seed", "run_id"]).iloc[0]
            rows.append(
                {
                    **cell._asdict(),
                    "subject": subject,
                    "method": method,
                    "encoder": encoder,
                    "seed": first.seed,
                    "run_id": first.run_id,
                }
            )
    return pd.DataFrame(rows, columns=cols)


@FIGURES.register("sample_grids")
def sample_grids(ctx: ReportContext) -> FigureOutput | Skipped:
    """Generated samples of the baseline and the best and worst encoders at every eval step."""
    from harness.report.samples import MAX_CLASSES, PER_CLASS, load_grid, samples_dir

    subjects = sample_subjects(ctx)
    if subjects.empty:
        return Skipped("sample_grids", "no evaluated training runs: no samples to show")
    if ctx.root is None:
        return Skipped("sample_grids", "samples not found: the results root is not known")
    evals = ctx.study.evals
    cells = []
    for s in subjects.itertuples(index=False):
        runs = evals[(evals.run_id == s.run_id) & (evals.protocol == s.protocol)]
        for e in runs.sort_values("step").itertuples(index=False):
            path = samples_dir(ctx.root, e.eval_path)
            cells.append((s, int(e.step), float(e.fid), path, load_grid(path)))
    found = [c for c in cells if c[4].image is not None]
    if not found:
        where = ", ".join(sorted({str(c[3]) for c in cells})[:3])
        return Skipped(
            "sample_grids",
            f"samples not found: none of the {len(cells)} evaluations shown (baseline, best and "
            f"worst encoder per method) has sample files (looked in {where}, ...)",
        )
    keys = list(dict.fromkeys((s.sweep, s.model, s.protocol, s.subject) for s, *_ in cells))
    steps = sorted({step for _, step, *_ in cells})
    aspect = float(np.median([g.image.shape[0] / g.image.shape[1] for *_, g in found]))
    fig, axes = new_figure(
        len(keys), len(steps), ctx.options, w=2.9, h=max(1.1, 2.9 * aspect + 0.45)
    )
    multi_sweep = subjects.sweep.nunique() > 1
    multi_protocol = subjects.protocol.nunique() > 1
    rows = []
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        for spine in ax.spines.values():
            spine.set_visible(False)
    for s, step, fid, path, grid in cells:
        r = keys.index((s.sweep, s.model, s.protocol, s.subject))
        ax = axes[r][steps.index(step)]
        where = " · ".join(
            [
                *([str(s.sweep)] if multi_sweep else []),
                str(s.model),
                *([str(s.protocol)] if multi_protocol else []),
            ]
        )
        panel = f"{where}|{s.subject}|step {step}"
        ax.set_gid(panel)
        if grid.image is not None:
            ax.imshow(grid.image, interpolation="nearest")
        else:
            ax.text(
                0.5,
                0.5,
                "samples not found",
                ha="center",
                va="center",
                fontsize=7,
                color="#b03a2e",
                transform=ax.transAxes,
            )
        ax.set_title(f"step {step:,} · {short_fid(s.fid_label)} {fid:.1f}", fontsize=7)
        rows.append(
            {
                "panel": panel,
                "sweep": s.sweep,
                "model": s.model,
                "protocol": s.protocol,
                "subject": s.subject,
                "method": s.method,
                "encoder": s.encoder,
                "seed": s.seed,
                "run_id": s.run_id,
                "step": step,
                "fid": fid,
                "fid_label": s.fid_label,
                "n_images": grid.n_images,
                "classes": " ".join(map(str, grid.classes)),
                "status": "shown" if grid.image is not None else grid.reason,
                "path": str(path) if path is not None else "",
            }
        )
    for (sweep, model, protocol, subject), row in zip(keys, axes):
        seed = subjects[
            (subjects.sweep == sweep)
            & (subjects.model == model)
            & (subjects.protocol == protocol)
            & (subjects.subject == subject)
        ].seed.iloc[0]
        where = " · ".join(
            [
                *([str(sweep)] if multi_sweep else []),
                str(model),
                *([str(protocol)] if multi_protocol else []),
            ]
        )
        row[0].set_ylabel(f"{where}\n{subject}\n(seed {int(seed)})", fontsize=7)
    fig.suptitle(
        f"Generated samples: {PER_CLASS} per class (rows) for up to {MAX_CLASSES} classes "
        "(columns, class 0 on the left)",
        fontsize=9,
    )
    missing = sum(g.image is None for *_, g in cells)
    return FigureOutput(
        "sample_grids",
        "Generated samples",
        "Rows: the baseline and, per method, the best and the worst encoder by "
        f"{'/'.join(sorted({short_fid(f) for f in subjects.fid_label}))} at the reported step "
        "(seed means), each from its lowest seed; columns: eval steps (titles: that "
        "evaluation's value)."
        + (f" {missing} evaluation(s) without sample files: samples not found." if missing else ""),
        fig,
        pd.DataFrame(rows),
    )
