"""Can an encoder's metrics predict the FID a REPA SiT reaches with it? Fits, honest errors,
predictions with intervals, and the predicted-vs-measured figure (``harness rank``, report).

Every fit is done by a library, nothing by hand:

* ``mean-only``: ``statsmodels`` OLS on a constant, the baseline every model is compared with;
* one model per encoder metric (LDS, CDS, SRSS, RMSC, and ``LP`` = linear-probe top-1 alone):
  ``statsmodels`` OLS ``FID ~ 1 + metric`` with its classical prediction interval
  (``get_prediction(...).conf_int(obs=True)``);
* ``ridge``: ``scikit-learn`` ``BayesianRidge`` on the standardised metrics (``StandardScaler``)
  that every encoder of the fit has, with the posterior predictive standard deviation
  (``predict(return_std=True)``) giving a normal interval.

Honesty: every model is scored by leave-one-encoder-out cross-validation (each encoder is
predicted by the model fitted on all the others): MAE, Spearman ρ of predicted vs measured FID
(:func:`harness.report.stats.spearman`) and the coverage of the prediction intervals, always
next to the mean-only predictor scored on the same encoders. A fit on fewer than
``MIN_ENCODERS`` encoders, or on FIDs of more than one protocol (one *facet*: sweep, model,
method, evaluation protocol and step; or one published table), is refused with a
:class:`~harness.errors.HarnessError` (exit 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from harness.errors import HarnessError
from harness.report import stats
from harness.report.data import SHORT_LABELS, X_METRICS
from harness.store.predictions import CV_FIELDS

MIN_ENCODERS = 5  # a fit needs FIDs of at least this many encoders
DEFAULT_LEVEL = 0.9  # nominal coverage of the prediction intervals
MEAN_ONLY = "mean-only"
RIDGE = "ridge"
CV_COLUMNS = list(CV_FIELDS)


@dataclass(frozen=True)
class Model:
    """One predictor of FID: its name and the encoder metrics it uses."""

    name: str  # mean-only | lds | cds | srss | rmsc | lp_top1 | ridge
    features: tuple[str, ...]  # encoder metrics (empty for mean-only)

    @property
    def label(self) -> str:
        if self.name == MEAN_ONLY:
            return "mean-only"
        if self.name == RIDGE:
            return "ridge(" + "+".join(SHORT_LABELS.get(f, f) for f in self.features) + ")"
        return SHORT_LABELS.get(self.name, self.name)


class _Fitted:
    """A fitted model: ``predict(X, level) -> (mean, low, high)`` arrays."""

    def __init__(self, model: Model, x: np.ndarray, y: np.ndarray) -> None:
        self.model = model
        if model.name == RIDGE:
            from sklearn.linear_model import BayesianRidge
            from sklearn.pipeline import make_pipeline
            from sklearn.preprocessing import StandardScaler

            self.fit = make_pipeline(StandardScaler(), BayesianRidge()).fit(x, y)
        else:
            import statsmodels.api as sm

            self.fit = sm.OLS(y, self._design(x)).fit()

    @staticmethod
    def _design(x: np.ndarray) -> np.ndarray:
        return np.column_stack([np.ones(len(x)), x])  # constant (+ the metric)

    def predict(self, x: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.model.name == RIDGE:
            from scipy.stats import norm

            mean, std = self.fit.predict(x, return_std=True)
            half = norm.ppf(0.5 + level / 2) * std
            return mean, mean - half, mean + half
        prediction = self.fit.get_prediction(self._design(x))
        bounds = np.asarray(prediction.conf_int(obs=True, alpha=1.0 - level))
        return np.asarray(prediction.predicted_mean), bounds[:, 0], bounds[:, 1]


def fit(model: Model, x: np.ndarray, y: np.ndarray) -> _Fitted:
    """Fit ``model`` on features ``x`` (n, k; k = 0 for mean-only) and FIDs ``y`` (n,)."""
    return _Fitted(model, np.asarray(x, np.float64).reshape(len(y), -1), np.asarray(y, np.float64))


def models_for(points: pd.DataFrame) -> list[Model]:
    """Mean-only, one OLS per encoder metric present, and the ridge on every metric that every
    encoder of ``points`` has (at least two of them)."""
    present = [m for m in X_METRICS if m in points and points[m].notna().any()]
    complete = [m for m in present if points[m].notna().all()]
    models = [Model(MEAN_ONLY, ()), *(Model(m, (m,)) for m in present)]
    if len(complete) >= 2:
        models.append(Model(RIDGE, tuple(complete)))
    return models


# ----------------------------------------------------------------------------- the guard


def check_fit_points(points: pd.DataFrame, *, min_encoders: int = MIN_ENCODERS) -> None:
    """Refuse points that span several protocols (facets) or hold too few encoders.

    Raises:
        HarnessError: more than one facet or protocol; fewer than ``min_encoders`` encoders
            with a finite FID.
    """
    for column in ("protocol", "facet"):
        if column in points and points[column].nunique() > 1:
            counts = points.groupby(column).encoder.nunique().sort_values(ascending=False)
            listed = "; ".join(f"{k}: {v} encoders" for k, v in counts.head(8).items())
            listed += f"; ... ({len(counts) - 8} more)" if len(counts) > 8 else ""
            raise HarnessError(
                f"the FIDs to fit come from {len(counts)} different {column}s ({listed}); "
                "FIDs of different protocols are never pooled into one fit",
                hint="choose one with --model / --method / --step / --protocol (a sweep) or "
                "--paper / --cfg (published tables); `harness report` lists the protocols",
            )
    usable = points[np.isfinite(points.fid.to_numpy(np.float64))]
    n = usable.encoder.nunique()
    if n < min_encoders:
        raise HarnessError(
            f"only {n} encoder(s) have a FID to fit ({', '.join(sorted(usable.encoder)) or 'none'}); "
            f"a fit needs at least {min_encoders}",
            hint="train and evaluate more encoders (`harness sweep`), or fit against the "
            "published gFIDs (--against published)",
        )


# ----------------------------------------------------------------------------- cross-validation


def _rows(points: pd.DataFrame, model: Model) -> pd.DataFrame:
    """The points a model can use: finite FID and finite features."""
    keep = np.isfinite(points.fid.to_numpy(np.float64))
    for feature in model.features:
        keep &= np.isfinite(points[feature].to_numpy(np.float64))
    return points[keep]


def leave_one_out(points: pd.DataFrame, model: Model, level: float = DEFAULT_LEVEL) -> pd.DataFrame:
    """Each encoder predicted by ``model`` fitted on every other encoder.

    Returns:
        encoder, measured, predicted, low, high, covered (one row per usable encoder).
    """
    rows = _rows(points, model)
    x = rows[list(model.features)].to_numpy(np.float64)  # (n, k)
    y = rows.fid.to_numpy(np.float64)  # (n,)
    out = []
    for i in range(len(rows)):
        keep = np.arange(len(rows)) != i
        mean, low, high = fit(model, x[keep], y[keep]).predict(x[i : i + 1], level)
        out.append(
            {
                "encoder": rows.encoder.iloc[i],
                "measured": y[i],
                "predicted": float(mean[0]),
                "low": float(low[0]),
                "high": float(high[0]),
            }
        )
    frame = pd.DataFrame(out, columns=["encoder", "measured", "predicted", "low", "high"])
    frame["covered"] = (frame.low <= frame.measured) & (frame.measured <= frame.high)
    return frame


def _scores(loo: pd.DataFrame) -> dict[str, float]:
    error = (loo.predicted - loo.measured).to_numpy(np.float64)
    rho, _ = stats.spearman(loo.predicted.to_numpy(np.float64), loo.measured.to_numpy(np.float64))
    return {
        "mae": float(np.mean(np.abs(error))),
        "rmse": float(np.sqrt(np.mean(error**2))),
        "spearman": rho,
        "coverage": float(loo.covered.mean()),
    }


@dataclass(frozen=True)
class CrossValidation:
    """Leave-one-encoder-out results of every model.

    Attributes:
        table: one row per model (``CV_COLUMNS``): n, MAE, RMSE, Spearman ρ, coverage, and the
            mean-only predictor's MAE / ρ / coverage on the same encoders.
        held_out: model, model_label + the :func:`leave_one_out` columns, every model.
        level: nominal coverage of the intervals.
    """

    table: pd.DataFrame
    held_out: pd.DataFrame
    level: float

    def best(self) -> str | None:
        """The model (not mean-only) with the lowest MAE that beats mean-only; None if none."""
        rivals = self.table[(self.table.model != MEAN_ONLY) & self.table.beats_mean_only]
        return None if rivals.empty else str(rivals.sort_values("mae").model.iloc[0])


def cross_validate(
    points: pd.DataFrame,
    models: list[Model] | None = None,
    level: float = DEFAULT_LEVEL,
    *,
    min_encoders: int = MIN_ENCODERS,
) -> CrossValidation:
    """Leave-one-encoder-out cross-validation of ``models`` (default :func:`models_for`).

    Args:
        points: one row per encoder: encoder, fid, the encoder metrics (and facet / protocol,
            checked by :func:`check_fit_points`).
        models: the predictors; level: nominal interval coverage.
        min_encoders: models with fewer usable encoders get a note and no scores.

    Raises:
        HarnessError: see :func:`check_fit_points`.
    """
    check_fit_points(points, min_encoders=min_encoders)
    models = models if models is not None else models_for(points)
    table, held = [], []
    for model in models:
        rows = _rows(points, model)
        record: dict[str, Any] = {
            "model": model.label,
            "features": ",".join(model.features),
            "n": len(rows),
            "note": "",
        }
        if len(rows) < min_encoders:
            record["note"] = f"{len(rows)} encoders have {model.label}: fewer than {min_encoders}"
            table.append(record)
            continue
        loo = leave_one_out(rows, model, level)
        base = leave_one_out(rows, Model(MEAN_ONLY, ()), level)
        scores, base_scores = _scores(loo), _scores(base)
        record.update(scores)
        record.update({f"{k}_mean_only": base_scores[k] for k in ("mae", "spearman", "coverage")})
        record["beats_mean_only"] = bool(scores["mae"] < base_scores["mae"])
        table.append(record)
        held.append(loo.assign(model=model.label, features=",".join(model.features)))
    frame = pd.DataFrame(table).reindex(columns=CV_COLUMNS)
    frame["beats_mean_only"] = frame.beats_mean_only.astype("boolean").fillna(False).astype(bool)
    held_out = pd.concat(held, ignore_index=True) if held else pd.DataFrame()
    return CrossValidation(table=frame, held_out=held_out, level=level)


# ----------------------------------------------------------------------------- predictions


def predict(
    points: pd.DataFrame,
    candidates: pd.DataFrame,
    models: list[Model] | None = None,
    level: float = DEFAULT_LEVEL,
) -> pd.DataFrame:
    """Predicted FID of every candidate encoder (no FID of its own) under every model,
    fitted on all of ``points``.

    Returns:
        encoder, model, features, predicted, low, high, n_train (candidates lacking a model's
        metric get no row for that model).
    """
    models = models if models is not None else models_for(points)
    out = []
    for model in models:
        rows = _rows(points, model)
        if len(rows) < 2 or candidates.empty:
            continue
        usable = candidates.dropna(subset=list(model.features)) if model.features else candidates
        if usable.empty:
            continue
        fitted = fit(model, rows[list(model.features)].to_numpy(np.float64), rows.fid.to_numpy())
        mean, low, high = fitted.predict(usable[list(model.features)].to_numpy(np.float64), level)
        for name, m, lo, hi in zip(usable.encoder, mean, low, high):
            out.append(
                {
                    "encoder": name,
                    "model": model.label,
                    "features": ",".join(model.features),
                    "predicted": float(m),
                    "low": float(lo),
                    "high": float(hi),
                    "n_train": len(rows),
                }
            )
    columns = ["encoder", "model", "features", "predicted", "low", "high", "n_train"]
    return pd.DataFrame(out, columns=columns)


def ranked(predictions: pd.DataFrame, model: str) -> pd.DataFrame:
    """The candidates ranked by ``model``'s predicted FID (1 = best, i.e. lowest)."""
    mine = predictions[predictions.model == model].sort_values("predicted").reset_index(drop=True)
    return mine.assign(rank=np.arange(1, len(mine) + 1))


# ----------------------------------------------------------------------------- report helpers


def cv_display(cv: CrossValidation) -> pd.DataFrame:
    """The cross-validated table as the report and the CLI show it."""
    table = cv.table
    return pd.DataFrame(
        {
            "model": table.model,
            "n": table.n,
            "MAE": table.mae,
            "MAE mean-only": table.mae_mean_only,
            "Spearman ρ": table.spearman,
            f"coverage ({cv.level:.0%} PI)": table.coverage,
            "beats mean-only": np.where(table.beats_mean_only, "yes", "no"),
            "note": table.note,
        }
    )


def predictability(points: pd.DataFrame, level: float = DEFAULT_LEVEL) -> list[dict[str, Any]]:
    """Cross-validation per facet of a study's points (the report's section): a list of
    ``{"facet", "cv" (CrossValidation) or None, "note"}``; facets that cannot be fitted say why."""
    out: list[dict[str, Any]] = []
    for facet, group in points.groupby("facet", sort=False):
        try:
            cv = cross_validate(group.drop(columns=["protocol"], errors="ignore"), level=level)
        except HarnessError as exc:
            out.append({"facet": facet, "cv": None, "note": exc.message})
            continue
        out.append({"facet": facet, "cv": cv, "note": ""})
    return out


def predicted_vs_measured_figure(
    cv: CrossValidation,
    models: list[str],
    predictions: pd.DataFrame | None = None,
    *,
    title: str = "",
    fid_label: str = "FID",
) -> Any:
    """Held-out (leave-one-encoder-out) predicted vs measured FID with intervals, one panel per
    model; candidates (no measured FID) are drawn as intervals on the right edge of each panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in models if m in set(cv.held_out.get("model", pd.Series(dtype=str)))]
    fig, axes = plt.subplots(1, max(1, len(models)), figsize=(4.2 * max(1, len(models)), 4.0))
    axes = np.atleast_1d(axes)
    for ax, name in zip(axes, models):
        held = cv.held_out[cv.held_out.model == name]
        err = np.vstack([held.predicted - held.low, held.high - held.predicted])
        colors = np.where(held.covered, "tab:blue", "tab:red")
        ax.errorbar(held.measured, held.predicted, yerr=err, fmt="none", ecolor="0.6", lw=1)
        ax.scatter(held.measured, held.predicted, c=list(colors), s=22, zorder=3)
        for row in held.itertuples():
            ax.annotate(str(row.encoder), (row.measured, row.predicted), fontsize=6, alpha=0.7)
        lims = [
            float(np.nanmin([held.measured.min(), held.low.min()])),
            float(np.nanmax([held.measured.max(), held.high.max()])),
        ]
        ax.plot(lims, lims, "k--", lw=0.8)
        if predictions is not None and len(predictions):
            mine = predictions[predictions.model == name]
            x = np.full(len(mine), lims[1])
            ax.errorbar(
                x,
                mine.predicted,
                yerr=np.vstack([mine.predicted - mine.low, mine.high - mine.predicted]),
                fmt="D",
                color="tab:green",
                ms=4,
                lw=1,
                label="candidates (no FID)",
            )
            ax.legend(fontsize=7, loc="upper left")
        row = cv.table[cv.table.model == name].iloc[0]
        ax.set_title(
            f"{name}: MAE {row.mae:.3g} (mean-only {row.mae_mean_only:.3g}), "
            f"ρ {row.spearman:.2f}, cov. {row.coverage:.0%}",
            fontsize=8,
        )
        ax.set_xlabel(f"measured {fid_label}")
        ax.set_ylabel(f"held-out predicted {fid_label}")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- the published join


@dataclass(frozen=True)
class PublishedJoin:
    """How published encoder names map to catalogue entries (``published_name``).

    Attributes:
        mapped: published name -> the one catalogue entry that carries it.
        unmapped: published names no catalogue entry carries (sorted).
        ambiguous: published name -> the several entries that carry it (an error to fix).
    """

    mapped: dict[str, str]
    unmapped: list[str]
    ambiguous: dict[str, list[str]]


def published_join(published_names: dict[str, str | None], names: Any) -> PublishedJoin:
    """Join published encoder ``names`` to catalogue entries.

    Args:
        published_names: catalogue name -> its ``published_name`` (None: not in the papers).
        names: the published encoder names to join (e.g. every encoder of a published table).
    """
    carriers: dict[str, list[str]] = {}
    for entry, published in published_names.items():
        if published:
            carriers.setdefault(str(published), []).append(entry)
    wanted = sorted({str(n) for n in names if isinstance(n, str) and n})
    return PublishedJoin(
        mapped={n: carriers[n][0] for n in wanted if len(carriers.get(n, ())) == 1},
        unmapped=[n for n in wanted if n not in carriers],
        ambiguous={n: sorted(carriers[n]) for n in wanted if len(carriers.get(n, ())) > 1},
    )


def published_points(fids: pd.DataFrame, mapped: dict[str, str]) -> pd.DataFrame:
    """One point per published table (paper, model, method, steps, CFG) and published encoder:
    encoder (its catalogue entry, None when unmapped), published_name, fid (mean of repeated values), facet, protocol,
    fid_label, model, method, step (``fids``: :func:`harness.report.published.published_fids`)."""
    from harness.report.data import METHOD_LABELS
    from harness.report.published import PUBLISHED_LABEL

    joined = fids[fids.encoder.notna()]
    out = []
    keys = ["paper", "model", "method", "train_steps", "cfg"]
    for (paper, model, method, steps, cfg), group in joined.groupby(keys, sort=True, dropna=False):
        facet = (
            f"{paper} · {model} · {METHOD_LABELS.get(method, method)} · "
            f"{int(steps / 1000)}K steps · cfg {cfg:g}"
        )
        means = group.groupby("encoder").value.mean()
        for name, value in means.items():
            out.append(
                {
                    "encoder": mapped.get(name),  # None: no catalogue entry
                    "published_name": name,
                    "fid": float(value),
                    "facet": facet,
                    "protocol": "published",
                    "fid_label": PUBLISHED_LABEL,
                    "model": model,
                    "method": method,
                    "step": int(steps),
                    "paper": paper,
                    "cfg": cfg,
                }
            )
    columns = ["encoder", "published_name", "fid", "facet", "protocol", "fid_label"]
    return pd.DataFrame(out, columns=[*columns, "model", "method", "step", "paper", "cfg"])


def report_table(
    points: pd.DataFrame, level: float = DEFAULT_LEVEL
) -> tuple[pd.DataFrame, list[str]]:
    """The report's section "Can spatial structure predict generation quality here?": the
    cross-validated table of every facet that can be fitted (facet column first), and one note
    per facet that cannot."""
    frames, notes = [], []
    for item in predictability(points, level):
        if item["cv"] is None:
            notes.append(f"{item['facet']}: {item['note']}")
            continue
        frames.append(cv_display(item["cv"]).assign(facet=item["facet"]))
    if not frames:
        return pd.DataFrame(), notes
    table = pd.concat(frames, ignore_index=True)
    return table[["facet", *[c for c in table.columns if c != "facet"]]], notes
