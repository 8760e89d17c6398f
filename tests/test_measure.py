"""The measurement driver (the ``spatial`` stage) and ``harness metrics``: files, payload,
agreement with the metrics computed directly, masks, and the CLI."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.cli import main
from harness.config.data import DataConfig
from harness.config.encoders import load_catalogue
from harness.config.metrics import SpatialConfig
from harness.data import build_dataset
from harness.data.base import ImageDataset
from harness.encoders import create_encoder
from harness.metrics.measure import grid_masks, measure_encoder
from harness.metrics.spatial import spatial_metrics

ROOT = Path(__file__).resolve().parents[1]
CATALOGUE = load_catalogue(ROOT / "encoders.yaml")
DATA = DataConfig(resolution=64, val_images=40, num_classes=4)
CFG = SpatialConfig(images=20, batch_size=8, num_workers=0)


@pytest.fixture(autouse=True)
def _quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_PROGRESS", "0")
    monkeypatch.setenv("HARNESS_OFFLINE", "1")
    torch.set_num_threads(1)


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_grid_masks_max_pool_each_token_block() -> None:
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, 5, 2] = True  # one pixel: token (row 2, col 1) of a 4x4 grid (2x2 px blocks)
    masks[1] = True
    tokens = grid_masks(masks, (4, 4))
    assert tokens.shape == (2, 16)
    assert tokens[0].nonzero().flatten().tolist() == [2 * 4 + 1]
    assert tokens[1].all()


def test_measure_writes_per_image_values_equal_to_direct_metrics(tmp_path: Path) -> None:
    spec = CATALOGUE.get("pixels")
    payload = measure_encoder(spec, DATA, CFG, tmp_path, grid=(4, 4))
    rows = read_rows(tmp_path / "per_image.csv")
    assert [r["index"] for r in rows] == [str(i) for i in range(20)]
    assert list(rows[0]) == ["index", "lds", "cds", "srss", "rmsc"]

    ds = build_dataset(DATA, "val")
    batch = ds.get_batch(list(range(20)))
    out = create_encoder(spec, grid=(4, 4))(batch["image"])
    masks = torch.nn.functional.max_pool2d(batch["mask"][:, None].float(), 16)[:, 0] > 0
    direct = spatial_metrics(out.tokens, (4, 4), masks.flatten(1), **CFG.metric_params(16))
    for key in ("lds", "cds", "rmsc", "srss"):
        got = np.array([float(r[key]) if r[key] else math.nan for r in rows])
        want = direct[key].numpy()
        assert np.array_equal(np.isnan(got), np.isnan(want)), key
        assert np.allclose(got[~np.isnan(want)], want[~np.isnan(want)], atol=1e-7), key
        finite = got[np.isfinite(got)]
        summary = payload["metrics"][key]
        assert summary["n"] == finite.size
        if finite.size:
            assert summary["mean"] == pytest.approx(finite.mean(), abs=1e-7)
            assert summary["std"] == pytest.approx(finite.std(ddof=1), abs=1e-7)
    assert payload["encoder"] == "pixels" and payload["n_images"] == 20
    assert payload["dataset"] == ds.fingerprint() and payload["grid"] == [4, 4]
    assert payload["params"]["srss_min_fg"] == 4 and payload["params"]["far_dist"] == 6
    assert payload["weights_id"] == "builtin:pixels"
    features = np.load(tmp_path / "features.npz")
    assert features["token_mean"].shape == (20, 768) and features["pooled"].dtype == np.float16
    assert np.array_equal(features["label"], ds.labels()[:20])
    json.dumps(payload)  # the payload is JSON-serialisable as result.json needs


class TinyDataset(ImageDataset):
    """In-memory images without masks (like an ImageNet folder with no mask_root)."""

    split, resolution, class_names, has_masks = "val", 32, ["a", "b"], False

    def __init__(self, n: int) -> None:
        gen = torch.Generator().manual_seed(0)
        self.images = torch.randint(
            0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=gen
        ).numpy()

    def __len__(self) -> int:
        return len(self.images)

    def labels(self) -> np.ndarray:
        return np.arange(len(self.images)) % 2

    def fingerprint(self) -> str:
        return "tiny"

    def _load_batch(self, indices: np.ndarray):
        return self.images[indices], np.zeros((len(indices), 32, 32), dtype=bool)


def test_without_masks_srss_is_empty_and_not_counted(tmp_path: Path) -> None:
    cfg = SpatialConfig(images=100, batch_size=4, num_workers=0, save_features=False)
    payload = measure_encoder(
        CATALOGUE.get("noise"), DATA, cfg, tmp_path, grid=4, dataset=TinyDataset(6)
    )
    rows = read_rows(tmp_path / "per_image.csv")
    assert len(rows) == 6 and all(r["srss"] == "" for r in rows)
    assert payload["metrics"]["srss"] == {"mean": None, "std": None, "n": 0}
    assert payload["n_images"] == 6 and not (tmp_path / "features.npz").exists()
    assert abs(payload["metrics"]["lds"]["mean"]) < 0.1  # noise has no spatial structure


def test_cli_metrics_writes_result_json_and_skips_finished(tmp_path: Path, capsys) -> None:
    argv = [
        "metrics",
        str(ROOT / "encoders.yaml"),
        "--encoders",
        "pixels,noi?e",  # a glob: noise, not noise-p4
        "--images",
        "12",
        "--batch-size",
        "6",
        "--data-resolution",
        "64",
        "--out",
        str(tmp_path),
    ]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()  # one line per encoder, with its settings
    assert [line.split(":")[0] for line in lines] == ["pixels", "noise"]
    assert all("12 images, 64 px, grid 4x4, real weights: lds=" in line for line in lines)
    results = sorted((tmp_path / "stages" / "spatial").glob("*/result.json"))
    assert len(results) == 2
    records = [json.loads(p.read_text()) for p in results]
    assert {r["payload"]["encoder"] for r in records} == {"pixels", "noise"}
    for record, path in zip(records, results):
        assert record["status"] == "done" and record["stage"] == "spatial"
        assert record["key"] == path.parent.name
        assert (path.parent / "per_image.csv").exists()
    capsys.readouterr()
    assert main(argv) == 0
    assert capsys.readouterr().out.count("already measured") == 2


def test_cli_metrics_and_a_sweep_key_the_same_measurement_alike(tmp_path: Path) -> None:
    """A sweep whose data and spatial settings equal the command's plans the same spatial key
    (its ``spatial.grid: null`` resolved to the SiT grid the command names with --grid)."""
    from harness.config.sweep import load_sweep
    from harness.plan import build_plan

    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(
        "name: same\nencoders: [pixels]\nmethods: [repa]\nmodels: [SiT-T/4]\nmodel: {space: pixel}\n"
        "random_weights: true\ndata: {resolution: 32, val_images: 12}\nspatial: {images: 12}\n"
    )
    plan = build_plan(CATALOGUE, load_sweep(sweep_file))
    (planned,) = [s for s in plan.stages if s.stage == "spatial"]
    assert planned.config["spatial"]["grid"] is None and planned.config["grid"] == [8, 8]
    argv = ["metrics", str(ROOT / "encoders.yaml"), "--encoders", "pixels", "--images", "12"]
    argv += ["--data-resolution", "32", "--grid", "8", "--random-weights", "--out", str(tmp_path)]
    assert main(argv) == 0
    assert (tmp_path / "stages" / "spatial" / planned.key / "result.json").is_file()


def test_cli_metrics_unknown_encoder_exits_2(tmp_path: Path, capsys) -> None:
    code = main(
        ["metrics", str(ROOT / "encoders.yaml"), "--encoders", "pixles", "--out", str(tmp_path)]
    )
    assert code == 2
    assert "did you mean 'pixels'" in capsys.readouterr().err


def test_cli_encoders_list_check_fetch(capsys) -> None:
    catalogue = str(ROOT / "encoders.yaml")
    assert main(["encoders", "list", "dinov2*", "--catalogue", catalogue]) == 0
    out = capsys.readouterr().out
    assert "dinov2-vit-b" in out and "dinov2-vit-g" in out and "pixels" not in out
    assert (
        main(
            [
                "encoders",
                "check",
                "pixels",
                "hog",
                "--grid",
                "4",
                "--batch",
                "2",
                "--catalogue",
                catalogue,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.count(" ok ") == 2 and "4x4" in out
    assert main(["encoders", "check", "pixls", "--catalogue", catalogue]) == 2
    assert "did you mean 'pixels'" in capsys.readouterr().err
    assert main(["encoders", "fetch", "dinov2-vit-b", "--catalogue", catalogue]) == 2
    err = capsys.readouterr().err
    assert "needs the network" in err and "on a machine with internet" in err


def test_encoder_tables_fit_120_columns_with_errors_below(capsys, monkeypatch) -> None:
    catalogue = str(ROOT / "encoders.yaml")
    monkeypatch.setenv("COLUMNS", "400")  # a wide terminal: the tables still fit 120 columns
    assert main(["encoders", "list", "--catalogue", catalogue]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 120
    rows = [line for line in lines if line.split(" ")[0] in {"dinov2-vit-b", "mocov3-vit-b"}]
    assert len(rows) == 2 and "vit_base_patch14_dinov2.lvd142m" in rows[0]  # not folded
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = ["encoders", "check", "pixels", "mocov3-vit-b", "--grid", "2", "--batch", "2"]
    assert main([*argv, "--catalogue", catalogue]) == 2
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert max(len(line) for line in lines) <= 120
    (row,) = [line for line in lines if line.startswith("mocov3-vit-b ")]
    assert row.split()[-3:] == ["weights", "(see", "below)"]  # the table holds no message
    assert "mocov3_vitb.pth" in captured.err and "mocov3_vitb.pth" not in captured.out
