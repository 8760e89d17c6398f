"""One training run's state and its step: SiT + projectors, EMA, AdamW, targets, data, and
checkpoint save/resume. :mod:`harness.train.loop` drives it; :mod:`harness.train.bench` times
its phases.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.config.run import RunConfig, identity, run_id
from harness.errors import StageError
from harness.logs import event, get_logger
from harness.train import checkpoint as ckpt
from harness.train.align import (
    Alignment,
    TargetCache,
    check_target,
    encoder_tokens,
    resize_tokens,
)
from harness.train.data import (
    StepNoise,
    derive_seed,
    draw_step_noise,
    pixels_to_model,
    sample_posterior,
)
from harness.train.distributed import DistEnv, barrier
from harness.train.flow import PATHS, flow_loss, interpolate
from harness.train.steplog import StepLog

log = get_logger(__name__)


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


def ema_decay_at(updates_done: int, decay: float, warmup: bool) -> float:
    """The EMA decay of the update after ``updates_done`` updates: ``decay``, or with warmup
    ``min(decay, (1 + n) / (10 + n))`` (0.1 for the first update, 0.99 after ~900)."""
    return min(decay, (1 + updates_done) / (10 + updates_done)) if warmup else decay


def _rng_state() -> dict[str, Any]:
    """Every RNG's state, as tensors and plain values (loads with ``weights_only=True``)."""
    return ckpt.encode_rng(
        {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": np.random.get_state(),
            "python": random.getstate(),
        }
    )


def _set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`_rng_state` saved (or a format-1 checkpoint's state tuples)."""
    state = ckpt.decode_rng(state)
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
        self.updates_done = 0
        self.checkpoints: dict[int, str] = {}
        self.log = StepLog(out_dir, env, self.cfg, run_id=self.id, aligned=bool(self.encoders))
        self._target_cache: dict[int, TargetCache] = {}

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
        from harness.paths import results_root
        from harness.train.latents import LatentDataset, latent_cache, load_vae

        if dataset is None:
            from harness.data import build_dataset

            dataset = build_dataset(self.run.data, "train")
        self._check_dataset(dataset)
        if self.run.model.space == "pixel" or isinstance(dataset, LatentDataset):
            return dataset, None
        cache, _ = latent_cache(
            dataset, "train", self.cfg.vae, self.run.random_weights, results_root()
        )
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

        align = self.run.align.check_resolved()  # method defaults, never a fallback
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.run.seed, "init") % 2**31)
            sit = SiT.from_config(self.run.model)
            alignment = None
            if self.encoders:
                dims = [int(enc.embed_dim) for enc in self.encoders]
                alignment = Alignment(align, sit.hidden, dims, self.grid)
        self.sit = sit.to(self.device)
        self.alignment = alignment.to(self.device) if alignment is not None else None
        self.module = TrainModule(self.sit, self.alignment, align.encoder_depth)
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
        """What a checkpoint holds: tensors, numbers, strings, lists and dicts only."""
        return {
            "step": step,
            "data_position": step * self.cfg.global_batch,
            "model": self.sit.state_dict(),
            "ema": self.ema.state_dict(),
            "align": self.alignment.state_dict() if self.alignment is not None else {},
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": _rng_state(),
            "run": ckpt.encode_run(self.run.to_dict()),
            "run_id": self.id,
        }

    def resume(self) -> None:
        """Load the newest valid checkpoint (if any) and cut the log back to its step."""
        path = ckpt.latest_checkpoint(self.out_dir)
        if path is None:
            self.log.truncate(0)
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
        self.log.truncate(self.start_step)
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

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

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
    def targets(
        self, images: torch.Tensor, index: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Normalised target tokens [(M, T, D_k)] of each encoder for uint8 ``images`` (M,3,H,W)
        whose dataset indices are ``index`` (M,) (used by ``train.cache_targets``)."""
        if self.alignment is None:
            return []
        tokens = []
        for k, enc in enumerate(self.encoders):

            def compute(imgs: torch.Tensor, enc: Any = enc) -> torch.Tensor:
                raw = encoder_tokens(enc, imgs)  # (m, T_enc, D_k)
                return resize_tokens(raw, tuple(enc.grid), self.grid)  # (m, T, D_k)

            if self.cfg.cache_targets and index is not None:
                if k not in self._target_cache:
                    self._target_cache[k] = TargetCache(len(self.dataset))
                tokens.append(self._target_cache[k].lookup(compute, images, index))
            else:
                tokens.append(compute(images))
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
        self.updates_done = index  # updates before this one (the EMA warmup counts them)
        n_micro = self.local_batch // self.micro_batch
        totals = torch.zeros(4, device=self.device)
        for m in range(n_micro):
            batch = self.fetch(batches)
            part = noise.slice(m * self.micro_batch, (m + 1) * self.micro_batch)
            no_sync = self.ddp is not None and m < n_micro - 1
            with self.ddp.no_sync() if no_sync else contextlib.nullcontext():  # type: ignore[union-attr]
                targets = self.targets(batch["image"], batch.get("index"))
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
        decay = ema_decay_at(self.updates_done, self.cfg.ema_decay, self.cfg.ema_warmup)
        ema_update(self.ema_params, self.sit_params, decay)
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
        loss = flow + self.run.align.proj_coeff * proj
        self.scaler.scale(loss / n_micro).backward()
        return torch.stack([loss, flow, proj, cos]).detach() / n_micro


def _same_run(a: RunConfig, b: RunConfig) -> bool:
    """Same run up to operational fields and the step budget (a longer run may continue)."""
    ia, ib = identity(a), identity(b)
    ia["train"].pop("steps")
    ib["train"].pop("steps")
    return ia == ib
