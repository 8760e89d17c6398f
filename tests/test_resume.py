"""Exact resume: 2N steps == N steps + kill + N resumed (bit-identical state, identical log);
atomic checkpoint writes survive SIGKILL; truncated or corrupt checkpoints are skipped."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from harness.config.data import DataConfig
from harness.config.run import RunConfig
from harness.io import read_jsonl
from harness.train.checkpoint import (
    checkpoint_path,
    is_valid,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from harness.train.loop import train
from harness.train.toys import PatchEncoder

pytestmark = pytest.mark.usefixtures("results_root")
N = 4
DETERMINISTIC = ("step", "loss", "flow_loss", "proj_loss", "align_cos", "grad_norm", "lr")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Bit-identity across processes needs the same reduction order: one intra-op thread here
    and in the subprocesses (other tests may have changed this process's thread count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def resume_run() -> RunConfig:
    return RunConfig(
        method="irepa",
        encoder="toy",
        data=DataConfig(resolution=16, num_classes=4, train_images=24),  # epochs wrap mid-run
        model={"name": "SiT-T/2", "space": "pixel"},
        align={"projector_dim": 32},
        train={
            "steps": 2 * N,
            "global_batch": 8,
            "precision": "fp32",
            "num_workers": 0,
            "ckpt_every": N,
            "keep_last": 3,
            "sync_every": 1,
            "deterministic": True,
            "lr": 1e-3,
        },
    )


def _encoder() -> list[PatchEncoder]:
    return [PatchEncoder((8, 8), dim=16)]


def _assert_same_state(a: Path, b: Path) -> None:
    sa, sb = load_checkpoint(a), load_checkpoint(b)
    assert sa["step"] == sb["step"] and sa["data_position"] == sb["data_position"]
    for part in ("model", "ema", "align"):
        assert sa[part].keys() == sb[part].keys()
        for key in sa[part]:
            assert torch.equal(sa[part][key], sb[part][key]), f"{part}.{key} differs"
    opt_a, opt_b = sa["optimizer"]["state"], sb["optimizer"]["state"]
    for index in opt_a:
        for key in opt_a[index]:
            assert torch.equal(opt_a[index][key], opt_b[index][key]), f"optimizer {index}.{key}"


def _log(path: Path) -> list[tuple]:
    return [tuple(row[k] for k in DETERMINISTIC) for row in read_jsonl(path / "train_log.jsonl")]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("full")
    assert train(resume_run(), out, device="cpu", target_encoders=_encoder())["status"] == "done"
    return out


def test_stop_and_resume_is_bit_identical(uninterrupted: Path, tmp_path: Path) -> None:
    first = train(resume_run(), tmp_path, device="cpu", target_encoders=_encoder(), stop_after=N)
    assert first["status"] == "interrupted" and first["payload"]["steps_done"] == N
    second = train(resume_run(), tmp_path, device="cpu", target_encoders=_encoder())
    assert second["status"] == "done"
    _assert_same_state(checkpoint_path(tmp_path, 2 * N), checkpoint_path(uninterrupted, 2 * N))
    assert _log(tmp_path) == _log(uninterrupted)
    assert second["payload"]["final"] == {
        k: read_jsonl(uninterrupted / "train_log.jsonl")[-1][k]
        for k in ("loss", "flow_loss", "proj_loss", "align_cos")
    }


KILLED_TRAINER = textwrap.dedent(
    """
    import sys
    from harness.config.run import RunConfig
    from harness.train.loop import train
    from harness.train.toys import PatchEncoder

    run = RunConfig.model_validate_json(open(sys.argv[1]).read())
    calls = []

    def block_after_two_more_steps():
        calls.append(1)
        if len(calls) == int(sys.argv[3]):
            print("ready", flush=True)
            sys.stdin.read()  # blocks until the parent kills us
        return False

    train(run, sys.argv[2], device="cpu", target_encoders=[PatchEncoder((8, 8), dim=16)],
          should_stop=block_after_two_more_steps)
    """
)


def _run_until_ready(script: str, *args: str) -> None:
    """Start ``script``, wait until it prints "ready", then SIGKILL it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HARNESS_PROGRESS": "0", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "ready", proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigkill_mid_run_then_resume_is_bit_identical(uninterrupted: Path, tmp_path: Path) -> None:
    config = tmp_path / "run.json"
    config.write_text(resume_run().model_dump_json())
    out = tmp_path / "run"
    # should_stop is polled after each step's update, before its log row is flushed: the
    # process dies after step N+2 was computed, with rows 1..N+1 on disk and checkpoint N.
    _run_until_ready(KILLED_TRAINER, str(config), str(out), str(N + 2))
    assert [s for s, _ in list_checkpoints(out)] == [N]
    assert [r["step"] for r in read_jsonl(out / "train_log.jsonl")] == list(range(1, N + 2))
    outcome = train(resume_run(), out, device="cpu", target_encoders=_encoder())
    assert outcome["status"] == "done"
    _assert_same_state(checkpoint_path(out, 2 * N), checkpoint_path(uninterrupted, 2 * N))
    assert _log(out) == _log(uninterrupted)  # row N+1 of the killed run was cut and redone


def test_truncated_and_corrupt_checkpoints_are_skipped(uninterrupted: Path, tmp_path: Path) -> None:
    shutil.copytree(uninterrupted / "checkpoints", tmp_path / "checkpoints")
    latest = checkpoint_path(tmp_path, 2 * N)
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 2])  # truncated
    assert not is_valid(latest)
    assert latest_checkpoint(tmp_path) == checkpoint_path(tmp_path, N)
    flipped = bytearray(checkpoint_path(tmp_path, N).read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF  # bit rot inside a tensor record
    checkpoint_path(tmp_path, N).write_bytes(bytes(flipped))
    assert latest_checkpoint(tmp_path) is None
    # training resumes from the newest valid checkpoint: here none, so from scratch
    outcome = train(resume_run(), tmp_path, device="cpu", target_encoders=_encoder())
    assert outcome["status"] == "done"
    _assert_same_state(checkpoint_path(tmp_path, 2 * N), checkpoint_path(uninterrupted, 2 * N))


def test_resume_skips_a_corrupt_latest_for_the_previous(
    uninterrupted: Path, tmp_path: Path
) -> None:
    train(resume_run(), tmp_path, device="cpu", target_encoders=_encoder(), stop_after=N + 1)
    last = checkpoint_path(tmp_path, N + 1)
    last.write_bytes(last.read_bytes()[:1000])
    outcome = train(resume_run(), tmp_path, device="cpu", target_encoders=_encoder())
    assert outcome["status"] == "done"
    _assert_same_state(checkpoint_path(tmp_path, 2 * N), checkpoint_path(uninterrupted, 2 * N))
    assert _log(tmp_path) == _log(uninterrupted)


BLOCKING_SAVER = textwrap.dedent(
    """
    import sys
    import torch
    from harness.train.checkpoint import save_checkpoint

    class BlockWhilePickled:
        def __reduce__(self):
            print("ready", flush=True)
            sys.stdin.read()  # the parent SIGKILLs us in the middle of torch.save
            return (int, ())

    base = {"step": 1, "model": {"w": torch.arange(1000.0)}, "ema": {}, "run": {}}
    save_checkpoint(sys.argv[1] + "/checkpoints/step_0000001.pt", base)
    big = {"step": 2, "model": {"w": torch.zeros(10**6)}, "ema": {}, "run": {}, "x": BlockWhilePickled()}
    save_checkpoint(sys.argv[1] + "/checkpoints/step_0000002.pt", big)
    """
)


def test_sigkill_during_checkpoint_write_keeps_previous_loadable(tmp_path: Path) -> None:
    _run_until_ready(BLOCKING_SAVER, str(tmp_path))
    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert "step_0000002.pt" not in files and any(f.endswith(".tmp") for f in files)
    assert latest_checkpoint(tmp_path) == checkpoint_path(tmp_path, 1)
    assert torch.equal(
        load_checkpoint(checkpoint_path(tmp_path, 1))["model"]["w"], torch.arange(1000.0)
    )
    save_checkpoint(checkpoint_path(tmp_path, 3), {"step": 3, "model": {}, "ema": {}, "run": {}})
    assert latest_checkpoint(tmp_path) == checkpoint_path(tmp_path, 3)


def test_load_for_sampling_checks_model_and_integrity(uninterrupted: Path, tmp_path: Path) -> None:
    from harness.config.model import ModelConfig
    from harness.errors import ArtifactError
    from harness.train.checkpoint import load_for_sampling

    path = checkpoint_path(uninterrupted, 2 * N)
    model, run = load_for_sampling(
        path, "cpu", expect_model=ModelConfig(name="SiT-T/2", space="pixel")
    )
    assert run == resume_run() and not model.training
    ema = load_checkpoint(path)["ema"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ema.items())
    with pytest.raises(ArtifactError, match=r"differs in \['name'\]"):
        load_for_sampling(path, "cpu", expect_model=ModelConfig(name="SiT-T/4", space="pixel"))
    broken = tmp_path / "step_0000001.pt"
    broken.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ArtifactError, match="truncated or corrupt"):
        load_for_sampling(broken, "cpu")
