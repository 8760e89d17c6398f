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
import copy
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.config.run import RunConfig, identity, run_id
from harness.errors import StageError
from harness.io import append_jsonl, read_jsonl, write_json, write_text
from harness.logs import event, get_logger
from harness.progress import progress
from harness.train import checkpoint as ckpt
from harness.train.align import Alignment, check_target, encoder_tokens, resize_tokens
from harness.train.data import (
    StepBatchSampler,
    StepNoise,
    derive_seed,
    draw_step_noise,
    pixels_to_model,
    sample_posterior,
)
from harness.train.distributed import DistEnv, all_mean, any_rank, barrier, init_distributed
from harness.train.distributed import shutdown as shutdown_distributed
from harness.train.flow import PATHS, flow_loss, interpolate

log = get_logger(__name__)

LOG_FILE = "train_log.jsonl"
METRICS = ("loss", "flow_loss", "proj_loss", "align_cos", "grad_norm")
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
# The trained module
# ---------------------------------------------------------------------------------------------
class TrainModule(nn.Module):
    """SiT + projectors in one module (what DDP and torch.compile wrap)."""

    def __init__(self, sit: nn.Module, alignment: Alignment | None, depth: int) -> None:
        super().__init__()
        self.sit = sit
        self.alignment = alignment
        self.depth = depth

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.alignment is None:
            return self.sit(x, t, y), []
        v, hidden = self.sit.forward_features(x, t, y, self.depth)  # (B,C,S,S), (B,T,D)
        return v, self.alignment.project(hidden)


@torch.no_grad()
def ema_update(ema_params: list[torch.Tensor], params: list[torch.Tensor], decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * param, as one fused foreach op."""
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)


def _rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


@contextlib.contextmanager
def backend_settings(run: RunConfig) -> Iterator[None]:
    """TF32, cuDNN autotuning and deterministic kernels as the run asks; restored on exit."""
    cfg = run.train
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
        torch.are_deterministic_algorithms_enabled(),
    )
    torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
    torch.backends.cudnn.allow_tf32 = cfg.tf32
    torch.backends.cudnn.benchmark = not cfg.deterministic
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved[0]
        torch.backends.cudnn.allow_tf32 = saved[1]
        torch.backends.cudnn.benchmark = saved[2]
        torch.use_deterministic_algorithms(saved[3])


# ---------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------
class Trainer:
    """State of one training invocation (see :func:`train`)."""

    def __init__(
        self,
        run: RunConfig,
        out_dir: Path,
        env: DistEnv,
        *,
        catalogue: Any,
        target_encoders: Sequence[Any] | None,
        dataset: Any,
    ) -> None:
        self.run, self.cfg, self.out_dir, self.env = run, run.train, out_dir, env
        self.device = env.device
        self.id = run_id(run)
        self.grid = run.model.grid
        self._check_batches()
        self.encoders = self._build_targets(catalogue, target_encoders)  # startup checks first
        self.dataset, self.vae = self._training_data(dataset)
        self._build_model()
        self.path = PATHS.get(self.cfg.path)
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
            self.cfg.precision
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.cfg.precision == "fp16")
        self.start_step = 0
        self.checkpoints: dict[int, str] = {}
        self.last_finite: dict[str, Any] | None = None
        self.windows: list[tuple[int, float]] = []  # (images, seconds) per sync window

    # -- setup ---------------------------------------------------------------------------------
    def _check_batches(self) -> None:
        g, world = self.cfg.global_batch, self.env.world_size
        if g % world:
            raise StageError(
                f"train.global_batch {g} is not divisible by the {world} processes",
                hint="global_batch is the total over all GPUs; choose a multiple of the GPU count",
            )
        self.local_batch = g // world
        self.micro_batch = min(self.cfg.micro_batch or self.local_batch, self.local_batch)
        if self.local_batch % self.micro_batch:
            raise StageError(
                f"train.micro_batch {self.micro_batch} does not divide the per-GPU batch "
                f"{self.local_batch} (global_batch {g} / {world} GPUs)"
            )

    def _build_targets(self, catalogue: Any, given: Sequence[Any] | None) -> list[Any]:
        names = self.run.targets
        if not self.run.uses_encoder:
            return []
        if given is not None:
            encoders = list(given)
            if len(encoders) != len(names):
                raise StageError(f"{len(encoders)} target encoders given for targets {names}")
        else:
            encoders = self._create_encoders(catalogue, names)
        for name, enc in zip(names, encoders):
            check_target(name, tuple(enc.grid), int(enc.embed_dim), self.grid)
        return encoders

    def _create_encoders(self, catalogue: Any, names: list[str]) -> list[Any]:
        if catalogue is None:
            raise StageError(
                f"method {self.run.method!r} needs the encoder catalogue to build {names}",
                hint="pass --catalogue encoders.yaml (harness train) or catalogue= (train())",
            )
        from harness.encoders import create_encoder

        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        return [
            create_encoder(
                catalogue.get(name),
                grid=self.grid,
                device=self.device,
                dtype=dtype,
                random_weights=self.run.random_weights,
            )
            for name in names
        ]

    def _training_data(self, dataset: Any) -> tuple[Any, nn.Module | None]:
        from harness.paths import cache_dir, results_root
        from harness.train.latents import LatentCache, LatentDataset, cache_key, load_vae

        if dataset is None:
            from harness.data import build_dataset

            dataset = build_dataset(self.run.data, "train")
        self._check_dataset(dataset)
        if self.run.model.space == "pixel" or isinstance(dataset, LatentDataset):
            return dataset, None
        key = cache_key(dataset.fingerprint(), "train", self.cfg.vae, self.run.random_weights)
        cache = LatentCache(cache_dir(results_root(), "latents") / key)
        if self.cfg.latents != "online" and cache.complete:
            return LatentDataset(dataset, cache.moments()), None
        if self.cfg.latents == "cache":
            raise StageError(
                f"train.latents is 'cache' but no complete latent cache exists at {cache.dir}",
                hint="run `harness prepare RUN.yaml` first, or set train.latents: auto",
            )
        vae = load_vae(self.cfg.vae, self.device, random_weights=self.run.random_weights)
        return dataset, vae

    def _check_dataset(self, dataset: Any) -> None:
        resolution = getattr(dataset, "resolution", self.run.data.resolution)
        if resolution != self.run.data.resolution:
            raise StageError(f"dataset is {resolution} px, run expects {self.run.data.resolution}")
        classes = getattr(dataset, "num_classes", 0)
        if classes > (self.run.model.num_classes or 0):
            raise StageError(
                f"the dataset has {classes} classes but model.num_classes is "
                f"{self.run.model.num_classes}",
                hint=f"set model.num_classes: {classes} in the run config",
            )

    def _build_model(self) -> None:
        from harness.models.sit import SiT

        align = self.run.align
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.run.seed, "init") % 2**31)
            sit = SiT.from_config(self.run.model)
            alignment = None
            if self.encoders:
                dims = [int(enc.embed_dim) for enc in self.encoders]
                alignment = Alignment(align, sit.hidden, dims, self.grid)
        self.sit = sit.to(self.device)
        self.alignment = alignment.to(self.device) if alignment is not None else None
        self.module = TrainModule(self.sit, self.alignment, align.encoder_depth or 0)
        self.ema = copy.deepcopy(self.sit).requires_grad_(False).eval()
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        self.ema_params = list(self.ema.parameters())
        self.sit_params = list(self.sit.parameters())
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(
            self.params,
            lr=self.cfg.lr,
            betas=(self.cfg.betas[0], self.cfg.betas[1]),
            weight_decay=self.cfg.weight_decay,
            fused=fused or None,
            foreach=None if fused else True,
        )
        self.forward: nn.Module = self.module
        self.ddp: nn.Module | None = None

    def wrap(self) -> None:
        """DDP and torch.compile wrappers (after resume)."""
        if self.env.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = self.forward = DistributedDataParallel(
                self.module,
                device_ids=[self.device] if self.device.type == "cuda" else None,
                broadcast_buffers=False,
                gradient_as_bucket_view=True,
            )
        if self.cfg.compile:
            self.forward = torch.compile(self.forward)

    # -- checkpoints ---------------------------------------------------------------------------
    def state(self, step: int) -> dict[str, Any]:
        return {
            "step": step,
            "data_position": step * self.cfg.global_batch,
            "model": self.sit.state_dict(),
            "ema": self.ema.state_dict(),
            "align": self.alignment.state_dict() if self.alignment is not None else {},
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": _rng_state(),
            "run": self.run.to_dict(),
            "run_id": self.id,
        }

    def resume(self) -> None:
        """Load the newest valid checkpoint (if any) and cut the log back to its step."""
        path = ckpt.latest_checkpoint(self.out_dir)
        log_path = self.out_dir / LOG_FILE
        if path is None:
            if self.env.is_main and log_path.exists():
                write_text(log_path, "")
            return
        state = ckpt.load_checkpoint(path, map_location="cpu")  # RNG states must stay on CPU
        stored = ckpt.run_from_checkpoint(state, path)
        if not _same_run(stored, self.run):
            raise StageError(
                f"{self.out_dir} holds checkpoints of another run ({state.get('run_id')}), "
                f"not {self.id}",
                hint="use another output directory, or delete its checkpoints/",
            )
        self.sit.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        if self.alignment is not None:
            self.alignment.load_state_dict(state["align"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        self.start_step = int(state["step"])
        self.checkpoints = {s: str(p) for s, p in ckpt.list_checkpoints(self.out_dir)}
        if self.env.is_main and log_path.exists():
            rows = [r for r in read_jsonl(log_path) if r["step"] <= self.start_step]
            write_text(log_path, "".join(_jsonl(r) for r in rows))
            self.last_finite = rows[-1] if rows else None
        event(log, "train.resumed", run_id=self.id, step=self.start_step, checkpoint=str(path))

    def save(self, step: int) -> None:
        if self.env.is_main:
            path = ckpt.save_checkpoint(ckpt.checkpoint_path(self.out_dir, step), self.state(step))
            self.checkpoints[step] = str(path)
            for removed in ckpt.prune_checkpoints(
                self.out_dir, self.cfg.keep_last, self.cfg.keep_steps
            ):
                self.checkpoints.pop(int(removed.stem.split("_")[1]), None)
            event(log, "train.checkpoint", step=step, path=str(path))
        barrier(self.env)

    # -- one step ------------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _model_input(self, batch: dict[str, torch.Tensor], noise: StepNoise) -> torch.Tensor:
        from harness.train.latents import LatentScaling, encode_moments

        if self.run.model.space == "pixel":
            return pixels_to_model(batch["image"])  # (M, 3, S, S)
        moments = batch["moments"] if self.vae is None else encode_moments(self.vae, batch["image"])
        if not hasattr(self, "_scaling"):
            channels = self.run.model.in_channels or 4
            self._scaling = LatentScaling.from_config(self.cfg, channels).to(self.device)
        assert noise.posterior is not None, "latent space draws posterior noise"
        return sample_posterior(moments, noise.posterior, self._scaling.scale, self._scaling.bias)

    @torch.no_grad()
    def targets(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Normalised target tokens [(M, T, D_k)] of each encoder for uint8 ``images``."""
        if self.alignment is None:
            return []
        tokens = []
        for enc in self.encoders:
            raw = encoder_tokens(enc, images)  # (M, T_enc, D_k)
            tokens.append(resize_tokens(raw, tuple(enc.grid), self.grid))  # (M, T, D_k)
        return self.alignment.prepare_targets(tokens)

    def step_noise(self, index: int) -> StepNoise:
        """This rank's random numbers for step ``index`` (0-based)."""
        cfg, model_cfg = self.cfg, self.run.model
        side = model_cfg.input_size or 0
        return draw_step_noise(
            seed=self.run.seed,
            step=index,
            global_batch=cfg.global_batch,
            rank=self.env.rank,
            world_size=self.env.world_size,
            shape=(model_cfg.in_channels or 0, side, side),
            latent=model_cfg.space == "latent",
            class_dropout=model_cfg.class_dropout,
            path=self.path,
            time_sampling=cfg.time_sampling,
            time_mean=cfg.time_mean,
            time_std=cfg.time_std,
            device=self.device,
        )

    def fetch(self, batches: Iterator[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The next micro-batch, on the device (non-blocking copies from pinned memory)."""
        return {k: v.to(self.device, non_blocking=True) for k, v in next(batches).items()}

    def train_step(self, index: int, batches: Iterator[dict[str, torch.Tensor]]) -> torch.Tensor:
        """One optimizer update (step ``index + 1``); returns (5,) metrics on the device."""
        noise = self.step_noise(index)
        n_micro = self.local_batch // self.micro_batch
        totals = torch.zeros(4, device=self.device)
        for m in range(n_micro):
            batch = self.fetch(batches)
            part = noise.slice(m * self.micro_batch, (m + 1) * self.micro_batch)
            no_sync = self.ddp is not None and m < n_micro - 1
            with self.ddp.no_sync() if no_sync else contextlib.nullcontext():  # type: ignore[union-attr]
                targets = self.targets(batch["image"])
                totals += self.forward_backward(batch, part, targets, n_micro)
        grad_norm = self.optimizer_step()
        return torch.cat([totals, grad_norm.reshape(1)])

    def optimizer_step(self) -> torch.Tensor:
        """Unscale, clip, AdamW step, EMA update; returns the pre-clip grad norm (device)."""
        self.scaler.unscale_(self.optimizer)
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm, foreach=True)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        ema_update(self.ema_params, self.sit_params, self.cfg.ema_decay)
        return grad_norm.detach().float().to(self.device)

    def forward_backward(
        self,
        batch: dict[str, torch.Tensor],
        noise: StepNoise,
        targets: list[torch.Tensor],
        n_micro: int,
    ) -> torch.Tensor:
        """Forward + backward of one micro-batch; returns (4,) detached metrics / n_micro."""
        x0 = self._model_input(batch, noise)  # (M, C, S, S)
        labels = torch.where(noise.drop, self.sit.null_class, batch["label"])  # (M,)
        x_t, v_t = interpolate(self.path, x0, noise.noise, noise.t)
        with self._autocast():
            v_pred, projected = self.forward(x_t, noise.t, labels)
        flow = flow_loss(v_pred, v_t).mean()
        if self.alignment is not None:
            proj, cos = self.alignment.loss(projected, targets)
        else:
            proj = cos = torch.zeros((), device=self.device)
        loss = flow + (self.run.align.proj_coeff or 0.0) * proj
        self.scaler.scale(loss / n_micro).backward()
        return torch.stack([loss, flow, proj, cos]).detach() / n_micro

    # -- logging -------------------------------------------------------------------------------
    def flush(self, pending: list[tuple[int, torch.Tensor, float]], seconds: float) -> dict | None:
        """Sync the buffered metrics; write log rows; return a divergence report or None."""
        if not pending:
            return None
        values = all_mean(torch.stack([m for _, m, _ in pending]), self.env).cpu().tolist()
        rate = len(pending) * self.cfg.global_batch / max(seconds, 1e-9)
        self.windows.append((len(pending) * self.cfg.global_batch, seconds))
        lr = self.optimizer.param_groups[0]["lr"]
        for (step, _, elapsed), row_values in zip(pending, values, strict=True):
            row = {
                "step": step,
                **dict(zip(METRICS, row_values)),
                "lr": lr,
                "images_per_s": rate,
                "time": round(elapsed, 3),
            }
            if self.alignment is None:
                row["align_cos"] = None
            bad = _non_finite(row, fp16=self.cfg.precision == "fp16")
            if self.env.is_main and (step % self.cfg.log_every == 0 or bad):
                append_jsonl(self.out_dir / LOG_FILE, _finite_or_none(row))
            if bad:
                return self._diverged(step, row, bad)
            self.last_finite = row
        last = self.last_finite or {}
        if self.env.is_main:
            event(
                log,
                "train.progress",
                run_id=self.id,
                step=last.get("step"),
                loss=last.get("loss"),
                proj_loss=last.get("proj_loss"),
                grad_norm=last.get("grad_norm"),
                images_per_s=round(rate, 1),
            )
        return None

    def _diverged(self, step: int, row: dict[str, Any], bad: list[str]) -> dict[str, Any]:
        resume_from = ckpt.latest_checkpoint(self.out_dir)
        report = {
            "step": step,
            "non_finite": {k: str(row[k]) for k in bad},
            "last_finite": self.last_finite,
            "resume_from": str(resume_from) if resume_from else None,
            "resume_step": int(resume_from.stem.split("_")[1]) if resume_from else None,
        }
        event(log, "train.diverged", level=40, run_id=self.id, **report)
        return report

    def images_per_s(self) -> float | None:
        windows = self.windows[1:] or self.windows  # the first window includes warm-up
        images, seconds = sum(w[0] for w in windows), sum(w[1] for w in windows)
        return images / seconds if seconds > 0 else None


def _jsonl(row: dict[str, Any]) -> str:
    import json

    return json.dumps(row, sort_keys=True) + "\n"


def _non_finite(row: dict[str, Any], *, fp16: bool) -> list[str]:
    """Keys whose value is non-finite (with fp16 the scaler skips inf-grad steps itself)."""
    keys = ("loss", "flow_loss", "proj_loss") + (() if fp16 else ("grad_norm",))
    return [k for k in keys if row[k] is not None and not math.isfinite(row[k])]


def _finite_or_none(row: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()
    }


def _same_run(a: RunConfig, b: RunConfig) -> bool:
    """Same run up to operational fields and the step budget (a longer run may continue)."""
    ia, ib = identity(a), identity(b)
    ia["train"].pop("steps")
    ib["train"].pop("steps")
    return ia == ib


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
        diverged = trainer.flush(pending, now - window_start)
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
    run, last = trainer.run, trainer.last_finite or {}
    payload = {
        "run_id": trainer.id,
        "encoder": "+".join(run.targets) if run.targets else None,
        "method": run.method,
        "model": run.model.name,
        "seed": run.seed,
        "steps_target": run.train.steps,
        "steps_done": steps_done,
        "final": {k: last.get(k) for k in ("loss", "flow_loss", "proj_loss", "align_cos")},
        "images_per_s": trainer.images_per_s(),
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
