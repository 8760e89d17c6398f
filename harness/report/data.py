"""Read the results database (read-only) into tidy frames, with the protocol guard.

A *facet* is one set of comparable FIDs: a sweep, a model size, an alignment method, one
evaluation protocol and one training step. FIDs are pooled only inside a facet, so FIDs
whose protocols differ (sample count, sampler, NFE, CFG, VAE, reference statistics or
feature extractor) are never pooled: they land in separate facets and the report says why.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from harness.errors import HarnessError, StoreError, did_you_mean, format_allowed
from harness.metrics import SPATIAL_METRICS
from harness.paths import database_path
from harness.report.schema import OPTIONAL_COLUMNS, READ_CONTRACT, columns, optional_columns

if TYPE_CHECKING:
    import duckdb

    from harness.report.options import ReportOptions

# encoder-level metrics on the x axes, in the order of the paper's Figure 4
X_METRICS = ("lp_top1", *SPATIAL_METRICS)
METRIC_LABELS = {
    "lp_top1": "linear-probe top-1",
    "lds": "LDS (local vs distant sim.)",
    "cds": "CDS (corr. decay slope)",
    "srss": "SRSS (semantic-region self-sim.)",
    "rmsc": "RMSC (RMS spatial contrast)",
    "fid": "FID",
}
SHORT_LABELS = {"lp_top1": "LP", "lds": "LDS", "cds": "CDS", "srss": "SRSS", "rmsc": "RMSC"}
METHOD_LABELS = {"none": "no alignment", "repa": "REPA", "irepa": "iREPA"}
PROTOCOL_FIELDS = (
    "num_samples",
    "sampler",
    "nfe",
    "cfg_scale",
    "guidance_low",
    "guidance_high",
    "vae",
    "reference_key",
    "extractor",
)
FACET_COLUMNS = ["facet", "sweep", "model", "method", "protocol", "step", "fid_label"]
BASELINE = "none"  # the method name of runs trained without alignment
# generation metrics of an evaluation: name -> (label, lower is better); "fid" is the primary
# one (FD on a substitute extractor, FID on Inception; see each protocol's fid_label)
GEN_METRICS: dict[str, tuple[str, bool]] = {
    "fid": ("FID", True),
    "precision": ("precision", False),
    "recall": ("recall", False),
    "class_accuracy": ("class accuracy", False),
}
EVAL_COLUMNS = [  # the per-run evaluation rows kept in Study.evals
    "sweep",
    "model",
    "method",
    "encoder",
    "seed",
    "run_id",
    "step",
    "protocol",
    "fid_label",
    *GEN_METRICS,
    "class_accuracy_real",
    "num_classes",
    "eval_path",
]
STEP_COVERAGE = 0.8  # default step: the latest one with >= 80% of the best-covered step's runs
WHAT_TO_RUN = (
    "run `harness sweep encoders.yaml` (see `harness sweep --help`), then `harness ingest`"
)


@dataclass(frozen=True)
class Study:
    """Everything the report draws, as tidy frames.

    Attributes:
        points: one row per facet and encoder at the facet's step: ``FACET_COLUMNS`` +
            encoder, published_name, fid (mean over seeds), fid_sd, n_seeds, run_ids,
            and the encoder metrics ``X_METRICS``.
        baselines: ``none`` runs at each facet's (sweep, model, protocol, step): fid, n_seeds.
        curves: FID per eval step (all steps) per sweep/model/method/protocol/encoder.
        train_curves: training loss and alignment cosine per step (mean over seeds).
        protocols: one row per protocol id (P1, P2, ...) with its fields and label.
        exclusions: run_id, sweep, encoder, method, model, step, reason.
        warnings: human-readable statements the report must show.
        coverage: counts and names describing what the report covers.
        published: the ``published`` table (may be empty).
        evals: one row per run and evaluation at every step (``EVAL_COLUMNS``: the generation
            metrics of every seed, the class count and the eval artifact directory relative to
            the results root); empty against the papers.
    """

    points: pd.DataFrame
    baselines: pd.DataFrame
    curves: pd.DataFrame
    train_curves: pd.DataFrame
    protocols: pd.DataFrame
    exclusions: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    coverage: dict[str, Any] = field(default_factory=dict)
    published: pd.DataFrame = field(default_factory=pd.DataFrame)
    evals: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=EVAL_COLUMNS))


# ----------------------------------------------------------------------------- database access


@contextlib.contextmanager
def open_database(root: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection to ``root``'s database, closed on exit.

    Uses :func:`harness.store.db.open_readonly` (busy retries, schema-version check) when the
    store is installed, else a plain read-only DuckDB connection.

    Raises:
        StoreError: the database does not exist or cannot be opened.
    """
    try:
        from harness.store.db import open_readonly  # the store's own opener, when installed
    except ImportError:
        open_readonly = None
    if open_readonly is not None:
        with open_readonly(root) as con:
            yield con
        return
    import duckdb

    path = database_path(root)
    if not path.exists():
        raise StoreError(f"no results database at {path}", hint=WHAT_TO_RUN)
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        raise StoreError(
            f"cannot open {path} read-only: {exc}",
            hint="another process may hold it for writing; wait for `harness ingest` to finish",
        ) from exc
    try:
        yield con
    finally:
        con.close()


def read_table(
    con: duckdb.DuckDBPyConnection, name: str, where: str = "", params: Any = None
) -> pd.DataFrame:
    """``SELECT <contract columns> FROM name [WHERE ...]`` as a DataFrame.

    Columns of ``OPTIONAL_COLUMNS`` are read when the database has them and NaN otherwise.

    Raises:
        StoreError: the table/view or one of the contract's columns is missing.
    """
    present = {
        row[0]
        for row in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [name]
        ).fetchall()
    }
    if not present:
        raise StoreError(
            f"the results database has no table or view {name!r}",
            hint="the database predates this schema: run `harness ingest --rebuild`",
        )
    missing = [c for c in columns(name) if c not in present]
    if missing:
        raise StoreError(
            f"table {name!r} lacks column(s) {', '.join(missing)}",
            hint="the database schema differs from the report's: run `harness ingest --rebuild`",
        )
    optional = [c for c in optional_columns(name) if c in present]
    select = ", ".join(f'"{c}"' for c in [*columns(name), *optional])
    sql = f'SELECT {select} FROM "{name}"' + (f" WHERE {where}" if where else "")
    frame = con.execute(sql, params or []).df()
    for column in optional_columns(name):
        if column not in frame:
            frame[column] = np.nan
    return _typed(name, frame)


def _typed(name: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Give numeric contract columns float dtypes (NULL -> NaN) whatever DuckDB returned."""
    for column, kind in (*READ_CONTRACT[name], *OPTIONAL_COLUMNS.get(name, ())):
        if kind in ("DOUBLE", "BIGINT"):
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
        elif kind == "BOOLEAN":
            frame[column] = frame[column].astype("boolean").fillna(False).astype(bool)
        else:
            frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    return frame


# ----------------------------------------------------------------------------- the study


def load_study(con: duckdb.DuckDBPyConnection, options: ReportOptions) -> Study:
    """Read ``v_study`` and friends into a :class:`Study` for ``options.sweep`` / ``options.step``.

    Raises:
        HarnessError: no evaluations, no FID, no encoder metrics, an unknown sweep or a step
            with no FID, each with what to run or pass instead.
    """
    rows = read_table(con, "v_study")
    if rows.empty:
        raise HarnessError(
            "no evaluations yet: the v_study view of the results database is empty",
            hint=f"{WHAT_TO_RUN}; or compare encoder measurements with the papers' FIDs "
            "with `harness report --against-published`",
        )
    rows = _select_sweep(_in_every_sweep(con, rows), options.sweep)
    warnings: list[str] = []
    exclusions: list[pd.DataFrame] = []
    evals = rows[rows.fid.notna()]
    if evals.empty:
        raise HarnessError(
            f"no FID yet: {rows.run_id.nunique()} training run(s) in the database, none evaluated",
            hint="wait for the eval stages (`harness status`), then `harness ingest`",
        )
    unkeyed = evals[evals.protocol_key.isna()]
    exclusions.append(_excluded(unkeyed, "FID without a protocol_key (cannot be compared)"))
    evals = evals[evals.protocol_key.notna()]
    _require_encoder_metrics(evals, warnings)
    protocols = protocol_table(evals)
    evals = evals.merge(protocols[["protocol_key", "protocol", "fid_label"]], on="protocol_key")
    chosen, more_exclusions = _select_steps(rows, evals, options.step, warnings)
    exclusions.extend(more_exclusions)
    _explain_protocol_splits(chosen, protocols, warnings)
    chosen = chosen.assign(facet="", encoder=chosen.encoder.fillna(BASELINE))
    multi = {
        "sweep": chosen.sweep.nunique() > 1,
        "protocol": chosen.protocol.nunique() > 1,
    }
    chosen["facet"] = [facet_label(r, multi) for r in chosen.itertuples()]
    trained = chosen[chosen.method != BASELINE]
    points = _points(trained)  # one point per encoder: the mean over its seeds
    exclusions.append(missing_metric_exclusions(points))
    study = Study(
        points=points,
        baselines=_baselines(chosen[chosen.method == BASELINE]),
        curves=_curves(evals),
        train_curves=_train_curves(con, options.sweep),
        protocols=protocols,
        exclusions=pd.concat(
            [e for e in exclusions if len(e)] or [_excluded(rows.iloc[:0], "")], ignore_index=True
        ),
        warnings=warnings,
        published=read_table(con, "published"),
        evals=_eval_rows(con, evals),
    )
    study.coverage.update(_coverage(rows, chosen, protocols))
    return study


# (run_id, sweep) for every sweep whose plan lists the run's training stage
_RUN_SWEEPS = """
    SELECT DISTINCT coalesce(labels->>'$.run_id', stage_key) AS run_id, sweep
    FROM plan_stages WHERE stage = 'train'
"""


def _in_every_sweep(con: duckdb.DuckDBPyConnection, rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` (one per run and step, ``sweep`` = the first sweep that planned the run) with a
    copy for every other sweep whose plan lists the same run: a stage two sweeps share (by
    content key) belongs to both studies, e.g. the quick CPU study's runs in cpu-study-full."""
    pairs = con.execute(_RUN_SWEEPS).df()
    extra = pairs.merge(rows[["run_id", "sweep"]].drop_duplicates(), how="left",
                        on=["run_id", "sweep"], indicator=True)  # fmt: skip
    extra = extra[extra["_merge"] == "left_only"][["run_id", "sweep"]]
    if extra.empty:
        return rows
    copies = rows.drop(columns="sweep").merge(extra, on="run_id")[rows.columns]
    return pd.concat([rows, copies], ignore_index=True)


def _select_sweep(rows: pd.DataFrame, sweep: str | None) -> pd.DataFrame:
    if sweep is None:
        return rows
    known = sorted(rows.sweep.dropna().unique())
    if sweep not in known:
        raise HarnessError(
            f"unknown sweep {sweep!r} in the results database{did_you_mean(sweep, known)}",
            hint=f"sweeps with results: {format_allowed(known)}",
        )
    return rows[rows.sweep == sweep]


def _require_encoder_metrics(evals: pd.DataFrame, warnings: list[str]) -> None:
    trained = evals[evals.method != BASELINE]
    if trained.empty:
        raise HarnessError(
            "only `none` (no alignment) runs have FIDs: nothing to correlate",
            hint="run REPA / iREPA training and eval stages (`harness sweep ...`), then `harness ingest`",
        )
    missing = [m for m in X_METRICS if trained[m].isna().all()]
    if len(missing) == len(X_METRICS):
        raise HarnessError(
            "no encoder metrics (linear probe, LDS, CDS, SRSS, RMSC) for any evaluated run",
            hint="run the `spatial` and `probe` stages of the sweep (`harness sweep ...`), "
            "then `harness ingest`",
        )
    for metric in missing:
        stage = "probe" if metric == "lp_top1" else "spatial"
        warnings.append(
            f"no {METRIC_LABELS[metric]} measured for any encoder: its panels are empty "
            f"(run the `{stage}` stage, then `harness ingest`)"
        )


def protocol_table(evals: pd.DataFrame) -> pd.DataFrame:
    """One row per ``protocol_key``: id ``P1..`` (most evaluations first), fields and FID label."""
    grouped = evals.groupby("protocol_key", sort=False)
    table = grouped[[*PROTOCOL_FIELDS, "extractor_substitute"]].first()
    table["n_evals"] = grouped.size()
    table["n_runs"] = grouped.run_id.nunique()
    table = table.reset_index().sort_values(["n_evals", "protocol_key"], ascending=[False, True])
    table.insert(0, "protocol", [f"P{i + 1}" for i in range(len(table))])
    table["fid_label"] = [
        f"FD (substitute extractor: {ex})" if sub else "FID"
        for ex, sub in zip(table.extractor, table.extractor_substitute)
    ]
    return table.reset_index(drop=True)


def _select_steps(
    rows: pd.DataFrame, evals: pd.DataFrame, step: int | None, warnings: list[str]
) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """Pick one eval step per (sweep, model): ``step``, or the latest well-covered one."""
    if step is not None:
        chosen = evals[evals.step == step]
        if chosen.empty:
            steps = sorted(int(s) for s in evals.step.unique())
            raise HarnessError(
                f"no FID at step {step}",
                hint=f"steps with FIDs: {', '.join(map(str, steps))} (or omit --step)",
            )
        for (sweep, model), _ in evals.groupby(["sweep", "model"]):
            if not ((chosen.sweep == sweep) & (chosen.model == model)).any():
                warnings.append(f"{sweep} / {model}: no FID at step {step}; left out")
    else:
        chosen = evals.merge(_latest_well_covered_steps(evals), on=["sweep", "model", "step"])
    picked = chosen[["sweep", "model", "step"]].drop_duplicates()
    scope = rows.merge(picked[["sweep", "model"]], on=["sweep", "model"])
    has_fid = set(chosen.run_id)
    late = scope[~scope.run_id.isin(has_fid)].drop_duplicates("run_id")
    late = late.merge(picked.rename(columns={"step": "chosen_step"}), on=["sweep", "model"])
    late = late.assign(step=late.chosen_step)
    return chosen, [_excluded(late, "no FID at step {step} (training {status})")]


def _latest_well_covered_steps(evals: pd.DataFrame) -> pd.DataFrame:
    """Per (sweep, model): the latest step at which at least ``STEP_COVERAGE`` of the most runs
    evaluated at any step have a FID, so one late or failed run does not pin an early step."""
    covered = (
        evals.groupby(["sweep", "model", "step"]).run_id.nunique().rename("runs").reset_index()
    )
    best = covered.groupby(["sweep", "model"]).runs.transform("max")
    eligible = covered[covered.runs >= STEP_COVERAGE * best]
    return eligible.groupby(["sweep", "model"]).step.max().reset_index()


def _explain_protocol_splits(
    chosen: pd.DataFrame, protocols: pd.DataFrame, warnings: list[str]
) -> None:
    fields = protocols.set_index("protocol")
    for (sweep, model, step), group in chosen.groupby(["sweep", "model", "step"]):
        ids = sorted(group.protocol.unique())
        if len(ids) < 2:
            continue
        diffs = []
        for name in (*PROTOCOL_FIELDS, "extractor_substitute"):
            values = [_plain(fields.at[i, name]) for i in ids]
            if len(set(values)) > 1:
                diffs.append(f"{name} ({' vs '.join(values)})")
        runs = ", ".join(f"{i}: {group[group.protocol == i].run_id.nunique()} runs" for i in ids)
        warnings.append(
            f"{sweep} / {model} / step {int(step):,}: FIDs come from {len(ids)} evaluation "
            f"protocols ({runs}) that differ in {'; '.join(diffs) or 'protocol_key only'}; "
            "they are reported separately and never pooled"
        )


def _plain(value: Any) -> str:
    """A protocol value as a reader expects it (``50000``, not ``50000.0``)."""
    if isinstance(value, float) and np.isfinite(value) and value == int(value):
        return str(int(value))
    return str(value)


def facet_label(row: Any, multi: dict[str, bool]) -> str:
    """``SiT-B/2 · REPA · step 100,000`` (+ protocol / sweep when the report has several)."""
    parts = [
        str(row.model),
        METHOD_LABELS.get(row.method, str(row.method)),
        f"step {int(row.step):,}",
    ]
    if multi.get("protocol"):
        parts.append(str(row.protocol))
    if multi.get("sweep"):
        parts.insert(0, str(row.sweep))
    return " · ".join(parts)


_SEED_MEANS = {  # per (facet, encoder): generation metrics averaged over seeds
    "fid": ("fid", "mean"),
    "fid_sd": ("fid", "std"),
    "n_seeds": ("run_id", "nunique"),
    "precision": ("precision", "mean"),
    "recall": ("recall", "mean"),
    "class_accuracy": ("class_accuracy", "mean"),
    "class_accuracy_real": ("class_accuracy_real", "mean"),
}


def _points(trained: pd.DataFrame) -> pd.DataFrame:
    """One row per facet and encoder; several seeds of an encoder are averaged (never several
    points), so correlations across encoders count each encoder once."""
    keys = [*FACET_COLUMNS, "encoder"]
    grouped = trained.groupby(keys, sort=True, dropna=False)
    points = grouped.agg(
        published_name=("published_name", "first"),
        **_SEED_MEANS,
        **{m: (m, "mean") for m in X_METRICS},
    )
    points["run_ids"] = grouped.run_id.agg(lambda ids: " ".join(sorted(set(ids))))
    return points.reset_index()


def _baselines(none_rows: pd.DataFrame) -> pd.DataFrame:
    keys = ["sweep", "model", "protocol", "step", "fid_label"]
    if none_rows.empty:
        return pd.DataFrame(columns=[*keys, *_SEED_MEANS])
    grouped = none_rows.groupby(keys)
    return grouped.agg(**_SEED_MEANS).reset_index()


def _eval_rows(con: duckdb.DuckDBPyConnection, evals: pd.DataFrame) -> pd.DataFrame:
    """``evals`` (every step) with the class count and each evaluation's artifact directory."""
    for name in ("evaluations", "stages"):
        read_table(con, name, where="false")  # checks the contract; reads nothing
    where = con.execute(
        """SELECT e.run_id, e.step, e.protocol_key,
                  coalesce(s.path, 'stages/eval/' || e.stage_key) AS eval_path
           FROM evaluations e LEFT JOIN stages s ON s.key = e.stage_key"""
    ).df()
    classes = con.execute(
        "SELECT run_id, TRY_CAST(json_extract_string(config, '$.run.data.num_classes') AS BIGINT)"
        " AS num_classes FROM runs"
    ).df()
    rows = evals.assign(encoder=evals.encoder.fillna(BASELINE))
    if len(where):
        where["step"] = pd.to_numeric(where.step).astype("float64")
        rows = rows.merge(where, on=["run_id", "step", "protocol_key"], how="left")
    else:
        rows = rows.assign(eval_path=None)
    rows = rows.merge(classes, on="run_id", how="left")
    rows["num_classes"] = pd.to_numeric(rows.num_classes, errors="coerce").astype("float64")
    return rows[EVAL_COLUMNS].reset_index(drop=True)


def _curves(evals: pd.DataFrame) -> pd.DataFrame:
    keys = [
        "sweep",
        "model",
        "method",
        "protocol",
        "fid_label",
        "encoder",
        "random_weights",
        "step",
    ]
    random = evals.random_weights.astype("boolean").fillna(False).astype(bool)
    grouped = evals.assign(encoder=evals.encoder.fillna(BASELINE), random_weights=random).groupby(
        keys
    )
    return grouped.agg(fid=("fid", "mean"), n_seeds=("run_id", "nunique")).reset_index()


def _train_curves(con: duckdb.DuckDBPyConnection, sweep: str | None) -> pd.DataFrame:
    for name in ("train_log", "runs"):
        read_table(con, name, where="false")  # checks the contract; reads nothing
    sql = f"""
        WITH run_sweeps AS ({_RUN_SWEEPS}
            UNION SELECT run_id, sweep FROM runs
        )
        SELECT s.sweep, r.model, r.method, coalesce(r.encoder, ?) AS encoder, t.step,
               avg(t.loss) AS loss, avg(t.flow_loss) AS flow_loss, avg(t.proj_loss) AS proj_loss,
               avg(t.align_cos) AS align_cos, count(DISTINCT t.run_id) AS n_runs
        FROM train_log t JOIN runs r USING (run_id) JOIN run_sweeps s USING (run_id)
        WHERE (? IS NULL OR s.sweep = ?)
        GROUP BY ALL ORDER BY ALL
    """
    frame = con.execute(sql, [BASELINE, sweep, sweep]).df()
    for column in ("step", "loss", "flow_loss", "proj_loss", "align_cos", "n_runs"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    return frame


def _excluded(rows: pd.DataFrame, reason: str) -> pd.DataFrame:
    """Exclusion records (one per run) with ``reason`` formatted from each row's fields."""
    keep = ["run_id", "sweep", "encoder", "method", "model", "step"]
    out = rows.drop_duplicates("run_id")[[*keep, "train_status"]].copy()
    out["reason"] = [
        reason.format(status=s, step=int(st) if pd.notna(st) else "?")
        for s, st in zip(out.train_status, out.step)
    ]
    return out[[*keep, "reason"]]


def missing_metric_exclusions(points: pd.DataFrame) -> pd.DataFrame:
    """One exclusion record per (facet, encoder, metric) whose encoder metric is missing."""
    records = []
    for metric in X_METRICS:
        missing = points[points[metric].isna()]
        for row in missing.itertuples():
            records.append(
                {
                    "run_id": row.run_ids,
                    "sweep": row.sweep,
                    "encoder": row.encoder,
                    "method": row.method,
                    "model": row.model,
                    "step": row.step,
                    "reason": f"{SHORT_LABELS[metric]} missing (left out of its {row.facet} panel)",
                }
            )
    return pd.DataFrame(
        records, columns=["run_id", "sweep", "encoder", "method", "model", "step", "reason"]
    )


def _coverage(rows: pd.DataFrame, chosen: pd.DataFrame, protocols: pd.DataFrame) -> dict[str, Any]:
    return {
        "sweeps": sorted(rows.sweep.dropna().unique()),
        "models": sorted(rows.model.dropna().unique()),
        "methods": sorted(rows.method.dropna().unique()),
        "encoders": int(rows.encoder.dropna().nunique()),
        "runs": int(rows.run_id.nunique()),
        "runs_in_correlations": int(chosen.run_id.nunique()),
        "eval_rows": len(rows),
        "protocols": list(protocols.protocol),
        "steps": sorted(int(s) for s in chosen.step.unique()),
    }
