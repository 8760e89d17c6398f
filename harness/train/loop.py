"""The SiT training loop (flow matching + optional REPA/iREPA alignment), resumable and
interruptible. ``harness train`` and the sweep's ``train`` stage both call :func:`train`.

Usage::

    from harness.train.loop import train, checkpoint_on_signals
    with checkpoint_on_signals():            # SIGUSR2/SIGTERM -> checkpoint, return "interrupted"
        outcome = train(run, out_dir, catalogue=catalogue)
    outcome["status"]     # "done" | "diverged" | "interrupted"
    outcome["payload"]    # the train payload of docs/architecture.md

Files in ``out_dir``: ``run.json`` (resolved config), ``train_log.jsonl`` (one row per logged step:
step, loss, flow_loss, proj_loss, align_cos, grad_norm, lr, images_per_s, time),
``checkpoints/step_XXXXXXX.pt``.

Hot loop: no host synchronisation except every ``train.sync_every`` steps, where the buffered
per-step metrics are copied to the host at once, averaged over ranks, checked for non-finite
values and logged. A checkpoint is only written right after such a check, so a saved state is
never a diverged one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from harness.config.run import RunConfig
from harness.io import write_json
from harness.logs import event, get_logger
from harness.progress import progress
from harness.train.data import StepBatchSampler
from harness.train.distributed import any_rank, barrier, init_distributed
from harness.train.distributed import shutdown as shutdown_distributed
from harness.train.steplog import LOG_FILE
from harness.train.trainer import Trainer, TrainModule, backend_settings

__all__ = [
    "LOG_FILE",
    "TrainModule",
    "Trainer",
    "backend_settings",
    "checkpoint_on_signals",
    "request_checkpoint",
    "train",
]

log = get_logger(__name__)

_STOP = threading.Event()


# ---------------------------------------------------------------------------------------------
# Interruption
# ---------------------------------------------------------------------------------------------
def request_checkpoint() -> None:
    """Ask the running :func:`train` to checkpoint at the next step boundary and return with
    status ``"interrupted"`` (safe to call from a signal handler or another thread)."""
    _STOP.set()


@contextlib.contextmanager
def checkpoint_on_signals(
    signals: Sequence[signal.Signals] = (signal.SIGUSR2, signal.SIGTERM),
) -> Iterator[None]:
    """Install handlers that call :func:`request_checkpoint` (main thread only); restores the
    previous handlers and clears the request on exit."""
    previous = {sig: signal.signal(sig, lambda *_: request_checkpoint()) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _STOP.clear()


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------
def train(
    run: RunConfig,
    out_dir: str | Path,
    *,
    catalogue: Any = None,
    device: str | None = None,
    stop_after: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    target_encoders: Sequence[Any] | None = None,
    dataset: Any = None,
) -> dict[str, Any]:
    """Train (or continue training) one run in ``out_dir``.

    Resumes from the newest valid checkpoint in ``out_dir/checkpoints``; everything that can be
    wrong with the inputs (encoder grid/dim, batch split, classes, latent cache) is checked before
    the first step. Under torchrun or a multi-task SLURM job every process calls this (DDP).

    Args:
        run: the resolved run config.
        out_dir: the run directory (checkpoints, ``train_log.jsonl``, ``run.json``).
        catalogue: the encoder catalogue (``catalogue.get(name) -> EncoderSpec``); needed for
            repa/irepa unless ``target_encoders`` is given.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``; None = CUDA if available.
        stop_after: checkpoint and return ``"interrupted"`` once this (absolute) step is done.
        should_stop: polled at step boundaries (every step for one process, every
            ``sync_every`` steps under DDP); True -> checkpoint and return ``"interrupted"``.
            :func:`request_checkpoint` / :func:`checkpoint_on_signals` do the same.
        target_encoders: prebuilt target encoders (one per ``run.targets``): objects with
            ``embed_dim``, ``grid`` and ``__call__(uint8 images) -> .tokens``.
        dataset: the training dataset (default ``harness.data.build_dataset(run.data, "train")``).

    Returns:
        ``{"status": "done" | "diverged" | "interrupted", "error": str | None,
        "payload": {...}, "rank": int}`` with the ``train`` payload of docs/architecture.md
        (only rank 0 should write result files).
    """
    out_dir = Path(out_dir)
    env = init_distributed(device)
    try:
        with backend_settings(run):
            trainer = Trainer(
                run,
                out_dir,
                env,
                catalogue=catalogue,
                target_encoders=target_encoders,
                dataset=dataset,
            )
            if env.is_main:
                out_dir.mkdir(parents=True, exist_ok=True)
                write_json(out_dir / "run.json", {"run_id": trainer.id, "run": run.to_dict()})
            barrier(env)
            trainer.resume()
            trainer.wrap()
            return _loop(trainer, stop_after=stop_after, should_stop=should_stop)
    finally:
        shutdown_distributed(env)


def _loop(
    trainer: Trainer, *, stop_after: int | None, should_stop: Callable[[], bool] | None
) -> dict[str, Any]:
    cfg, env = trainer.cfg, trainer.env
    start = trainer.start_step
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    if start >= end:
        status = "done" if start >= cfg.steps else "interrupted"
        return _outcome(trainer, status, start)
    sampler = StepBatchSampler(
        len(trainer.dataset),
        global_batch=cfg.global_batch,
        rank=env.rank,
        world_size=env.world_size,
        micro_batch=trainer.micro_batch,
        seed=trainer.run.seed,
        start_step=start,
        steps=end,
    )
    loader = torch.utils.data.DataLoader(
        trainer.dataset,
        batch_sampler=sampler,
        num_workers=cfg.num_workers,
        pin_memory=trainer.device.type == "cuda",
        prefetch_factor=4 if cfg.num_workers else None,
    )
    batches = iter(loader)
    bar = progress(total=cfg.steps, initial=start, desc=f"train {trainer.id}", unit="step")
    began = window_start = time.perf_counter()
    pending: list[tuple[int, torch.Tensor, float]] = []
    for index in range(start, end):
        step = index + 1
        pending.append((step, trainer.train_step(index, batches), time.perf_counter() - began))
        bar.update(1)
        stop = _stop_requested(should_stop) if not env.distributed else False
        boundary = step % cfg.sync_every == 0 or step % cfg.ckpt_every == 0 or step == end
        if not (boundary or stop):
            continue
        if env.distributed:
            stop = any_rank(_stop_requested(should_stop), env)
        now = time.perf_counter()
        diverged = trainer.log.flush(pending, now - window_start, trainer.lr)
        pending, window_start = [], now
        if diverged is not None:
            bar.close()
            return _outcome(trainer, "diverged", step - 1, diverged)
        if step % cfg.ckpt_every == 0 or step == end or stop:
            trainer.save(step)
        if stop or step == stop_after:
            bar.close()
            _STOP.clear()  # the request is served: a later train() call runs normally
            return _outcome(trainer, "interrupted" if step < cfg.steps else "done", step)
    bar.close()
    return _outcome(trainer, "done" if end >= cfg.steps else "interrupted", end)


def _stop_requested(should_stop: Callable[[], bool] | None) -> bool:
    return _STOP.is_set() or (should_stop is not None and bool(should_stop()))


def _outcome(
    trainer: Trainer, status: str, steps_done: int, diverged: dict[str, Any] | None = None
) -> dict[str, Any]:
    run, last = trainer.run, trainer.log.last_finite or {}
    payload = {
        "run_id": trainer.id,
        "encoder": "+".join(run.targets) if run.targets else None,
        "method": run.method,
        "model": run.model.name,
        "seed": run.seed,
        "steps_target": run.train.steps,
        "steps_done": steps_done,
        "final": {k: last.get(k) for k in ("loss", "flow_loss", "proj_loss", "align_cos")},
        "images_per_s": trainer.log.images_per_s(),
        "checkpoints": {
            str(s): os.path.relpath(p, trainer.out_dir)
            for s, p in sorted(trainer.checkpoints.items())
        },
        "diverged": diverged,
    }
    error = None
    if diverged is not None:
        error = (
            f"non-finite {', '.join(diverged['non_finite'])} at step {diverged['step']}; "
            f"resume from {diverged['resume_from']}"
        )
    event(log, "train.finished", run_id=trainer.id, status=status, steps_done=steps_done)
    return {"status": status, "error": error, "payload": payload, "rank": trainer.env.rank}
