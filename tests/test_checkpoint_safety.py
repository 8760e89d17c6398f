"""Checkpoints never need pickle: they hold only tensors, numbers, strings, lists and dicts, load
with ``torch.load(weights_only=True)``, and a file that needs pickle (a planted one, or one of
format 1) is refused unless the user trusts it (``--trust-checkpoint``) or converts it once
(``harness checkpoint convert``)."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.cli import main
from harness.config.data import DataConfig
from harness.config.run import RunConfig
from harness.train.checkpoint import (
    ENV_TRUST,
    UntrustedCheckpointError,
    checkpoint_path,
    decode_rng,
    decode_run,
    load_checkpoint,
    save_checkpoint,
)
from harness.train.loop import train
from harness.train.trainer import _rng_state, _set_rng_state

pytestmark = pytest.mark.usefixtures("results_root")
SAMPLE = ["--n", "2", "--device", "cpu", "--sampler.num_steps", "2", "--sampler.mode", "ode"]


class RunsCode:
    """Unpickling this creates ``marker``: what a planted checkpoint could do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def tiny_run(steps: int = 2) -> RunConfig:
    return RunConfig(
        method="none",
        data=DataConfig(resolution=16, num_classes=4, train_images=16),
        model={"name": "SiT-T/2", "space": "pixel"},
        train={"steps": steps, "global_batch": 8, "precision": "fp32", "num_workers": 0},
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A real 2-step training run directory (its checkpoint: step 2)."""
    out = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_RESULTS", str(tmp_path_factory.mktemp("results")))
        assert train(tiny_run(), out, device="cpu")["status"] == "done"
    yield out


def as_format_1(src: Path, dst: Path) -> Path:
    """``src`` rewritten the way harness wrote checkpoints before format 2 (RNG state tuples
    with a numpy array, the run as a dict): it loads only with full unpickling."""
    state = torch.load(src, weights_only=True)
    state.update(format=1, rng=decode_rng(state["rng"]), run=decode_run(state["run"]))
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, dst)
    return dst


def test_real_checkpoint_loads_with_weights_only(trained: Path) -> None:
    state = torch.load(checkpoint_path(trained, 2), weights_only=True)  # raises if it needs pickle
    assert state["format"] == 2 and state["step"] == 2
    assert isinstance(state["run"], str) and json.loads(state["run"])["method"] == "none"
    assert isinstance(state["rng"]["torch"], torch.Tensor)
    assert isinstance(state["rng"]["numpy"]["key"], torch.Tensor)
    assert isinstance(state["rng"]["python"]["internal"], torch.Tensor)
    assert load_checkpoint(checkpoint_path(trained, 2), trust=False)["run_id"] == state["run_id"]


def test_rng_states_round_trip_exactly(tmp_path: Path) -> None:
    random.gauss(0, 1)  # python and numpy then hold a cached gaussian: it must survive too
    np.random.standard_normal()
    path = save_checkpoint(
        tmp_path / "c.pt", {"step": 0, "model": {}, "ema": {}, "run": "{}", "rng": _rng_state()}
    )
    expected = (torch.rand(4), np.random.standard_normal(3), random.gauss(0, 1), random.random())
    torch.manual_seed(123), np.random.seed(123), random.seed(123)  # scramble every RNG
    _set_rng_state(load_checkpoint(path, trust=False)["rng"])
    got = (torch.rand(4), np.random.standard_normal(3), random.gauss(0, 1), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2:] == expected[2:]


def test_checkpoint_that_runs_code_is_refused_and_nothing_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "code-ran"
    planted = tmp_path / "shared" / "step_0000001.pt"
    planted.parent.mkdir()
    state = {"format": 2, "step": 1, "model": {}, "ema": {}, "run": "{}", "x": RunsCode(marker)}
    torch.save(state, planted)

    with pytest.raises(UntrustedCheckpointError) as info:
        load_checkpoint(planted)
    assert str(planted) in info.value.message and "needs pickle" in info.value.message
    assert "--trust-checkpoint" in info.value.hint and "checkpoint convert" in info.value.hint
    for argv in (
        ["sample", str(planted), "--out", str(tmp_path / "g.png"), *SAMPLE],
        ["eval", str(planted), "--device", "cpu"],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"checkpoint {planted} needs pickle" in err and "--trust-checkpoint" in err
    assert not marker.exists()

    load_checkpoint(planted, trust=True)  # the user's explicit choice: the code runs
    assert marker.exists()


def test_format_1_checkpoint_needs_trust_or_conversion(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = as_format_1(checkpoint_path(trained, 2), checkpoint_path(tmp_path / "old", 2))
    with pytest.raises(UntrustedCheckpointError):
        load_checkpoint(old)
    grid = tmp_path / "grid.png"
    assert main(["sample", str(old), "--out", str(grid), *SAMPLE]) == 2
    assert "needs pickle" in capsys.readouterr().err and not grid.exists()
    assert main(["sample", str(old), "--out", str(grid), "--trust-checkpoint", *SAMPLE]) == 0
    assert grid.stat().st_size > 0
    assert ENV_TRUST not in os.environ  # the flag is scoped to its command

    assert main(["checkpoint", "convert", str(old)]) == 0
    assert f"converted: {old}" in capsys.readouterr().out
    converted = torch.load(old, weights_only=True)
    original = torch.load(checkpoint_path(trained, 2), weights_only=True)
    assert converted["format"] == 2 and json.loads(converted["run"]) == json.loads(original["run"])
    for key, value in original["model"].items():
        assert torch.equal(converted["model"][key], value)
    for name in ("numpy", "python"):
        for key, value in original["rng"][name].items():
            other = converted["rng"][name][key]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other
    assert main(["checkpoint", "convert", str(tmp_path / "old")]) == 0  # a run directory
    assert f"already format 2: {old}" in capsys.readouterr().out


def test_resume_from_a_trusted_format_1_checkpoint(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    as_format_1(checkpoint_path(trained, 2), checkpoint_path(out, 2))
    with pytest.raises(UntrustedCheckpointError):
        train(tiny_run(steps=3), out, device="cpu")
    monkeypatch.setenv(ENV_TRUST, "1")  # what `harness train --trust-checkpoint` sets
    assert train(tiny_run(steps=3), out, device="cpu")["status"] == "done"
    monkeypatch.delenv(ENV_TRUST)
    assert load_checkpoint(checkpoint_path(out, 3), trust=False)["step"] == 3
