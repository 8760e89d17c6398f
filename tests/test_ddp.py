"""Data parallelism: 2 gloo processes (torchrun-style environment) train exactly what 1 process
trains at the same global batch; SLURM variables map to ranks."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from harness.config.data import DataConfig
from harness.config.run import RunConfig
from harness.io import read_jsonl
from harness.train import distributed
from harness.train.checkpoint import checkpoint_path, load_checkpoint
from harness.train.loop import train
from harness.train.toys import PatchEncoder

pytestmark = pytest.mark.usefixtures("results_root")
STEPS = 3


def ddp_run() -> RunConfig:
    return RunConfig(
        method="repa",
        encoder="toy",
        data=DataConfig(resolution=16, num_classes=4, train_images=32),
        model={"name": "SiT-T/2", "space": "pixel"},
        align={"projector_dim": 32},
        train={
            "steps": STEPS,
            "global_batch": 8,
            "precision": "fp32",
            "num_workers": 0,
            "ckpt_every": STEPS,
            "sync_every": 1,
            "lr": 1e-3,
        },
    )


RANK_SCRIPT = textwrap.dedent(
    """
    import sys
    from harness.config.run import RunConfig
    from harness.train.loop import train
    from harness.train.toys import PatchEncoder

    run = RunConfig.model_validate_json(open(sys.argv[1]).read())
    outcome = train(run, sys.argv[2], device="cpu", target_encoders=[PatchEncoder((8, 8), dim=16)])
    assert outcome["status"] == "done", outcome
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_gloo_processes_match_one_process(tmp_path: Path) -> None:
    config = tmp_path / "run.json"
    config.write_text(ddp_run().model_dump_json())
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "HARNESS_PROGRESS": "0",
            "OMP_NUM_THREADS": "1",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", RANK_SCRIPT, str(config), str(tmp_path / "ddp")],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]

    single = train(
        ddp_run(), tmp_path / "single", device="cpu", target_encoders=[PatchEncoder((8, 8), dim=16)]
    )
    assert single["status"] == "done"
    a = load_checkpoint(checkpoint_path(tmp_path / "ddp", STEPS))
    b = load_checkpoint(checkpoint_path(tmp_path / "single", STEPS))
    for part in ("model", "ema", "align"):
        for key in b[part]:
            torch.testing.assert_close(a[part][key], b[part][key], atol=1e-6, rtol=1e-5)
    moved = sum((b["model"][k] - b["ema"][k]).abs().sum() for k in b["model"])
    assert moved > 0  # training changed the weights (the comparison is not vacuous)
    rows_ddp = read_jsonl(tmp_path / "ddp" / "train_log.jsonl")
    rows_one = read_jsonl(tmp_path / "single" / "train_log.jsonl")
    assert len(rows_ddp) == len(rows_one) == STEPS
    for r_ddp, r_one in zip(rows_ddp, rows_one):
        for key in ("loss", "flow_loss", "proj_loss", "grad_norm"):
            assert math.isclose(r_ddp[key], r_one[key], rel_tol=1e-5, abs_tol=1e-6), key


def test_slurm_environment_maps_to_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "16")
    monkeypatch.setenv("SLURM_PROCID", "9")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[07-08,11],cpu1")
    monkeypatch.setenv("SLURM_JOB_ID", "123456")
    assert distributed._launch_env() == (9, 16, 1)
    assert os.environ["MASTER_ADDR"] == "gpu07" and os.environ["MASTER_PORT"] == str(
        20_000 + 123456 % 20_000
    )
    assert distributed.first_host("node1") == "node1"
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.delenv("MASTER_ADDR")
    assert distributed._launch_env() == (0, 1, 0)


def test_single_process_needs_no_group() -> None:
    env = distributed.init_distributed("cpu")
    assert (env.rank, env.world_size, env.owns_group, env.device.type) == (0, 1, False, "cpu")
