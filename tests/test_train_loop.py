"""The training loop: learning, divergence guard, startup checks, logging, retention, stopping,
and the ``harness train`` command."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch

from harness.artifacts import read_result
from harness.cli import main as cli_main
from harness.config.data import DataConfig
from harness.config.run import RunConfig
from harness.data import build_dataset
from harness.errors import StageError
from harness.io import read_jsonl
from harness.train.checkpoint import list_checkpoints, load_checkpoint
from harness.train.loop import checkpoint_on_signals, train
from harness.train.toys import PatchEncoder

pytestmark = pytest.mark.usefixtures("results_root")


def tiny_run(method: str = "repa", **train_overrides) -> RunConfig:
    train_cfg = {
        "steps": 30,
        "global_batch": 16,
        "precision": "fp32",
        "num_workers": 0,
        "lr": 1e-3,
        "ckpt_every": 10,
        "sync_every": 5,
        **train_overrides,
    }
    return RunConfig(
        method=method,
        encoder=None if method == "none" else "toy",
        data=DataConfig(resolution=16, num_classes=4, train_images=64),
        model={"name": "SiT-T/2", "space": "pixel"},
        align={"projector_dim": 64},
        train=train_cfg,
    )


def toy_encoder(grid=(8, 8)) -> list[PatchEncoder]:
    return [PatchEncoder(grid, dim=16)]


def _mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def test_tiny_repa_run_lowers_both_losses_and_raises_alignment(tmp_path: Path) -> None:
    outcome = train(tiny_run(), tmp_path, device="cpu", target_encoders=toy_encoder())
    assert outcome["status"] == "done" and outcome["error"] is None
    rows = read_jsonl(tmp_path / "train_log.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 31))
    assert set(rows[0]) == {
        "step",
        "loss",
        "flow_loss",
        "proj_loss",
        "align_cos",
        "grad_norm",
        "lr",
        "images_per_s",
        "time",
    }
    first, last = rows[:5], rows[-5:]
    assert _mean(last, "flow_loss") < 0.8 * _mean(first, "flow_loss")
    assert _mean(last, "proj_loss") < _mean(first, "proj_loss") - 0.1
    assert _mean(last, "align_cos") > _mean(first, "align_cos") + 0.1
    for r in rows:  # loss = flow + 0.5 * proj, proj = -cos
        assert math.isclose(
            r["loss"], r["flow_loss"] + 0.5 * r["proj_loss"], rel_tol=1e-5, abs_tol=1e-6
        )
        assert math.isclose(r["proj_loss"], -r["align_cos"], rel_tol=1e-5, abs_tol=1e-6)
    payload = outcome["payload"]
    assert payload["steps_done"] == 30 and payload["final"]["align_cos"] == rows[-1]["align_cos"]
    assert payload["checkpoints"] == {
        "20": "checkpoints/step_0000020.pt",
        "30": "checkpoints/step_0000030.pt",
    }
    assert payload["images_per_s"] > 0 and payload["diverged"] is None
    assert json.loads((tmp_path / "run.json").read_text())["run_id"] == payload["run_id"]


class NaNAfter(PatchEncoder):
    """A target encoder that starts returning NaN tokens at call ``bad_call`` (one call/step)."""

    def __init__(self, bad_call: int) -> None:
        super().__init__((8, 8), dim=16)
        self.bad_call, self.calls = bad_call, 0

    def forward(self, images: torch.Tensor):
        self.calls += 1
        out = super().forward(images)
        if self.calls >= self.bad_call:
            return out.__class__(out.tokens * float("nan"), out.pooled, out.grid)
        return out


def test_injected_nan_ends_as_diverged_with_last_good_checkpoint_intact(tmp_path: Path) -> None:
    run = tiny_run(steps=20, ckpt_every=5, sync_every=4)
    outcome = train(run, tmp_path, device="cpu", target_encoders=[NaNAfter(bad_call=8)])
    assert outcome["status"] == "diverged"
    report = outcome["payload"]["diverged"]
    assert report["step"] == 8 and report["last_finite"]["step"] == 7
    assert math.isfinite(report["last_finite"]["loss"]) and report["non_finite"]["loss"] == "nan"
    assert report["resume_step"] == 5 and report["resume_from"].endswith("step_0000005.pt")
    assert "step 8" in outcome["error"] and outcome["payload"]["steps_done"] == 7
    assert [s for s, _ in list_checkpoints(tmp_path)] == [5]
    state = load_checkpoint(report["resume_from"])
    assert state["step"] == 5
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    rows = read_jsonl(tmp_path / "train_log.jsonl")
    assert rows[-1]["step"] == 8 and rows[-1]["loss"] is None  # NaN logged as null


def test_bad_encoder_grid_fails_before_any_compute(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="cannot be resized"):
        train(tiny_run(), tmp_path, device="cpu", target_encoders=toy_encoder(grid=(4, 8)))
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "train_log.jsonl").exists()


def test_bad_batch_split_and_classes_fail_at_startup(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="micro_batch 5 does not divide"):
        train(tiny_run(micro_batch=5), tmp_path, device="cpu", target_encoders=toy_encoder())
    many = build_dataset(DataConfig(resolution=16, num_classes=8, train_images=64), "train")
    with pytest.raises(StageError, match=r"8 classes but model\.num_classes is 4"):
        train(tiny_run(), tmp_path, device="cpu", target_encoders=toy_encoder(), dataset=many)
    with pytest.raises(StageError, match="catalogue"):
        train(tiny_run(), tmp_path, device="cpu")


def test_micro_batches_match_the_full_batch(tmp_path: Path) -> None:
    full = train(tiny_run(steps=3), tmp_path / "full", device="cpu", target_encoders=toy_encoder())
    micro = train(
        tiny_run(steps=3, micro_batch=4),
        tmp_path / "micro",
        device="cpu",
        target_encoders=toy_encoder(),
    )
    a, b = (
        load_checkpoint(tmp_path / d / "checkpoints/step_0000003.pt") for d in ("full", "micro")
    )
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], atol=2e-6, rtol=1e-5)
    assert math.isclose(
        full["payload"]["final"]["loss"], micro["payload"]["final"]["loss"], rel_tol=1e-5
    )


def test_retention_method_none_and_stop_request(tmp_path: Path) -> None:
    calls = []

    def stop_at_third() -> bool:
        calls.append(1)
        return len(calls) == 3

    run = tiny_run("none", steps=6, ckpt_every=1, keep_last=1, keep_steps=[2])
    outcome = train(run, tmp_path, device="cpu", should_stop=stop_at_third)
    assert outcome["status"] == "interrupted" and outcome["payload"]["steps_done"] == 3
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 3]
    outcome = train(run, tmp_path, device="cpu")
    assert outcome["status"] == "done" and outcome["payload"]["steps_done"] == 6
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 6]
    rows = read_jsonl(tmp_path / "train_log.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(r["align_cos"] is None and r["proj_loss"] == 0.0 for r in rows)
    assert train(run, tmp_path, device="cpu")["status"] == "done"  # nothing left to do


def test_sigusr2_checkpoints_at_the_next_step(tmp_path: Path) -> None:
    sent = []

    def send_signal_once() -> bool:
        if not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGUSR2)  # as SLURM / submitit do before a timeout
        return False

    with checkpoint_on_signals():
        outcome = train(
            tiny_run("none", steps=6), tmp_path, device="cpu", should_stop=send_signal_once
        )
    assert outcome["status"] == "interrupted" and outcome["payload"]["steps_done"] == 2
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2]
    assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL  # handler restored


def test_cli_train_writes_result(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(
        "method: none\n"
        "data: {resolution: 16, num_classes: 4, train_images: 32}\n"
        "model: {name: SiT-T/2, space: pixel}\n"
        "train: {steps: 2, global_batch: 8, precision: fp32, num_workers: 0}\n"
    )
    out = tmp_path / "out"
    assert cli_main(["train", str(config), "--out", str(out), "--device", "cpu"]) == 0
    record = read_result(out)
    assert record["status"] == "done" and record["stage"] == "train"
    assert record["payload"]["steps_done"] == 2 and record["config"]["run"]["method"] == "none"
    ckpt = out / "checkpoints" / "step_0000002.pt"
    grid = tmp_path / "grid.png"
    assert (
        cli_main(
            [
                "sample",
                str(ckpt),
                "--n",
                "4",
                "--out",
                str(grid),
                "--device",
                "cpu",
                "--sampler.num_steps",
                "3",
                "--sampler.mode",
                "ode",
            ]
        )
        == 0
    )
    settings = json.loads((tmp_path / "grid.png.json").read_text())
    assert settings["sampler"]["mode"] == "ode" and settings["sampler"]["num_steps"] == 3
    assert grid.stat().st_size > 0
    assert (
        cli_main(
            [
                "sample",
                str(ckpt),
                "--n",
                "2",
                "--out",
                str(tmp_path / "s.npz"),
                "--sampler.mode",
                "sdee",
            ]
        )
        == 2
    )


def test_cli_bench_train_prints_table_and_writes_numbers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    args = [
        "bench",
        "train",
        "--model",
        "SiT-T/4",
        "--encoder",
        "toy",
        "--space",
        "pixel",
        "--resolution",
        "16",
        "--batch",
        "2",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--precision",
        "fp32",
        "--num-workers",
        "0",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    assert cli_main(args) == 0
    table = capsys.readouterr().out
    for label in (
        "images/s",
        "step: data ms",
        "step: encoder fwd ms",
        "step: SiT fwd+bwd ms",
        "step: optimizer ms",
        "peak memory GiB",
        "MFU",
    ):
        assert label in table
    numbers = json.loads(out.read_text())
    assert numbers["images_per_s"] > 0 and numbers["mfu"] is None  # CPU: no peak
    assert numbers["gflops_per_image"]["encoder_fwd"] > 0
    # where the time goes: the profiler's top operators of a real step, largest first, and the
    # measured matmul rate the achieved rate is compared with
    ops = numbers["top_ops"]
    assert ops and [o["ms_per_step"] for o in ops] == sorted(
        (o["ms_per_step"] for o in ops), reverse=True
    )
    assert 0 < sum(o["share"] for o in ops) <= 1 + 1e-9
    assert any(o["op"] in ("aten::mm", "aten::addmm", "aten::linear") for o in ops)
    assert f"op: {ops[0]['op']}" in table
    assert numbers["matmul_tflops"] > 0
    assert numbers["achieved_of_matmul"] == pytest.approx(
        numbers["achieved_tflops"] / numbers["matmul_tflops"]
    )
    assert cli_main([*args[:3], "SiT-Q/2", *args[4:]]) == 2  # unknown preset


def test_cli_irepa_with_catalogue_encoders(tmp_path: Path) -> None:
    """REPA/iREPA through the real encoder stack: a random-init timm ViT-S and builtin HOG as two
    targets (catalogue entries of encoders.yaml, random weights, nothing downloaded)."""
    config = tmp_path / "run.yaml"
    config.write_text(
        "method: irepa\n"
        "encoders: [vit-s-random, hog]\n"
        "random_weights: true\n"
        "data: {resolution: 16, num_classes: 4, train_images: 32}\n"
        "model: {name: SiT-T/2, space: pixel}\n"
        "align: {projector_dim: 32}\n"
        "train: {steps: 2, global_batch: 4, precision: fp32, num_workers: 0}\n"
    )
    out = tmp_path / "out"
    catalogue = Path(__file__).resolve().parents[1] / "encoders.yaml"
    args = [
        "train",
        str(config),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--catalogue",
        str(catalogue),
    ]
    assert cli_main(args) == 0
    record = read_result(out)
    assert record["payload"]["encoder"] == "vit-s-random+hog"
    assert record["config"]["run"]["align"]["projector"] == "conv"
    rows = read_jsonl(out / "train_log.jsonl")
    assert len(rows) == 2 and all(-1 <= r["align_cos"] <= 1 for r in rows)
    state = load_checkpoint(out / "checkpoints" / "step_0000002.pt")
    shapes = {k: tuple(v.shape) for k, v in state["align"].items() if k.endswith("conv.weight")}
    assert shapes == {
        "projectors.0.conv.weight": (384, 64, 3, 3),
        "projectors.1.conv.weight": (36, 64, 3, 3),
    }


class CountingEncoder(PatchEncoder):
    """Counts how many images it has encoded."""

    def __init__(self) -> None:
        super().__init__((8, 8), dim=16)
        self.images_seen = 0

    def forward(self, images: torch.Tensor):
        self.images_seen += len(images)
        return super().forward(images)


def test_cache_targets_encodes_each_image_once_and_matches_fresh_targets(tmp_path: Path) -> None:
    # 64 training images, 8 steps of 16 = two epochs: the cache must encode each image once.
    cached_enc, fresh_enc = CountingEncoder(), CountingEncoder()
    cached = train(
        tiny_run(steps=8, cache_targets=True),
        tmp_path / "c",
        device="cpu",
        target_encoders=[cached_enc],
    )
    fresh = train(tiny_run(steps=8), tmp_path / "f", device="cpu", target_encoders=[fresh_enc])
    assert cached_enc.images_seen == 64
    assert fresh_enc.images_seen == 8 * 16
    rows_c, rows_f = (read_jsonl(tmp_path / d / "train_log.jsonl") for d in ("c", "f"))
    for a, b in zip(rows_c, rows_f, strict=True):  # float16 storage: equal to ~1e-3
        assert math.isclose(a["align_cos"], b["align_cos"], rel_tol=0, abs_tol=2e-3)
    assert cached["status"] == fresh["status"] == "done"


def test_ema_warmup_follows_its_formula_and_resumes_exactly(tmp_path: Path) -> None:
    from harness.train.trainer import ema_decay_at

    assert ema_decay_at(0, 0.999, True) == pytest.approx(0.1)
    assert ema_decay_at(90, 0.999, True) == pytest.approx(91 / 100)
    assert ema_decay_at(10_000, 0.999, True) == 0.999  # capped at ema_decay
    assert ema_decay_at(0, 0.999, False) == 0.999
    # behaviour: one step per call (each call resumes), then check the stored EMA against the
    # recurrence EMA_n = d * EMA_{n-1} + (1 - d) * W_n with d = n / (9 + n) (n - 1 updates done)
    run = tiny_run("none", steps=6, ckpt_every=100, keep_last=10, ema_decay=0.99, ema_warmup=True)
    states = []
    for stop in range(1, 7):
        train(run, tmp_path / "run", device="cpu", stop_after=stop)
        states.append(load_checkpoint(list_checkpoints(tmp_path / "run")[-1][1]))
    for n in range(2, 7):
        d = n / (9 + n)
        previous, current = states[n - 2], states[n - 1]
        for name, ema in current["ema"].items():
            if not ema.is_floating_point():
                continue
            expected = d * previous["ema"][name] + (1 - d) * current["model"][name]
            torch.testing.assert_close(ema, expected, rtol=1e-5, atol=1e-7)
    moved = [k for k, v in states[-1]["model"].items() if not torch.equal(v, states[0]["model"][k])]
    assert moved  # the weights trained, so the check above is not vacuous


def test_op_breakdown_ranks_a_known_step() -> None:
    """A step of one large matmul and one tiny add: the matmul is first, once per step, and
    takes most of the self time."""
    from harness.train.bench import op_breakdown

    a, b, small = torch.randn(512, 512), torch.randn(512, 512), torch.ones(4)
    ops = op_breakdown(lambda: (a @ b, small + 1), steps=3)
    assert ops[0]["op"] == "aten::mm" and ops[0]["calls_per_step"] == 1
    assert ops[0]["share"] > 0.5
    add = next(o for o in ops if o["op"] == "aten::add")
    assert add["calls_per_step"] == 1 and add["ms_per_step"] < ops[0]["ms_per_step"]
