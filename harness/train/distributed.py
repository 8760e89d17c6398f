"""Process-group setup for data-parallel training, from torchrun or SLURM/submitit variables.

One process per GPU: each binds to ``cuda:<local rank>``. The environment decides:

* torchrun / ``torch.multiprocessing``: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR``, ``MASTER_PORT``;
* SLURM (``srun`` or submitit with ``tasks_per_node = gpus``): ``SLURM_PROCID``,
  ``SLURM_NTASKS``, ``SLURM_LOCALID``; the master is the first host of ``SLURM_JOB_NODELIST``
  and the port is derived from the job id (overridable with ``MASTER_PORT``).

``nccl`` on GPUs, ``gloo`` on CPU. A single process never creates a process group.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist

from harness.errors import HarnessError


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool  # this module created the process group (and destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def first_host(nodelist: str) -> str:
    """First host of a SLURM node list: ``"gpu[03-05,07],cpu1"`` -> ``"gpu03"``."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise HarnessError(f"cannot parse SLURM node list {nodelist!r}")
    prefix, ranges = match.group(1), match.group(2)
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def _launch_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun or SLURM variables (0, 1, 0 if neither)."""
    world = _env_int("WORLD_SIZE")
    if world is not None:
        return _env_int("RANK") or 0, world, _env_int("LOCAL_RANK") or 0
    ntasks = _env_int("SLURM_NTASKS")
    if ntasks is not None and ntasks > 1:
        rank, local = _env_int("SLURM_PROCID") or 0, _env_int("SLURM_LOCALID") or 0
        os.environ.setdefault("MASTER_ADDR", first_host(os.environ.get("SLURM_JOB_NODELIST", "")))
        job = _env_int("SLURM_JOB_ID") or 0
        os.environ.setdefault("MASTER_PORT", str(20_000 + job % 20_000))
        return rank, ntasks, local
    return 0, 1, 0


def init_distributed(device: str | None = None) -> DistEnv:
    """Join (or create) the process group described by the environment.

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; None = CUDA when available. With CUDA and
            several local processes, each process uses ``cuda:<local rank>``.

    Returns:
        The :class:`DistEnv` of this process.
    """
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise HarnessError(f"device {device!r} requested but CUDA is not available")
    if dist.is_available() and dist.is_initialized():  # the caller set it up
        rank, world = dist.get_rank(), dist.get_world_size()
        local = _env_int("LOCAL_RANK") or _env_int("SLURM_LOCALID") or 0
        return DistEnv(rank, world, local, _device(use_cuda, device, local), owns_group=False)
    rank, world, local = _launch_env()
    dev = _device(use_cuda, device, local)
    if world == 1:
        return DistEnv(0, 1, 0, dev, owns_group=False)
    if use_cuda:
        torch.cuda.set_device(dev)
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise HarnessError(f"distributed run (world size {world}) but ${name} is not set")
    dist.init_process_group(
        backend="nccl" if use_cuda else "gloo",
        init_method="env://",
        rank=rank,
        world_size=world,
        device_id=dev if use_cuda else None,
    )
    return DistEnv(rank, world, local, dev, owns_group=True)


def _device(use_cuda: bool, device: str | None, local_rank: int) -> torch.device:
    if not use_cuda:
        return torch.device("cpu")
    if device is not None and ":" in device:
        return torch.device(device)
    return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))


def shutdown(env: DistEnv) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_mean(x: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Average ``x`` over ranks (in place; identity for one process)."""
    if env.distributed:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= env.world_size
    return x


def any_rank(flag: bool, env: DistEnv) -> bool:
    """True on every rank when ``flag`` is true on at least one."""
    if not env.distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=env.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def rank_seed(seed: int, rank: int) -> int:
    """A per-rank seed derived from the run seed (for anything genuinely rank-local)."""
    return (seed * 1_000_003 + rank * 7_919) % (2**63 - 1)
