"""Training throughput benchmark: images/s, a step-time breakdown, peak memory and MFU.

The breakdown times each phase of a real training step (``harness.train.trainer.Trainer``) with a
device synchronisation around it: data (next batch, host -> device), encoder forward (targets),
SiT forward + backward (incl. projectors and losses), optimizer (unscale, clip, AdamW, EMA).
Images/s is measured separately over back-to-back steps with no synchronisation in between —
the rate training actually runs at.

MFU = model FLOPs per image x images/s / peak FLOP/s of the device. Model FLOPs per image are
3 x the SiT forward (forward + backward = 2 x forward) + 3 x projector forward + encoder
forward; the SiT count is analytic (:func:`sit_forward_flops`), the encoder's is counted with
``torch.utils.flop_counter`` on one real forward (math attention, so attention is counted).

Where the time goes: ``top_ops`` is the profiler's operator breakdown of the same steps (self
time per step and share, :func:`op_breakdown`), and ``matmul_tflops`` the device's measured dense
fp32/bf16 matmul rate (:func:`matmul_rate`), the bound a step made only of GEMMs would reach
(on a CPU, where no peak table applies, ``achieved / matmul`` says how far the step is from it).
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.config.data import DataConfig
from harness.config.model import ModelConfig, SiTArch
from harness.config.run import RunConfig
from harness.config.train import TrainConfig

# Dense (no sparsity) tensor-core peaks in TFLOP/s; fp32 means TF32 tensor cores.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.4, "fp16": 989.4, "fp32": 494.7},
    "H100 NVL": {"bf16": 835.0, "fp16": 835.0, "fp32": 417.5},
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "fp32": 378.0},
    "H100": {"bf16": 989.4, "fp16": 989.4, "fp32": 494.7},  # SXM
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 156.0},
}


def device_peak_flops(device_name: str, precision: str) -> float | None:
    """Peak FLOP/s of a GPU (by name, most specific entry first), None if unknown (CPU)."""
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key.lower() in device_name.lower():
            return PEAK_TFLOPS[key][precision] * 1e12
    return None


def sit_forward_flops(arch: SiTArch, input_size: int, in_channels: int, out_channels: int) -> float:
    """Forward FLOPs of one image through SiT (2 x multiply-adds of every matmul/conv)."""
    d, t = arch.hidden, (input_size // arch.patch) ** 2
    patch_in = in_channels * arch.patch**2
    embed = t * patch_in * d + 256 * d + d * d  # patch conv, timestep MLP
    block = (
        t * d * 3 * d  # qkv
        + 2 * t * t * d  # q k^T and attn v
        + t * d * d  # output projection
        + 2 * t * d * int(arch.mlp_ratio * d)  # MLP
        + d * 6 * d  # adaLN modulation (per image)
    )
    final = t * d * arch.patch**2 * out_channels + d * 2 * d
    return 2.0 * (embed + arch.depth * block + final)


def counted_flops(fn: Callable[[], Any]) -> float:
    """FLOPs of ``fn()`` counted by torch.utils.flop_counter (attention via the math kernel)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return float(counter.get_total_flops())


def matmul_rate(device: torch.device, dtype: torch.dtype, side: int = 1024, reps: int = 8) -> float:
    """Measured FLOP/s of a dense ``side``^3 matmul on ``device`` (2 side^3 FLOPs each)."""
    a = torch.randn(side, side, device=device, dtype=dtype)
    b = torch.randn(side, side, device=device, dtype=dtype)
    a @ b  # warm up kernels and caches
    _sync(device)
    began = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return reps * 2.0 * side**3 / (time.perf_counter() - began)


def op_breakdown(step: Callable[[], Any], steps: int, top: int = 8) -> list[dict[str, Any]]:
    """The ``top`` operators by self time over ``steps`` calls of ``step`` (torch.profiler):
    ``{"op", "ms_per_step", "share", "calls_per_step"}``; shares are of the total self time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages()
    on_device = any(getattr(e, "self_device_time_total", 0.0) > 0 for e in events)

    def self_us(event: Any) -> float:  # kernel time when a GPU ran the step, else host time
        return float(event.self_device_time_total if on_device else event.self_cpu_time_total)

    total = sum(self_us(e) for e in events) or 1.0
    ranked = sorted(events, key=self_us, reverse=True)[:top]
    return [
        {
            "op": e.key,
            "ms_per_step": self_us(e) / 1e3 / steps,
            "share": self_us(e) / total,
            "calls_per_step": e.count / steps,
        }
        for e in ranked
    ]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)


CUDA_DEFAULTS = ("bf16", 4)  # (precision, data-loader workers) when benchmarking on a GPU


def device_defaults(device: str | None) -> tuple[str, int]:
    """The benchmark's default (precision, data-loader workers) for ``device`` (None: CUDA when
    available): bf16 and 4 workers on CUDA; fp32 (a CPU has no fast bf16 matmul) and at most
    one worker per CPU core on the CPU."""
    cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if cuda:
        return CUDA_DEFAULTS
    return "fp32", min(CUDA_DEFAULTS[1], os.cpu_count() or 1)


def bench_setup(
    *,
    model: str,
    method: str,
    encoder: str | None,
    catalogue: str | None,
    batch: int,
    precision: str,
    compile: bool,
    resolution: int,
    space: str,
    num_workers: int,
) -> tuple[RunConfig, Any, list[Any] | None]:
    """The run a benchmark trains (random encoder weights; nothing is saved), the encoder
    catalogue and prebuilt targets. ``encoder``: a catalogue name, ``"toy"`` (a built-in
    768-wide target, :mod:`harness.train.toys`) or None (method none).

    Raises:
        ConfigError: invalid settings, or a catalogue encoder without ``catalogue``.
        RegistryError: an encoder name that is not in the catalogue.
    """
    from harness.config import load_config
    from harness.errors import ConfigError

    try:
        run = RunConfig(
            data=DataConfig(resolution=resolution, num_classes=10, train_images=max(2 * batch, 16)),
            encoder=encoder,
            method=method if encoder else "none",
            model=ModelConfig(name=model, space=space, num_classes=1000),
            train=TrainConfig(
                steps=10**9,
                global_batch=batch,
                precision=precision,
                compile=compile,
                num_workers=num_workers,
            ),
            random_weights=True,
        )
    except ValueError as exc:  # pydantic.ValidationError is a ValueError
        raise ConfigError(f"benchmark settings: {exc}") from None
    if encoder == "toy":
        from harness.train.toys import PatchEncoder

        return run, None, [PatchEncoder(run.model.grid, dim=768)]
    if encoder and not catalogue:
        raise ConfigError(f"encoder {encoder!r}: pass the catalogue (encoders.yaml) or use 'toy'")
    if not encoder:
        return run, None, None
    entries = load_config(catalogue, kind="catalogue")
    entries.get(encoder)  # an unknown name fails here (did you mean ...), before any building
    return run, entries, None


def bench_train(
    run: RunConfig,
    *,
    steps: int = 10,
    warmup: int = 3,
    device: str | None = None,
    catalogue: Any = None,
    target_encoders: list[Any] | None = None,
) -> dict[str, Any]:
    """Time ``steps`` training steps of ``run`` (after ``warmup``) on one device.

    Returns:
        A dict of numbers: images_per_s, the per-phase milliseconds, peak memory, FLOPs per
        image, achieved TFLOP/s and MFU (None when the device peak is unknown).
    """
    from harness.data import build_dataset
    from harness.train.align import encoder_tokens
    from harness.train.distributed import init_distributed
    from harness.train.latents import LatentDataset, encode_moments, load_vae
    from harness.train.trainer import Trainer, backend_settings

    env = init_distributed(device)
    dataset = build_dataset(run.data, "train")
    if run.model.space == "latent":  # emulate the latent cache: encode the bench images once
        vae = load_vae(run.train.vae, env.device, random_weights=run.random_weights)
        images = dataset.get_batch(np.arange(len(dataset)))["image"]
        moments = torch.cat(
            [
                encode_moments(vae, images[i : i + 16].to(env.device)).cpu()
                for i in range(0, len(images), 16)
            ]
        )
        dataset = LatentDataset(dataset, moments.half().numpy())
        del vae
    with tempfile.TemporaryDirectory() as tmp, backend_settings(run):
        trainer = Trainer(
            run,
            Path(tmp),
            env,
            catalogue=catalogue,
            target_encoders=target_encoders,
            dataset=dataset,
        )
        trainer.wrap()
        batches = _endless_batches(trainer)
        phases = _timed_steps(trainer, batches, steps, warmup)
        if env.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(env.device)
        _sync(env.device)
        began = time.perf_counter()
        for index in range(steps):
            trainer.train_step(warmup + steps + index, batches)
        _sync(env.device)
        images_per_s = steps * run.train.global_batch / (time.perf_counter() - began)
        peak_memory = _peak_memory_gib(env.device)
        step_index = iter(range(warmup + 2 * steps, 10**9))
        top_ops = op_breakdown(lambda: trainer.train_step(next(step_index), batches), steps)
        probe = next(batches)["image"][:1].to(env.device)
        encoder_flops = sum(
            counted_flops(lambda e=e: encoder_tokens(e, probe)) for e in trainer.encoders
        )
    cfg = run.model
    sit_flops = sit_forward_flops(
        cfg.arch, cfg.input_size or 0, cfg.in_channels or 0, cfg.out_channels
    )
    proj_flops = 0.0
    if trainer.alignment is not None:
        from harness.train.align import projector_flops

        proj_flops = sum(
            projector_flops(run.align, cfg.arch.hidden, int(e.embed_dim), cfg.grid[0] * cfg.grid[1])
            for e in trainer.encoders
        )
    flops_per_image = 3 * sit_flops + 3 * proj_flops + encoder_flops
    achieved = flops_per_image * images_per_s
    name = torch.cuda.get_device_name(env.device) if env.device.type == "cuda" else "cpu"
    peak = device_peak_flops(name, run.train.precision) if env.device.type == "cuda" else None
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(run.train.precision, torch.float32)
    matmul = matmul_rate(env.device, dtype)
    return {
        "device": name,
        "model": cfg.name,
        "method": run.method,
        "encoder": "+".join(run.targets) or None,
        "batch": run.train.global_batch,
        "precision": run.train.precision,
        "compile": run.train.compile,
        "resolution": run.data.resolution,
        "space": cfg.space,
        "steps": steps,
        "images_per_s": images_per_s,
        "step_ms": {k: 1e3 * float(np.median(v)) for k, v in phases.items()},
        "peak_memory_gib": peak_memory,
        "gflops_per_image": {
            "sit_fwd": sit_flops / 1e9,
            "projector_fwd": proj_flops / 1e9,
            "encoder_fwd": encoder_flops / 1e9,
            "train_total": flops_per_image / 1e9,
        },
        "achieved_tflops": achieved / 1e12,
        "peak_tflops": None if peak is None else peak / 1e12,
        "mfu": None if peak is None else achieved / peak,
        "matmul_tflops": matmul / 1e12,
        "achieved_of_matmul": achieved / matmul,
        "top_ops": top_ops,
    }


def _endless_batches(trainer: Any):
    from harness.train.data import StepBatchSampler

    sampler = StepBatchSampler(
        len(trainer.dataset),
        global_batch=trainer.cfg.global_batch,
        rank=0,
        world_size=1,
        micro_batch=trainer.micro_batch,
        seed=0,
        start_step=0,
        steps=10**9,
    )
    loader = torch.utils.data.DataLoader(
        trainer.dataset,
        batch_sampler=sampler,
        num_workers=trainer.cfg.num_workers,
        pin_memory=trainer.device.type == "cuda",
        prefetch_factor=4 if trainer.cfg.num_workers else None,
    )
    return iter(loader)


def _timed_steps(trainer: Any, batches: Any, steps: int, warmup: int) -> dict[str, list[float]]:
    """Per-phase seconds of ``steps`` synchronised steps (after ``warmup`` untimed ones)."""
    phases: dict[str, list[float]] = {
        "data": [],
        "encoder_fwd": [],
        "sit_fwd_bwd": [],
        "optimizer": [],
    }
    device = trainer.device
    n_micro = trainer.local_batch // trainer.micro_batch
    for index in range(warmup + steps):
        noise = trainer.step_noise(index)
        marks = dict.fromkeys(phases, 0.0)
        for m in range(n_micro):
            _sync(device)
            t0 = time.perf_counter()
            batch = trainer.fetch(batches)
            _sync(device)
            t1 = time.perf_counter()
            targets = trainer.targets(batch["image"])
            _sync(device)
            t2 = time.perf_counter()
            part = noise.slice(m * trainer.micro_batch, (m + 1) * trainer.micro_batch)
            trainer.forward_backward(batch, part, targets, n_micro)
            _sync(device)
            t3 = time.perf_counter()
            marks["data"] += t1 - t0
            marks["encoder_fwd"] += t2 - t1
            marks["sit_fwd_bwd"] += t3 - t2
        t3 = time.perf_counter()
        trainer.optimizer_step()
        _sync(device)
        marks["optimizer"] = time.perf_counter() - t3
        if index >= warmup:
            for key, value in marks.items():
                phases[key].append(value)
    return phases


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of one benchmark result."""
    ms = result["step_ms"]
    flops = result["gflops_per_image"]
    rows = [
        ("device", result["device"]),
        (
            "model / method / encoder",
            f"{result['model']} / {result['method']} / {result['encoder']}",
        ),
        (
            "batch / precision / compile",
            f"{result['batch']} / {result['precision']} / {result['compile']}",
        ),
        ("input", f"{result['resolution']} px, {result['space']} space"),
        ("images/s (unsynchronised)", f"{result['images_per_s']:.1f}"),
        ("step: data ms", f"{ms['data']:.2f}"),
        ("step: encoder fwd ms", f"{ms['encoder_fwd']:.2f}"),
        ("step: SiT fwd+bwd ms", f"{ms['sit_fwd_bwd']:.2f}"),
        ("step: optimizer ms", f"{ms['optimizer']:.2f}"),
        ("peak memory GiB", f"{result['peak_memory_gib']:.2f}"),
        (
            "GFLOP/img SiT fwd | proj fwd | enc fwd",
            f"{flops['sit_fwd']:.3f} | {flops['projector_fwd']:.3f} | {flops['encoder_fwd']:.3f}",
        ),
        ("GFLOP/img train total", f"{flops['train_total']:.3f}"),
        ("achieved TFLOP/s", f"{result['achieved_tflops']:.4f}"),
        (
            "MFU",
            "n/a (no peak for this device)"
            if result["mfu"] is None
            else f"{100 * result['mfu']:.1f}%",
        ),
        (
            "measured matmul TFLOP/s (achieved share)",
            f"{result['matmul_tflops']:.4f} ({100 * result['achieved_of_matmul']:.0f}%)",
        ),
    ]
    rows += [
        (f"op: {op['op'][:60]}", f"{op['ms_per_step']:.2f} ms/step  {100 * op['share']:.0f}%")
        for op in result["top_ops"]
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
