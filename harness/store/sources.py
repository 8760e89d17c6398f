"""The files ``harness ingest`` reads: found under the results root, parsed into table rows.

Layout (see :mod:`harness.paths` and :mod:`harness.artifacts`)::

    stages/<stage>/<key>/result.json       written last and atomically by the stage
    stages/<stage>/<key>/state.json        running / failed / interrupted (sweep engine, jobs)
    stages/<stage>/<key>/train_log.jsonl   one row per logged training step (appended)
    stages/<stage>/<key>/per_image.csv     spatial metrics per image
    plans/<sweep>/plan.json                the saved plan of a sweep
    plans/<sweep>/jobs.jsonl               one row per submission (appended)
    rank/<fit_id>/predictions.json         a fit of `harness rank` (predictions, CV table)

Every parser raises :class:`~harness.errors.ArtifactError` for a malformed file; ingest then
skips that file and lists it, and never stops on it.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.artifacts import RESULT_FILE, RESULT_SCHEMA, STATUSES
from harness.errors import ArtifactError, HarnessError
from harness.io import content_hash, read_jsonl
from harness.metrics import SPATIAL_METRICS
from harness.store import published

RESULT, STATE, TRAIN_LOG, PER_IMAGE = "result", "state", "train_log", "per_image"
PLAN, JOBS, PUBLISHED = "plan", "jobs", "published"
PREDICTIONS = "predictions"
PREDICTION_FILES = {"predictions.json": PREDICTIONS}
STAGE_FILES = {
    RESULT_FILE: RESULT,
    "state.json": STATE,
    "train_log.jsonl": TRAIN_LOG,
    "per_image.csv": PER_IMAGE,
}
PLAN_FILES = {"plan.json": PLAN, "jobs.jsonl": JOBS}
PLAN_SCHEMA = 1
PUBLISHED_PATH = "@published/" + published.PUBLISHED_CSV.name  # its `ingested.path`
PER_IMAGE_FIELDS = SPATIAL_METRICS  # the per_image.csv columns


@dataclass(frozen=True)
class SourceFile:
    """One file ingest reads, with the stat signature used to detect changes."""

    path: str  # relative to the results root, '/'-separated ('@published/...' for the CSV)
    kind: str  # result | state | train_log | per_image | plan | jobs | published
    stage: str | None  # stage name (stage files)
    owner: str  # stage key (stage files), sweep name (plan files), 'published'
    mtime_ns: int  # modification time
    size: int  # bytes

    def absolute(self, root: Path) -> Path:
        if self.kind == PUBLISHED:
            return published.PUBLISHED_CSV
        return root / self.path


def has_artifacts(root: Path) -> bool:
    """True when ``root`` holds any source file of its own (a stage, plan or rank artifact)."""
    return any(source.kind != PUBLISHED for source in scan(root).values())


def scan(root: Path) -> dict[str, SourceFile]:
    """Every source file under ``root`` (and the published CSV), by relative path."""
    found: dict[str, SourceFile] = {}
    for stage_dir in _subdirs(root / "stages"):
        for key_dir in _subdirs(stage_dir):
            _collect(
                found,
                key_dir,
                STAGE_FILES,
                f"stages/{stage_dir.name}/{key_dir.name}",
                stage=stage_dir.name,
            )
    for sweep_dir in _subdirs(root / "plans"):
        _collect(found, sweep_dir, PLAN_FILES, f"plans/{sweep_dir.name}", stage=None)
    for fit_dir in _subdirs(root / "rank"):
        _collect(found, fit_dir, PREDICTION_FILES, f"rank/{fit_dir.name}", stage=None)
    try:
        st = published.PUBLISHED_CSV.stat()
    except OSError:
        pass
    else:
        found[PUBLISHED_PATH] = SourceFile(
            PUBLISHED_PATH, PUBLISHED, None, PUBLISHED, st.st_mtime_ns, st.st_size
        )
    return found


def _subdirs(path: Path) -> list[Path]:
    try:
        with os.scandir(path) as entries:
            return sorted(
                Path(e.path) for e in entries if e.is_dir() and not e.name.startswith(".")
            )
    except (FileNotFoundError, NotADirectoryError):
        return []


def _collect(
    found: dict[str, SourceFile],
    directory: Path,
    names: dict[str, str],
    rel: str,
    *,
    stage: str | None,
) -> None:
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        kind = names.get(entry.name)
        if kind is None:
            continue
        try:
            st = entry.stat()
        except FileNotFoundError:  # removed while scanning
            continue
        path = f"{rel}/{entry.name}"
        found[path] = SourceFile(path, kind, stage, directory.name, st.st_mtime_ns, st.st_size)


# ---------------------------------------------------------------------------------------------
# parsers: (file, bytes) -> rows of the source tables
# ---------------------------------------------------------------------------------------------
def data_key(config: Any) -> str:
    """The dataset a stage used: content hash of ``config.data`` (spatial, probe, fid_ref) or
    ``config.run.data`` (train); '' when the stage has none (eval)."""
    if not isinstance(config, dict):
        return ""
    run = config.get("run")
    data = config.get("data", run.get("data") if isinstance(run, dict) else None)
    return content_hash(data) if isinstance(data, dict) else ""


def variant_key(stage: str, payload: dict[str, Any]) -> str:
    """What distinguishes two results of one subject besides the dataset.

    eval: every protocol field (the ``protocol_key``); spatial: token grid, image count, split,
    encoder dtype, metric parameters and the encoder's weights (random or which); probe: token
    grid, data sizes, learning-rate grid, the probe protocol and the encoder's weights; other
    stages: ''.
    """
    if stage == "eval":
        return content_hash(payload.get("protocol"))
    weights = {
        k: payload.get(k)
        for k in ("random_weights", "weights_id", "weights_revision", "weights_sha256")
    }
    if stage == "spatial":
        fields = ("grid", "n_images", "split", "dtype", "params")
        return content_hash({**{k: payload.get(k) for k in fields}, **weights})
    if stage == "probe":
        grid = payload.get("grid")
        lrs = (
            sorted(g.get("lr") for g in grid if isinstance(g, dict))
            if isinstance(grid, list)
            else None
        )
        fields = ("token_grid", "n_train", "n_val", "subset_per_class", "protocol")
        return content_hash({**{k: payload.get(k) for k in fields}, "lrs": lrs, **weights})
    return ""


def run_grid(config: Any) -> list[int] | None:
    """The SiT token grid ``[h, w]`` of a train stage's config (``config.run.model``), by
    :func:`harness.config.model.token_grid`; None when the config does not resolve it."""
    from harness.config.model import token_grid

    run = config.get("run") if isinstance(config, dict) else None
    model = run.get("model") if isinstance(run, dict) else None
    if not isinstance(model, dict):
        return None
    name, size = model.get("name"), model.get("input_size")
    if not isinstance(name, str) or isinstance(size, bool) or not isinstance(size, int):
        return None
    try:
        return list(token_grid(name, size))
    except HarnessError:  # an unknown SiT preset
        return None


def parse_result(source: SourceFile, data: bytes) -> dict[str, Any]:
    """A ``results`` row from a stage's ``result.json``."""
    record = _json_object(source, data)
    if record.get("schema") != RESULT_SCHEMA:
        raise ArtifactError(
            f"{source.path}: not a harness result (schema {RESULT_SCHEMA} expected)"
        )
    if record.get("stage") != source.stage or record.get("key") != source.owner:
        raise ArtifactError(
            f"{source.path}: records stage {record.get('stage')!r} key {record.get('key')!r}, "
            f"but lies in the directory of stage {source.stage!r} key {source.owner!r}"
        )
    if record.get("status") not in STATUSES:
        raise ArtifactError(f"{source.path}: status {record.get('status')!r} not in {STATUSES}")
    payload, config = record.get("payload"), record.get("config")
    if not isinstance(payload, dict) or not isinstance(config, dict):
        raise ArtifactError(f"{source.path}: 'payload' and 'config' must be JSON objects")
    prov = record.get("provenance") if isinstance(record.get("provenance"), dict) else {}
    finished_at = _number(prov.get("finished_at"))
    if finished_at is None:
        finished_at = source.mtime_ns / 1e9
    wall = _number(prov.get("wall_time_s"))
    return {
        "stage_key": source.owner,
        "stage": source.stage,
        "status": record["status"],
        "error": _text(record.get("error")),
        "started_at": None if wall is None else finished_at - wall,
        "finished_at": finished_at,
        "wall_time_s": wall,
        "job_id": _text(prov.get("slurm_job_id")),
        "data_key": data_key(config),
        "variant_key": variant_key(source.stage or "", payload),
        "config": config,
        "payload": payload,
        "provenance": prov,
        "path": source.path.rsplit("/", 1)[0],
    }


def parse_state(source: SourceFile, data: bytes) -> dict[str, Any]:
    """A ``stage_states`` row from a stage's ``state.json``."""
    record = _json_object(source, data)
    state = record.get("state")
    if not isinstance(state, str) or not state:
        raise ArtifactError(f"{source.path}: 'state' must be a non-empty string")
    updated_at = _number(record.get("updated_at"))
    return {
        "stage_key": source.owner,
        "stage": source.stage,
        "state": state,
        "job_id": _text(record.get("job_id")),
        "started_at": _number(record.get("started_at")),
        "updated_at": source.mtime_ns / 1e9 if updated_at is None else updated_at,
        "error": _text(record.get("error")),
        "log_tail": _text(record.get("log_tail")),
    }


def parse_plan(source: SourceFile, data: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``plans`` row and the ``plan_stages`` rows of ``plans/<sweep>/plan.json``."""
    record = _json_object(source, data)
    if record.get("schema") != PLAN_SCHEMA:
        raise ArtifactError(f"{source.path}: not a harness plan (schema {PLAN_SCHEMA} expected)")
    stages = record.get("stages")
    if not isinstance(stages, list):
        raise ArtifactError(f"{source.path}: 'stages' must be a list")
    sweep, created_at = source.owner, _number(record.get("created_at"))
    rows: dict[str, dict[str, Any]] = {}
    for index, item in enumerate(stages):
        if not isinstance(item, dict) or not all(
            isinstance(item.get(k), str) and item.get(k) for k in ("key", "stage")
        ):
            raise ArtifactError(f"{source.path}: stages[{index}] needs string 'key' and 'stage'")
        config = item.get("config") if isinstance(item.get("config"), dict) else {}
        rows[item["key"]] = {
            "sweep": sweep,
            "stage_key": item["key"],
            "stage": item["stage"],
            "label": _text(item.get("label")),
            "labels": item.get("labels") if isinstance(item.get("labels"), dict) else {},
            "needs": item.get("needs") if isinstance(item.get("needs"), list) else [],
            "est_gpu_hours": _number(item.get("est_gpu_hours")),
            "config": config,
            "data_key": data_key(config),
            "plan_created_at": created_at,
        }
    plan = {
        "sweep": sweep,
        "created_at": created_at,
        "git_sha": _text(record.get("git_sha")),
        "n_stages": len(rows),
        "config": record.get("config"),
    }
    return plan, list(rows.values())


def parse_jobs(source: SourceFile, root: Path) -> list[dict[str, Any]]:
    """``submissions`` rows from ``plans/<sweep>/jobs.jsonl`` (the last line per attempt wins)."""
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for line in read_jsonl(source.absolute(root)):
        key = line.get("key")
        if not isinstance(key, str) or not key:
            continue
        attempt = line.get("attempt", 0)
        attempt = attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else 0
        rows[(key, attempt)] = {
            "sweep": source.owner,
            "stage_key": key,
            "attempt": attempt,
            "job_id": _text(line.get("job_id")),
            "executor": _text(line.get("executor")),
            "submitted_at": _number(line.get("submitted_at")),
            "state": _text(line.get("state")),
            "log": _text(line.get("log")),
        }
    return list(rows.values())


def parse_predictions(
    source: SourceFile, data: bytes
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ``predictions`` and ``prediction_cv`` rows of ``rank/<fit_id>/predictions.json``
    (written by :func:`harness.report.predict` through ``harness rank``)."""
    from harness.store.predictions import PREDICTION_SCHEMA, parse

    record = _json_object(source, data)
    if record.get("schema") != PREDICTION_SCHEMA:
        raise ArtifactError(
            f"{source.path}: not a harness rank fit (schema {PREDICTION_SCHEMA} expected)"
        )
    try:
        return parse(record, source.owner)
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{source.path}: malformed fit: {exc!r}") from exc


def parse_per_image(text: str, name: str) -> list[dict[str, Any]]:
    """``spatial_per_image`` rows of a ``per_image.csv`` (index, lds, cds, srss, rmsc).

    (``train_log.jsonl`` files are parsed in SQL: the ``parse_train_logs`` macro.)
    """
    reader = csv.DictReader(io.StringIO(text))
    missing = {"index", *PER_IMAGE_FIELDS} - set(reader.fieldnames or ())
    if missing:
        raise ArtifactError(f"{name}: per-image table lacks columns {sorted(missing)}")
    rows = []
    for line_no, line in enumerate(reader, start=2):
        try:
            row: dict[str, Any] = {"image_index": int(line["index"])}
            for field in PER_IMAGE_FIELDS:
                row[field] = float(line[field]) if line[field] not in ("", None) else None
        except (TypeError, ValueError) as exc:
            raise ArtifactError(f"{name}:{line_no}: bad per-image row: {exc}") from exc
        rows.append(row)
    return rows


def _json_object(source: SourceFile, data: bytes) -> dict[str, Any]:
    try:
        record = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{source.path}: not valid JSON (truncated?): {exc}") from exc
    if not isinstance(record, dict):
        raise ArtifactError(f"{source.path}: expected a JSON object")
    return record


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, list):
        return "\n".join(str(v) for v in value)
    return str(value)
