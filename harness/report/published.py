"""Comparison with the papers: the reproduction gap, and the encoder-only study.

*Reproduction gap*: our FID next to the published gFID wherever the settings match: the
encoder (``encoders.published_name`` = ``published.encoder``), the model size, the method, the
training steps and the CFG scale (``published.cfg`` 1.0 = no guidance).

*Encoder-only study* (``harness report --against-published``): no training at all. The encoder
metrics measured here (``spatial_metrics``, ``probes``) are correlated with the published
gFIDs of the same encoders, one facet per published table (paper, model, method, steps, CFG),
e.g. iREPA's SiT-B/2 table of 16 encoders at 400K steps. Measurements made with random weights
are never part of it: the report names the encoders it leaves out for that reason.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from harness.errors import HarnessError
from harness.metrics import SPATIAL_METRICS
from harness.report.data import (
    BASELINE,
    METHOD_LABELS,
    X_METRICS,
    Study,
    missing_metric_exclusions,
    read_table,
)

if TYPE_CHECKING:
    import duckdb

    from harness.report.options import ReportOptions

FID_METRICS = ("gfid", "fid")  # published metric names that mean FID-50K
PUBLISHED_LABEL = "published gFID"
PREFERRED_POOLING = "mean"  # the iREPA analysis probes the mean of patch tokens


def model_key(name: object) -> str:
    """Model names compared loosely: ``SiT-B/2``, ``sit_b_2`` and ``SiT B/2`` all give ``sitb2``."""
    return re.sub(r"[^0-9a-z]", "", str(name).lower())


def published_fids(published: pd.DataFrame) -> pd.DataFrame:
    """The published FIDs with numeric ``train_steps`` and ``cfg`` and a ``model_key``."""
    fids = published[published.metric.str.lower().isin(FID_METRICS)].copy()
    # Only the plain REPA / iREPA recipe with the papers' 250-step sampler is what a sweep runs:
    # rows from other recipes (REPA-E, MeanFlow) or other NFEs never pair with ours.
    note = fids.source_note.fillna("")
    other_recipe = note.str.contains("recipe=", regex=False)
    other_nfe = note.str.contains(r"NFE=\d", regex=True) & ~note.str.contains(
        "NFE=250", regex=False
    )
    fids = fids[~(other_recipe | other_nfe)]
    fids["train_steps"] = pd.to_numeric(fids.train_steps, errors="coerce")
    fids["cfg"] = pd.to_numeric(fids.cfg, errors="coerce")
    fids["model_key"] = fids.model.map(model_key)
    return fids.dropna(subset=["value", "train_steps"])


def reproduction_pairs(study: Study) -> pd.DataFrame:
    """Our FIDs (every eval step) joined with the published ones at matching settings; runs with
    random weights (encoder or VAE) are never paired with a published number."""
    fids = published_fids(study.published)
    curves = study.curves[~study.curves.random_weights] if len(study.curves) else study.curves
    if fids.empty or curves.empty:
        return pd.DataFrame()
    names = study.points[["encoder", "published_name"]].drop_duplicates("encoder")
    ours = curves.merge(names, on="encoder", how="left")
    ours = ours.merge(
        study.protocols[["protocol", "cfg_scale", "num_samples", "extractor"]], on="protocol"
    )
    ours["model_key"] = ours.model.map(model_key)
    ours["match_name"] = np.where(ours.method == BASELINE, BASELINE, ours.published_name)
    fids = fids.assign(match_name=np.where(fids.method == BASELINE, BASELINE, fids.encoder))
    pairs = ours.merge(
        fids.rename(
            columns={
                "train_steps": "step",
                "value": "published",
                "model": "published_model",
                "encoder": "published_encoder",
            }
        ),
        on=["model_key", "method", "step", "match_name"],
    )
    pairs = pairs[np.isclose(pairs.cfg_scale.astype(float), pairs.cfg.astype(float))]
    if pairs.empty:
        return pd.DataFrame()
    pairs = pairs.rename(columns={"fid": "ours"})
    pairs["gap"] = pairs.ours - pairs.published
    pairs["label"] = [
        f"{e} ({METHOD_LABELS.get(m, m)}, {int(s / 1000)}K)"
        for e, m, s in zip(pairs.encoder, pairs.method, pairs.step)
    ]
    keep = [
        "label",
        "encoder",
        "published_name",
        "model",
        "method",
        "step",
        "cfg_scale",
        "paper",
        "published",
        "ours",
        "gap",
        "fid_label",
        "protocol",
        "num_samples",
        "extractor",
        "source_note",
    ]
    return (
        pairs[keep]
        .sort_values(["model", "method", "step", "encoder", "paper"])
        .reset_index(drop=True)
    )


# ----------------------------------------------------------------------------- encoder-only study


def load_published_study(con: duckdb.DuckDBPyConnection, options: ReportOptions) -> Study:
    """Encoder metrics measured here vs published gFIDs, as a :class:`Study` of points.

    Raises:
        HarnessError: no encoder measurements, no published FIDs, or no encoder in common.
    """
    encoders = read_table(con, "encoders")
    spatial = read_table(con, "spatial_metrics")
    probes = read_table(con, "probes")
    fids = published_fids(read_table(con, "published"))
    if spatial.empty and probes.empty:
        raise HarnessError(
            "no encoder measurements yet: spatial_metrics and probes are empty",
            hint="run the `spatial` and `probe` stages of a sweep (`harness sweep encoders.yaml`), "
            "then `harness ingest`",
        )
    if fids.empty:
        raise HarnessError(
            "no published FIDs in the results database (table `published`)",
            hint="`harness ingest` loads the papers' numbers; run it, then retry",
        )
    warnings: list[str] = []
    spatial, probes, left_out = _real_weights_only(spatial, probes)
    if left_out:
        warnings.append(
            "left out: measured with random weights only, never compared with the papers: "
            + ", ".join(left_out)
        )
    metrics = _encoder_metrics(encoders, spatial, probes, warnings)
    measured = metrics.dropna(subset=["published_name"])
    if measured.empty:
        known = ", ".join(sorted(fids.encoder.unique())[:12])
        raise HarnessError(
            "no measured encoder has a published_name, so none can be matched with the papers",
            hint=f"set `published_name` in encoders.yaml (published encoders include: {known}, ...)",
        )
    points, skipped = _published_points(measured, fids, options, warnings)
    if points.empty:
        raise HarnessError(
            f"no published table has >= {options.min_published_matches} of the measured encoders",
            hint="tables and matches: " + "; ".join(skipped[:8]),
        )
    facets = points.drop_duplicates("facet")
    protocols = pd.DataFrame({"protocol": ["published"], "fid_label": [PUBLISHED_LABEL]})
    empty = pd.DataFrame()
    exclusions = missing_metric_exclusions(points)
    study = Study(
        points=points,
        baselines=pd.DataFrame(
            columns=["sweep", "model", "protocol", "step", "fid_label", "fid", "n_seeds"]
        ),
        curves=empty,
        train_curves=empty,
        protocols=protocols,
        exclusions=exclusions,
        warnings=warnings + [f"published table left out: {s}" for s in skipped],
        published=fids,
    )
    study.coverage.update(
        {
            "mode": "against-published",
            "published_tables": list(facets.facet),
            "encoders": int(points.encoder.nunique()),
            "encoders_measured": len(metrics),
            "encoders_random_weights": left_out,
        }
    )
    return study


def _real_weights_only(
    spatial: pd.DataFrame, probes: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """The real-weight measurements, and the encoders measured with random weights only.

    Raises:
        HarnessError: every measurement used random weights (nothing to compare with papers).
    """
    random = [t[t.random_weights.fillna(False).astype(bool)] for t in (spatial, probes)]
    real = [t.drop(r.index) for t, r in zip((spatial, probes), random)]
    kept = set(real[0].encoder.dropna()) | set(real[1].encoder.dropna())
    left_out = sorted((set(random[0].encoder.dropna()) | set(random[1].encoder.dropna())) - kept)
    if not kept:
        raise HarnessError(
            "every encoder measurement here was made with random weights "
            f"({', '.join(left_out)}): random-weight encoders are never compared with the "
            "papers' numbers",
            hint="measure the encoders with their real weights (a sweep without "
            "`random_weights: true`, or `harness metrics` without --random-weights), then ingest",
        )
    return real[0], real[1], left_out


def _encoder_metrics(
    encoders: pd.DataFrame, spatial: pd.DataFrame, probes: pd.DataFrame, warnings: list[str]
) -> pd.DataFrame:
    """One row per measured encoder: published_name, LP top-1 and the four spatial metrics."""
    runs = spatial.groupby(["dataset", "grid"], dropna=False).size()
    if len(runs) > 1:
        dataset, grid = runs.sort_values().index[-1]
        warnings.append(
            f"spatial metrics were measured under {len(runs)} settings (dataset, grid); "
            f"using the most common one: {dataset}, {grid}"
        )
        spatial = spatial[(spatial.dataset == dataset) & (spatial.grid == grid)]
    spatial = spatial.groupby("encoder")[list(SPATIAL_METRICS)].mean()
    poolings = set(probes.pooling.dropna())
    pooling = (
        PREFERRED_POOLING if PREFERRED_POOLING in poolings else (sorted(poolings) or [None])[0]
    )
    if poolings and pooling != PREFERRED_POOLING:
        warnings.append(
            f"no mean-pooled probe; using pooling {pooling!r} for linear-probe accuracy"
        )
    lp = probes[probes.pooling == pooling].groupby("encoder").top1.mean().rename("lp_top1")
    metrics = spatial.join(lp, how="outer")
    names = encoders.set_index("name").published_name
    metrics["published_name"] = names.reindex(metrics.index)
    return metrics.rename_axis("measured_encoder").reset_index()


def _published_points(
    measured: pd.DataFrame, fids: pd.DataFrame, options: ReportOptions, warnings: list[str]
) -> tuple[pd.DataFrame, list[str]]:
    keys = ["paper", "model", "method", "train_steps", "cfg"]
    joined = fids.merge(measured, left_on="encoder", right_on="published_name")
    out, skipped = [], []
    for (paper, model, method, steps, cfg), g in joined.groupby(keys, sort=True, dropna=False):
        facet = f"{paper} · {model} · {METHOD_LABELS.get(method, method)} · {int(steps / 1000)}K steps · cfg {cfg:g}"
        if g.encoder.nunique() < options.min_published_matches:
            skipped.append(f"{facet} ({g.encoder.nunique()} measured encoder(s))")
            continue
        doubles = g.groupby("encoder").value.agg(list)
        for name, values in doubles[doubles.map(len) > 1].items():
            warnings.append(
                f"{facet}: {len(values)} published values for {name} ({', '.join(map(str, values))}) averaged"
            )
        agg = (
            g.groupby("encoder")
            .agg(
                fid=("value", "mean"),
                measured_encoder=("measured_encoder", "first"),
                **{m: (m, "first") for m in X_METRICS},
            )
            .reset_index()
        )
        out.append(
            agg.assign(
                facet=facet,
                sweep=paper,
                model=model,
                method=method,
                protocol="published",
                step=int(steps),
                fid_label=PUBLISHED_LABEL,
                published_name=agg.encoder,
                fid_sd=np.nan,
                n_seeds=1,
                run_ids="",
            )
        )
    return (pd.concat(out, ignore_index=True) if out else pd.DataFrame()), skipped
