"""Write the report: ``figures/``, ``tables/*.csv``, ``report.md``, a self-contained ``index.html``
and ``summary.json``.

``index.html`` embeds every figure as a base64 PNG and every table as HTML, so it reads offline
from a single file; it links to the vector copies and CSVs by relative paths only.
"""

from __future__ import annotations

import base64
import html
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness import __version__
from harness.io import write_bytes, write_json, write_text
from harness.report.analysis import Analysis
from harness.report.data import BASELINE, METHOD_LABELS, SHORT_LABELS, Study
from harness.report.figures import (
    FigureOutput,
    ReportContext,
    Skipped,
    figure_style,
    freeze_layout,
)
from harness.report.findings import Findings, reported_evals, summarise
from harness.report.noise import Noise, metric_label
from harness.report.options import ReportOptions

MAX_ROWS_SHOWN = 60  # rows of a long table shown in report.md / index.html (the CSV has all)


@dataclass
class ReportFiles:
    """Where the report went and what it says."""

    out_dir: Path
    files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


# ----------------------------------------------------------------------------- formatting


def fmt_ci(r: float, low: float, high: float) -> str:
    """``-0.85 [-0.93, -0.70]``, or ``n/a`` when undefined."""
    if not np.isfinite(r):
        return "n/a"
    return f"{r:+.2f} [{low:+.2f}, {high:+.2f}]" if np.isfinite(low) else f"{r:+.2f}"


def fmt_number(value: float) -> str:
    """``50000`` for integral values, 4 significant digits otherwise, ``""`` for NaN."""
    if not np.isfinite(value):
        return ""
    return str(int(value)) if value == int(value) and abs(value) < 1e15 else f"{value:.4g}"


def fmt_p(p: float) -> str:
    return "n/a" if not np.isfinite(p) else f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def markdown_table(frame: pd.DataFrame, limit: int = MAX_ROWS_SHOWN) -> str:
    """A GitHub-flavoured Markdown table of ``frame`` (first ``limit`` rows)."""
    if frame.empty:
        return "_(none)_\n"
    shown = frame.head(limit)

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return fmt_number(value)
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(str, shown.columns)) + " |", "|" + "---|" * len(shown.columns)]
    lines += [
        "| " + " | ".join(cell(v) for v in row) + " |" for row in shown.itertuples(index=False)
    ]
    more = len(frame) - len(shown)
    return "\n".join(lines) + (f"\n\n_{more} more rows in the CSV._" if more > 0 else "") + "\n"


def headline_table(analysis: Analysis) -> pd.DataFrame:
    """One row per scope and metric: Pearson, Spearman, Kendall with CIs, p and n."""
    corr = analysis.correlations
    if corr.empty:
        return pd.DataFrame()
    rows = []
    for (scope, metric), g in corr.groupby(["scope", "metric"], sort=False):
        by = {r.method: r for r in g.itertuples()}
        p = by["pearson"]
        rows.append(
            {
                "scope": scope,
                "versus": p.fid_label,
                "metric": SHORT_LABELS.get(metric, metric),
                "Pearson r [95% CI]": fmt_ci(p.r, p.ci_low, p.ci_high),
                "Spearman ρ [95% CI]": fmt_ci(
                    by["spearman"].r, by["spearman"].ci_low, by["spearman"].ci_high
                ),
                "Kendall τ [95% CI]": fmt_ci(
                    by["kendall"].r, by["kendall"].ci_low, by["kendall"].ci_high
                ),
                "p (Pearson)": fmt_p(p.p),
                "n": int(p.n),
                "excluded": int(p.n_excluded),
            }
        )
    return pd.DataFrame(rows)


def partial_table(analysis: Analysis) -> pd.DataFrame:
    part = analysis.partial
    if part.empty:
        return pd.DataFrame()
    return pd.DataFrame(
        {
            "scope": part.scope,
            "correlation": [
                f"{fl} ~ {SHORT_LABELS[t]} | {SHORT_LABELS[c]}"
                for fl, t, c in zip(part.fid_label, part.target, part.control)
            ],
            "method": part.method,
            "r [95% CI]": [
                fmt_ci(r, lo, hi) for r, lo, hi in zip(part.r, part.ci_low, part.ci_high)
            ],
            "p": [fmt_p(p) for p in part.p],
            "n": part.n.astype(int),
        }
    )


def noise_floor_table(noise: Noise) -> pd.DataFrame:
    """The noise floor as the report shows it (one row per model, step, protocol and metric)."""
    floor = noise.floor
    if floor.empty:
        return pd.DataFrame()
    out = pd.DataFrame(
        {
            "sweep": floor.sweep,
            "model": floor.model,
            "protocol": floor.protocol,
            "step": floor.step.astype(int),
            "metric": [metric_label(m, f) for m, f in zip(floor.metric, floor.fid_label)],
            "σ (seed-to-seed)": floor.sigma.round(4),
            "df": floor.df.astype(int),
            "groups": floor.n_groups.astype(int),
            "seeds": floor.n_seeds.astype(int),
            "seeds per group": floor.seeds_per_group,
            "groups pooled": [_first(g, 4) for g in floor.groups],
        }
    )
    return out.drop(columns=["sweep"] if out.sweep.nunique() <= 1 else [])


def _first(items: str, k: int) -> str:
    """The first ``k`` of a comma-separated list, and how many more."""
    parts = [p for p in str(items).split(", ") if p]
    return ", ".join(parts[:k]) + (f" and {len(parts) - k} more" if len(parts) > k else "")


def comparison_table(noise: Noise, study: Study) -> pd.DataFrame:
    """Every stated comparison at the reported steps: Δ and whether it exceeds the floor."""
    comp = noise.comparisons
    if comp.empty:
        return pd.DataFrame()
    steps = pd.concat(
        [study.points[["sweep", "model", "step"]], study.baselines[["sweep", "model", "step"]]]
    ).drop_duplicates()
    comp = comp.merge(steps, on=["sweep", "model", "step"])
    comp = comp[(comp.metric == "fid") | (comp.kind == "vs baseline")]
    order = {"vs baseline": 0, "best vs worst": 1, "best vs runner-up": 2, "iREPA vs REPA": 3}
    comp = comp.assign(
        _k=comp.kind.map(order),
        _m=comp.metric.map({"fid": 0, "class_accuracy": 1, "precision": 2, "recall": 3}),
    )
    methods = {m: i for i, m in enumerate(METHOD_LABELS)}
    comp = comp.assign(_o=comp.method.map(methods).fillna(len(methods)))
    comp = comp.sort_values(["_m", "_k", "model", "_o", "step", "delta"])
    return pd.DataFrame(
        {
            "comparison": comp.kind,
            "model": comp.model,
            "protocol": comp.protocol,
            "step": comp.step.astype(int),
            "metric": [metric_label(m, f) for m, f in zip(comp.metric, comp.fid_label)],
            "encoder": comp.encoder,
            "method": [METHOD_LABELS.get(m, m) for m in comp.method],
            "value (n seeds)": [f"{v:.4g} ({n})" for v, n in zip(comp.value, comp.n)],
            "versus": comp.versus,
            "versus value (n)": [
                f"{v:.4g} ({n})" for v, n in zip(comp.versus_value, comp.versus_n)
            ],
            "Δ": comp.delta.round(4),
            "threshold": comp.threshold.round(4),
            "exceeds floor": comp.exceeds_floor,
            "direction": comp.direction,
        }
    )


def generation_table(study: Study) -> pd.DataFrame:
    """Generation metrics at the reported step: per facet and encoder, seed means."""
    cols = [
        "fid",
        "fid_sd",
        "n_seeds",
        "precision",
        "recall",
        "class_accuracy",
        "class_accuracy_real",
    ]
    if study.evals.empty:  # against the papers: no generation metrics of our own
        return pd.DataFrame()
    base = study.baselines.assign(method=BASELINE, encoder="(no alignment)")
    frames = [f for f in (base, study.points) if len(f)]
    if not frames:
        return pd.DataFrame()
    rows = pd.concat(
        [
            f.reindex(
                columns=["model", "method", "protocol", "step", "encoder", "fid_label", *cols]
            )
            for f in frames
        ]
    )
    return pd.DataFrame(
        {
            "model": rows.model,
            "method": [METHOD_LABELS.get(m, m) for m in rows.method],
            "protocol": rows.protocol,
            "step": rows.step.astype(int),
            "encoder": rows.encoder,
            "FID/FD (mean ± sd over seeds)": [
                f"{f:.4g}" + (f" ± {sd:.2g}" if np.isfinite(sd) else "")
                for f, sd in zip(rows.fid.astype(float), rows.fid_sd.astype(float))
            ],
            "seeds": rows.n_seeds.astype(int),
            "precision": rows.precision.astype(float).round(4),
            "recall": rows.recall.astype(float).round(4),
            "class accuracy": rows.class_accuracy.astype(float).round(4),
            "ceiling (real images)": rows.class_accuracy_real.astype(float).round(4),
        }
    )


def report_warnings(study: Study, analysis: Analysis, options: ReportOptions) -> list[str]:
    """Everything a reader must know before trusting a number."""
    out = list(study.warnings)
    evals = reported_evals(study)
    if len(evals) and not (evals.groupby(["method", "encoder"]).seed.nunique() >= 2).any():
        out.append(
            "no noise floor measured: no method/encoder group has two or more seeds at the "
            "reported step, so differences between encoders and against the baseline cannot be "
            "judged (add a `noise_floor` section with seeds to the sweep)"
        )
    if len(evals) and evals.class_accuracy.isna().all():
        out.append(
            "no sample class accuracy in these evaluations (they predate it, or the eval stage "
            "did not measure it): whether the samples show their classes is not judged"
        )
    corr = analysis.correlations
    if not corr.empty:
        small = corr[(corr.method == "pearson") & corr.small_n]
        for scope, g in small.groupby("scope", sort=False):
            ns = sorted({int(n) for n in g.n})
            out.append(
                f"{scope}: only n = {', '.join(map(str, ns))} point(s) (< {options.min_n}): "
                "correlations there are indicative only"
            )
    subs = (
        study.protocols[
            study.protocols.get("extractor_substitute", pd.Series(dtype=bool)).astype(bool)
        ]
        if "extractor_substitute" in study.protocols
        else study.protocols.iloc[:0]
    )
    for row in subs.itertuples():
        out.append(
            f"protocol {row.protocol} measures FD with a substitute extractor ({row.extractor}), "
            f"labelled '{row.fid_label}': not comparable with Inception FIDs or the papers"
        )
    if len(study.exclusions):
        counts = study.exclusions.groupby("reason").size().sort_values(ascending=False)
        summary = "; ".join(f"{n} × {reason}" for reason, n in counts.head(6).items())
        out.append(f"{len(study.exclusions)} exclusion(s) (see tables/exclusions.csv): {summary}")
    return out


# ----------------------------------------------------------------------------- writing


def write_report(
    ctx: ReportContext, outputs: list[FigureOutput | Skipped], out_dir: Path, *, source: str
) -> ReportFiles:
    """Write every file of the report into ``out_dir`` and return what was written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result = ReportFiles(
        out_dir=out_dir, warnings=report_warnings(ctx.study, ctx.analysis, ctx.options)
    )
    noise = ctx.noise
    assert noise is not None  # ReportContext computes it
    findings = summarise(ctx.study, ctx.analysis, noise, ctx.options)
    predictability = predictability_section(ctx.study, ctx.options)
    tables = {
        "predictability": predictability.table
        if predictability.table is not None
        else pd.DataFrame(),
        "noise_floor": noise.floor,
        "comparisons": noise.comparisons,
        "seed_means": noise.means,
        "evaluations": ctx.study.evals,
        "correlations": ctx.analysis.correlations,
        "partial_correlations": ctx.analysis.partial,
        "influence": ctx.analysis.influence,
        "protocols": ctx.study.protocols,
        "exclusions": ctx.study.exclusions,
        "points": ctx.study.points,
    }
    pngs: dict[str, bytes] = {}
    figures = [o for o in outputs if isinstance(o, FigureOutput)]
    result.skipped = [o for o in outputs if isinstance(o, Skipped)]
    for skipped in result.skipped:  # a figure drawn by an earlier report into out_dir is stale
        for stale in (
            *(out_dir / "figures" / f"{skipped.name}.{ext}" for ext in ("png", "svg", "pdf")),
            out_dir / "tables" / f"{skipped.name}.csv",
        ):
            stale.unlink(missing_ok=True)
    with figure_style():
        for out in figures:
            freeze_layout(out.figure)  # lay out once, not once per file format
            buffer = io.BytesIO()
            out.figure.savefig(buffer, format="png", dpi=ctx.options.dpi)
            pngs[out.name] = buffer.getvalue()
            result.files.append(_save(out_dir / "figures" / f"{out.name}.png", pngs[out.name]))
            vector = out_dir / "figures" / f"{out.name}.{ctx.options.vector_format}"
            buffer = io.BytesIO()
            out.figure.savefig(buffer, format=ctx.options.vector_format)
            result.files.append(_save(vector, buffer.getvalue()))
            tables[out.name] = out.table
    for name, frame in tables.items():
        path = out_dir / "tables" / f"{name}.csv"
        write_text(path, frame.to_csv(index=False))
        result.files.append(path)
    summary = {
        "harness_version": __version__,
        "generated_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "source": source,
        "options": ctx.options.to_dict(),
        "coverage": ctx.study.coverage,
        "findings": findings.lines,
        "learned": findings.learned,
        "noise_floor_rule": noise.rule,
        "warnings": result.warnings,
        "figures": [o.name for o in figures],
        "skipped": {s.name: s.reason for s in result.skipped},
    }
    write_json(out_dir / "summary.json", summary)
    sections = _sections(ctx, figures, result, summary, findings)
    sections.insert(_after(sections, "Correlations with FID"), predictability)
    write_text(out_dir / "report.md", _markdown(sections))
    write_text(out_dir / "index.html", _html(sections, pngs, ctx.options.vector_format))
    result.files += [out_dir / "summary.json", out_dir / "report.md", out_dir / "index.html"]
    return result


def _save(path: Path, data: bytes) -> Path:
    write_bytes(path, data)
    return path


@dataclass
class _Section:
    title: str
    text: list[str] = field(default_factory=list)  # paragraphs / bullet items (plain text)
    bullets: bool = False
    table: pd.DataFrame | None = None
    figure: FigureOutput | None = None
    links: list[str] = field(default_factory=list)  # relative paths


def _sections(
    ctx: ReportContext,
    figures: list[FigureOutput],
    result: ReportFiles,
    summary: dict[str, Any],
    findings: Findings,
) -> list[_Section]:
    cov = ctx.study.coverage
    mode = (
        "encoder metrics measured here vs the papers' published gFIDs"
        if ctx.options.against_published
        else "training runs of this harness"
    )
    covered = [f"Mode: {mode}.", f"Database: {summary['source']}."]
    covered += [
        f"{k.replace('_', ' ')}: {', '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in cov.items()
    ]
    protocols = ctx.study.protocols.drop(columns=["fid_label"], errors="ignore")
    noise = ctx.noise
    assert noise is not None
    samples = next((o for o in figures if o.name == "sample_grids"), None)
    if samples is not None:
        samples_section = _Section(
            samples.title, [samples.caption], figure=samples, links=["tables/sample_grids.csv"]
        )
    else:
        why = next((s.reason for s in result.skipped if s.name == "sample_grids"), "")
        samples_section = _Section("Generated samples", [why or "samples not found"])
    floor_text = [
        "The spread of each generation metric between training seeds of the same method and "
        "encoder, pooled over every group with two or more seeds.",
        f"Rule: {noise.rule}.",
    ]
    if noise.floor.empty:
        floor_text.insert(
            0,
            "No noise floor measured: no group has two or more seeds, so "
            "differences cannot be judged.",
        )
    sections = [
        _Section("What this study found", findings.lines, bullets=True),
        samples_section,
        _Section(
            "Seed-to-seed noise floor",
            floor_text,
            table=noise_floor_table(noise),
            links=["tables/noise_floor.csv", "tables/seed_means.csv"],
        ),
        _Section(
            "Differences against the noise floor",
            [
                "Every comparison this report states, at the reported step: each encoder against "
                "the baseline (every generation metric), and between encoders (FID/FD). "
                "'cannot be judged': no noise floor. All steps: tables/comparisons.csv."
            ],
            table=comparison_table(noise, ctx.study),
            links=["tables/comparisons.csv"],
        ),
        _Section(
            "Generation metrics at the reported step",
            [
                "Means over seeds; class accuracy: the substitute classifier's agreement with each "
                "sample's conditioning class; ceiling: the same classifier on real images."
            ],
            table=generation_table(ctx.study),
            links=["tables/points.csv", "tables/evaluations.csv"],
        ),
        _Section("What this report covers", covered, bullets=True),
        _Section(
            "Evaluation protocols", ["FIDs are pooled only within one protocol."], table=protocols
        ),
        _Section("Warnings", result.warnings or ["none"], bullets=True),
        _Section(
            "Correlations with FID",
            [
                f"{ctx.options.level:.0%} percentile-bootstrap CIs ({ctx.options.n_boot} paired resamples, "
                f"seed {ctx.options.seed}). Negative r: a higher metric goes with a lower (better) FID."
            ],
            table=headline_table(ctx.analysis),
            links=["tables/correlations.csv"],
        ),
    ]
    for out in figures:
        if out is samples:
            continue
        sections.append(
            _Section(out.title, [out.caption], figure=out, links=[f"tables/{out.name}.csv"])
        )
    sections.append(
        _Section(
            "Partial correlations",
            [
                "FID with each spatial metric controlling for linear-probe accuracy, and the reverse."
            ],
            table=partial_table(ctx.analysis),
            links=["tables/partial_correlations.csv"],
        )
    )
    infl = ctx.analysis.influence
    flagged = infl[infl.flagged] if len(infl) else infl
    sections.append(
        _Section(
            "Influential encoders (leave-one-out)",
            [
                f"Encoders whose removal changes Pearson r by more than {ctx.options.influence_threshold}."
            ],
            table=flagged.drop(columns=["fid_label", "flagged"], errors="ignore"),
            links=["tables/influence.csv"],
        )
    )
    excl = ctx.study.exclusions
    sections.append(
        _Section(
            "Exclusions",
            [f"{len(excl)} record(s) left out, by reason:"],
            table=excl.groupby("reason").size().rename("count").reset_index()
            if len(excl)
            else excl,
            links=["tables/exclusions.csv"],
        )
    )
    if result.skipped:
        sections.append(
            _Section(
                "Figures not drawn", [f"{s.name}: {s.reason}" for s in result.skipped], bullets=True
            )
        )
    sections.append(
        _Section(
            "Files",
            ["Every number above is in these CSV files."],
            links=sorted(f"tables/{p.name}" for p in result.files if p.suffix == ".csv"),
        )
    )
    return sections


def predictability_section(study: Study, options: ReportOptions) -> _Section:
    """The section 'Can spatial structure predict generation quality here?': the
    leave-one-encoder-out table of :mod:`harness.report.predict` for every facet of the study
    (``options`` is the report's; the intervals use the predictor's default level)."""
    from harness.report.predict import DEFAULT_LEVEL, MIN_ENCODERS, report_table

    table, notes = report_table(study.points, DEFAULT_LEVEL)
    text = [
        "FID predicted from each encoder metric alone (OLS), from linear-probe accuracy alone "
        "(LP), and from a ridge on the standardised metrics, scored by leave-one-encoder-out "
        "cross-validation: MAE, Spearman ρ of held-out predicted vs measured FID, and coverage "
        f"of the {DEFAULT_LEVEL:.0%} prediction intervals, each next to the mean-only "
        f"predictor on the same encoders. Facets with fewer than {MIN_ENCODERS} encoders "
        "are not fitted. `harness rank` predicts new encoders from the same fits.",
        *notes,
    ]
    return _Section(
        "Can spatial structure predict generation quality here?",
        text,
        table=table,
        links=["tables/predictability.csv"],
    )


def _after(sections: list[_Section], title: str) -> int:
    """The index just after the section called ``title`` (the end when there is none)."""
    for i, section in enumerate(sections):
        if section.title == title:
            return i + 1
    return len(sections)


def _markdown(sections: list[_Section]) -> str:
    out = ["# Encoder study report\n"]
    for s in sections:
        out.append(f"## {s.title}\n")
        out.extend((f"- {t}" if s.bullets else t) for t in s.text)
        out.append("")
        if s.figure is not None:
            out.append(f"![{s.title}](figures/{s.figure.name}.png)\n")
        if s.table is not None:
            out.append(markdown_table(s.table))
        if s.links:
            out.append("Data: " + ", ".join(f"[{link}]({link})" for link in s.links) + "\n")
    return "\n".join(out)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:12px;margin:.5em 0}th,td{border:1px solid #ccc;padding:2px 6px;text-align:left}
th{background:#f2f2f2}img{max-width:100%;border:1px solid #eee}li{margin:.2em 0}.warn li{color:#8a2b06}"""


def _html(sections: list[_Section], pngs: dict[str, bytes], vector_format: str) -> str:
    esc = html.escape
    body = ["<h1>Encoder study report</h1>"]
    for s in sections:
        body.append(f"<h2>{esc(s.title)}</h2>")
        if s.bullets:
            cls = ' class="warn"' if s.title == "Warnings" else ""
            body.append(f"<ul{cls}>" + "".join(f"<li>{esc(t)}</li>" for t in s.text) + "</ul>")
        else:
            body.extend(f"<p>{esc(t)}</p>" for t in s.text)
        if s.figure is not None:
            data = base64.b64encode(pngs[s.figure.name]).decode("ascii")
            name = s.figure.name
            body.append(f'<img alt="{esc(s.title)}" src="data:image/png;base64,{data}">')
            body.append(
                f'<p>Vector copy: <a href="figures/{name}.{vector_format}">figures/{name}.{vector_format}</a></p>'
            )
        if s.table is not None:
            body.append(_html_table(s.table))
        if s.links:
            body.append(
                "<p>Data: "
                + ", ".join(f'<a href="{esc(link)}">{esc(link)}</a>' for link in s.links)
                + "</p>"
            )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Encoder study report</title>'
        f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _html_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "<p><em>(none)</em></p>"
    shown = frame.head(MAX_ROWS_SHOWN)
    text = shown.to_html(index=False, border=0, na_rep="", float_format=fmt_number)
    more = len(frame) - len(shown)
    return text + (f"<p><em>{more} more rows in the CSV.</em></p>" if more > 0 else "")
