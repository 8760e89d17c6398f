"""Sample class accuracy: the substitute classifier's agreement with the samples' conditioning
labels, its ceiling on real val images, the eval payload, and the DuckDB columns."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch

from harness.artifacts import write_result
from harness.config.data import DataConfig
from harness.config.eval import EvalConfig, SubstituteConfig
from harness.data import build_dataset
from harness.errors import StageError
from harness.eval.driver import SampleSource, evaluate_checkpoint
from harness.eval.fd import stats_from_arrays
from harness.eval.features import ExtractorInfo
from harness.eval.fidelity import (
    METRIC_KEYS,
    GeneratedFeatures,
    class_accuracy,
    generation_metrics,
)
from harness.eval.reference import Reference, compute_reference
from harness.eval.substitute import build_cnn, preprocess
from harness.paths import stage_dir
from harness.store import db
from harness.store.db import latest_version, migrate, open_readonly
from harness.store.ingest import ingest

# a substitute strong enough that right and wrong classes separate clearly (val accuracy ~0.85)
DATA = DataConfig(resolution=32, num_classes=4, train_images=480, val_images=40, seed=0)
EVAL = {
    "num_samples": 80,  # class-balanced: every val image (10 per class) is drawn exactly twice
    "shard_size": 40,
    "batch_size": 16,
    "extractor": "harness-cnn",
    "sampler": {"batch_size": 20},
    "substitute": {"widths": [16, 32, 64], "feature_dim": 16, "epochs": 8, "batch_size": 32},
    "metrics": {"kid_subsets": 10, "kid_subset_size": 40},
}
SUBSTITUTE_NAME = "harness-cnn-0123456789ab"


def eval_config(**changes: object) -> EvalConfig:
    return EvalConfig.model_validate({**EVAL, **changes})


# ---------------------------------------------------------------------------------------------
# the metric: known answers
# ---------------------------------------------------------------------------------------------
def test_class_accuracy_known_answers() -> None:
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    logits = torch.full((10, 4), -1.0)
    logits[torch.arange(10), torch.as_tensor(labels)] = 5.0  # all right
    assert class_accuracy(logits, labels) == 1.0
    wrong = logits.clone()
    for row in (1, 4, 8):  # three rows put their maximum on the next class
        wrong[row] = -1.0
        wrong[row, (labels[row] + 1) % 4] = 5.0
    assert class_accuracy(wrong, labels) == 0.7
    assert class_accuracy(wrong, torch.as_tensor(labels)) == 0.7
    assert class_accuracy(torch.zeros(4, 4), np.array([0, 0, 1, 2])) == 0.5  # ties -> class 0
    assert class_accuracy(-logits, labels) == 0.0
    with pytest.raises(StageError, match="class accuracy"):
        class_accuracy(logits, labels[:9])
    with pytest.raises(StageError, match="class accuracy"):
        class_accuracy(torch.zeros(0, 4), np.zeros(0, dtype=np.int64))


def _info(name: str) -> ExtractorInfo:
    return ExtractorInfo(name, name, "w", None, True, "feat", "logits")


def _reference(**meta: object) -> Reference:
    stats = stats_from_arrays(np.zeros(2), np.eye(2), where="test")
    return Reference(meta={"reference_key": "ref0", **meta}, fid=stats)


def test_generation_metrics_record_class_accuracy_or_why_not() -> None:
    cfg = eval_config(metrics={"fid": False, "isc": False, "kid": False, "prc": False})
    labels = np.arange(8) % 4
    logits = torch.nn.functional.one_hot(torch.as_tensor((labels + (labels == 3)) % 4), 4)
    generated = GeneratedFeatures(8, None, None, logits.float(), None, labels, 4)

    metrics, skipped, _ = generation_metrics(
        generated, _reference(class_accuracy_real=0.9), cfg, _info(SUBSTITUTE_NAME)
    )
    assert metrics == {"class_accuracy": 0.75, "class_accuracy_real": 0.9} and skipped == {}

    metrics, skipped, _ = generation_metrics(
        generated, _reference(), cfg, _info(SUBSTITUTE_NAME)
    )  # a reference from before the ceiling existed
    assert metrics == {"class_accuracy": 0.75}
    assert "ref0 records no accuracy" in skipped["class_accuracy_real"]

    inception = _info("inception-v3-compat(random-weights)")
    metrics, skipped, _ = generation_metrics(generated, _reference(), cfg, inception)
    assert metrics == {} and set(skipped) == {"class_accuracy"}
    assert "no classifier over the dataset's classes" in skipped["class_accuracy"]

    other = GeneratedFeatures(8, None, None, logits.float(), None, labels, 10)
    metrics, skipped, _ = generation_metrics(other, _reference(), cfg, _info(SUBSTITUTE_NAME))
    assert metrics == {}
    assert "conditioned on 10 classes" in skipped["class_accuracy"]

    off = eval_config(metrics={"class_accuracy": False, "isc": False, "kid": False, "prc": False})
    metrics, skipped, _ = generation_metrics(
        generated, _reference(class_accuracy_real=0.9), off, _info(SUBSTITUTE_NAME)
    )
    assert metrics == {} and "class_accuracy" not in skipped  # switched off: neither


def test_metric_keys_are_the_evaluation_columns() -> None:
    """Every metric name of METRIC_KEYS is read into the evaluations table by the schema."""
    con = duckdb.connect(":memory:")
    migrate(con)
    (sql,) = con.execute(
        "SELECT sql FROM duckdb_views() WHERE view_name = 'derive_evaluations'"
    ).fetchone()
    for key in METRIC_KEYS:
        assert f"$.metrics.{key}'" in sql, key
    columns = [r[0] for r in con.execute("DESCRIBE evaluations").fetchall()]
    assert {"class_accuracy", "class_accuracy_real"} <= set(columns)


# ---------------------------------------------------------------------------------------------
# the ceiling on real val images
# ---------------------------------------------------------------------------------------------
def direct_predictions(checkpoint: Path, data: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """Predicted and true classes of every val image, straight from the checkpoint's network."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    recipe = SubstituteConfig(**ckpt["recipe"])
    model = build_cnn(recipe.widths, recipe.feature_dim, ckpt["num_classes"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    val = build_dataset(data, "val")
    batch = val.get_batch(np.arange(len(val)))
    with torch.no_grad():
        _, logits = model(preprocess(batch["image"], recipe.input_size, ckpt["mean"], ckpt["std"]))
    return logits.argmax(1).numpy(), batch["label"].numpy()


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A results root with the reference of DATA (module-wide: the substitute trains once)."""
    root = tmp_path_factory.mktemp("results")
    out = stage_dir(root, "fid_ref", "ref")
    payload = compute_reference(DATA, eval_config(), out, root=root)
    return {"root": root, "reference": out, "payload": payload}


def test_ceiling_is_the_classifier_accuracy_on_real_val_images(
    study: dict[str, object],
) -> None:
    root, out = Path(str(study["root"])), Path(str(study["reference"]))
    meta = json.loads((out / "reference.json").read_text())
    checkpoint = Path(meta["extractor_weights_path"])
    predicted, true = direct_predictions(checkpoint, DATA)
    assert len(true) == 40
    assert meta["class_accuracy_real"] == float(np.mean(predicted == true))
    assert meta["class_accuracy_set"] == {
        "split": "val",
        "fingerprint": build_dataset(DATA, "val").fingerprint(),
        "n_images": 40,
        "correct": int((predicted == true).sum()),
    }
    assert study["payload"]["class_accuracy_real"] == meta["class_accuracy_real"]  # type: ignore[index]
    assert meta["class_accuracy_real"] > 0.5  # chance is 0.25

    # computed once: cached next to the checkpoint, and a second reference reuses it
    (cached,) = checkpoint.parent.glob(f"{checkpoint.stem}.val-*.json")
    mtime = cached.stat().st_mtime_ns
    again = compute_reference(DATA, eval_config(), root / "again", root=root)
    assert again["class_accuracy_real"] == meta["class_accuracy_real"]
    assert cached.stat().st_mtime_ns == mtime

    # another val split, same train split: same reference statistics, its own ceiling
    more_val = DATA.model_copy(update={"val_images": 80})
    other = compute_reference(more_val, eval_config(), root / "more-val", root=root)
    assert other["reference_key"] == meta["reference_key"]
    predicted, true = direct_predictions(checkpoint, more_val)
    assert other["class_accuracy_set"]["n_images"] == 80
    assert other["class_accuracy_real"] == float(np.mean(predicted == true))
    stored = json.loads((root / "more-val" / "reference.json").read_text())
    assert stored["class_accuracy_real"] == other["class_accuracy_real"]

    # metric off: no ceiling recorded
    off = compute_reference(
        DATA, eval_config(metrics={"class_accuracy": False}), root / "off", root=root
    )
    assert off["class_accuracy_real"] is None and off["reference_key"] == meta["reference_key"]


# ---------------------------------------------------------------------------------------------
# end to end: samples of the right class score the ceiling, of a wrong class (almost) nothing
# ---------------------------------------------------------------------------------------------
def val_image_source(shift: int, run_id: str) -> SampleSource:
    """A 'model' that returns real val images of class ``(label + shift) % C``: sample i (label
    i % C, seed i) gets the ((i // C) % 10)-th val image of that class, so 80 class-balanced
    samples draw each of the 40 val images exactly twice."""
    val = build_dataset(DATA, "val")
    images = val.get_batch(np.arange(len(val)))["image"]  # val labels are index % C
    classes = DATA.num_classes
    per_class = len(val) // classes

    def generate(labels: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        shown = (labels + shift) % classes
        index = shown + classes * ((seeds // classes) % per_class)
        return images[index]

    return SampleSource(generate, classes, run_id, {"model": run_id}, resolution=32)


def test_right_class_samples_score_the_ceiling_and_wrong_ones_almost_zero(
    study: dict[str, object],
) -> None:
    root, reference = Path(str(study["root"])), Path(str(study["reference"]))
    meta = json.loads((reference / "reference.json").read_text())
    predicted, true = direct_predictions(Path(meta["extractor_weights_path"]), DATA)
    cfg = eval_config(metrics={"isc": False, "kid": False, "prc": False})

    right = evaluate_checkpoint(
        "r.pt",
        cfg,
        root / "right",
        reference_dir=reference,
        step=1,
        source=val_image_source(0, "r"),
    )["metrics"]
    assert right["class_accuracy"] == meta["class_accuracy_real"] == right["class_accuracy_real"]

    wrong = evaluate_checkpoint(
        "w.pt",
        cfg,
        root / "wrong",
        reference_dir=reference,
        step=1,
        source=val_image_source(1, "w"),
    )["metrics"]
    # images of class c + 1 labelled c count only when the classifier mistakes them for c
    assert wrong["class_accuracy"] == float(np.mean(predicted == (true - 1) % 4))
    assert wrong["class_accuracy"] <= 1 - meta["class_accuracy_real"]
    assert wrong["class_accuracy"] < 0.2 and wrong["class_accuracy_real"] == right["class_accuracy"]


def test_eval_result_lands_in_v_study(study: dict[str, object], results_root: Path) -> None:
    reference = Path(str(study["reference"]))
    payload = evaluate_checkpoint(
        "toy.pt",
        eval_config(),
        stage_dir(results_root, "eval", "e1"),
        reference_dir=reference,
        step=7,
        source=val_image_source(0, "toy-run"),
    )
    metrics = payload["metrics"]
    assert set(metrics) == set(METRIC_KEYS) - {"fd_dinov2"} and payload["skipped"] == {}
    assert 0 <= metrics["class_accuracy"] <= 1 and 0 <= metrics["class_accuracy_real"] <= 1
    write_result(
        stage_dir(results_root, "eval", "e1"), stage="eval", key="e1", config={}, payload=payload
    )
    write_result(
        stage_dir(results_root, "fid_ref", "ref"),
        stage="fid_ref",
        key="ref",
        config={},
        payload=study["payload"],  # type: ignore[arg-type]
    )
    train = {"run_id": "toy-run", "method": "none", "model": "SiT-T/4", "seed": 0}
    write_result(
        stage_dir(results_root, "train", "t1"), stage="train", key="t1", config={}, payload=train
    )
    stored = json.loads((stage_dir(results_root, "eval", "e1") / "result.json").read_text())
    assert stored["payload"]["metrics"]["class_accuracy"] == metrics["class_accuracy"]

    report = ingest(results_root)
    assert report.skipped == [] and report.schema_version == latest_version()
    with open_readonly(results_root) as con:
        rows = con.execute(
            "SELECT run_id, step, class_accuracy, class_accuracy_real FROM v_study"
        ).fetchall()
        refs = con.execute("SELECT class_accuracy_real FROM fid_refs").fetchall()
    assert rows == [("toy-run", 7, metrics["class_accuracy"], metrics["class_accuracy_real"])]
    assert refs == [(metrics["class_accuracy_real"],)]


# ---------------------------------------------------------------------------------------------
# an existing database (schema v2) migrates: existing results get the new columns
# ---------------------------------------------------------------------------------------------
def test_database_of_the_previous_schema_gets_the_columns_on_ingest(
    results_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def eval_payload(run: str, metrics: dict[str, float]) -> dict[str, object]:
        return {"run_id": run, "step": 1, "metrics": metrics, "protocol": {"num_samples": 80}}

    new = {"fid": 3.0, "class_accuracy": 0.625, "class_accuracy_real": 0.75}
    for key, payload in (("old", eval_payload("a", {"fid": 4.0})), ("new", eval_payload("b", new))):
        write_result(
            stage_dir(results_root, "eval", key), stage="eval", key=key, config={}, payload=payload
        )
    shipped, final = db.migrations(), latest_version()
    (added,) = (m.version for m in shipped if m.name == "003_class_accuracy.sql")
    previous = tuple(m for m in shipped if m.version < added)
    monkeypatch.setattr(db, "migrations", lambda: previous)
    assert ingest(results_root).schema_version == added - 1
    con = duckdb.connect(str(results_root / "harness.duckdb"), read_only=True)
    assert "class_accuracy" not in {r[0] for r in con.execute("DESCRIBE evaluations").fetchall()}
    con.close()
    monkeypatch.setattr(db, "migrations", lambda: shipped)

    report = ingest(results_root)  # nothing changed on disk: the schema is brought up to date
    # a database before v5 (re-keyed spatial and probe rows) is rebuilt from the files
    assert report.mode == "rebuild" and report.schema_version == final
    with open_readonly(results_root) as con:
        rows = con.execute(
            "SELECT run_id, fid, class_accuracy, class_accuracy_real FROM evaluations ORDER BY 1"
        ).fetchall()
    assert rows == [("a", 4.0, None, None), ("b", 3.0, 0.625, 0.75)]
