"""Samplers for a trained velocity model: Euler ODE and Euler–Maruyama SDE, with classifier-free
guidance over a guidance interval, per-sample seeding, and VAE decoding.

Time runs from t = 1 (noise) to t = 0 (data). With the network velocity v(x, t) and the score
s(x, t) it implies (``flow.velocity_to_score``):

* **ODE** (probability flow): ``dx = v dt`` on ``linspace(1, 0, N + 1)``, N Euler steps.
* **SDE** (SiT ``sample_sde`` / REPA ``euler_maruyama_sampler``): the reverse SDE
  ``dx = [v - w_t s] dt + sqrt(2 w_t) dW̄`` with diffusion ``w_t = σ_t`` (SiT's "sigma" form;
  REPA's code uses 2t = 2σ_t for the linear path). Euler–Maruyama on ``linspace(1, 0.04, N)``,
  i.e. N - 1 noisy steps that end at t = ``last_step_size`` = 0.04, then one deterministic
  (mean) step from 0.04 to 0: N network evaluations in total.

CFG: inside ``[guidance_low, guidance_high]`` the velocity is ``v_u + w (v_c - v_u)`` (v_u with
the null class); the SDE drift is affine in v, so this equals guiding the drift as REPA does.
A guided step costs two network evaluations per sample (:func:`nfe` counts them).

Samples become uint8 pixels by ``sampler.to_uint8`` (default: truncation, as the official
REPA / iREPA ``generate.py``; see ``harness.train.data.model_to_pixels``).

Seeding: sample i draws its initial noise and every SDE increment from its own generator seeded
with ``seeds[i]``, so an image depends only on (model, label, seed, sampler) — not on the batch
size, the order, or the number of GPUs. The state is integrated in float64.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Sequence

import torch

from harness.config.run import RunConfig
from harness.config.sampler import SamplerConfig
from harness.errors import HarnessError
from harness.progress import progress
from harness.train.data import model_to_pixels
from harness.train.flow import PATHS, Interpolant, velocity_to_score

VelocityModel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _per_sample_normal(
    generators: Sequence[torch.Generator], shape: tuple[int, ...], device: torch.device
) -> torch.Tensor:
    """(B, *shape) float64 standard normals, row i from ``generators[i]``."""
    rows = [torch.randn(shape, generator=g, device=device) for g in generators]
    return torch.stack(rows).double()


def time_grid(sampler: SamplerConfig) -> list[float]:
    """The integration times ``t_0 = 1 > ... > t_N = 0`` (N = ``num_steps``); the network is
    evaluated once per step, at its start ``t_i`` (i < N).

    ODE: ``linspace(1, 0, N + 1)``; SDE: ``linspace(1, last_step_size, N)`` then 0.
    """
    n = sampler.num_steps
    if sampler.mode == "ode":
        return torch.linspace(1.0, 0.0, n + 1, dtype=torch.float64).tolist()
    return [*torch.linspace(1.0, sampler.last_step_size, n, dtype=torch.float64).tolist(), 0.0]


def is_guided(sampler: SamplerConfig, t: float) -> bool:
    """True when the step at time ``t`` applies CFG (conditional + null-class evaluations)."""
    return sampler.cfg_scale > 1.0 and sampler.guidance_low <= t <= sampler.guidance_high


def nfe(sampler: SamplerConfig) -> int:
    """Network evaluations per sample: one per step, two per guided step (the schedule and the
    guidance test :func:`integrate` uses)."""
    return sum(2 if is_guided(sampler, t) else 1 for t in time_grid(sampler)[:-1])


def _guided_velocity(
    model: VelocityModel,
    x: torch.Tensor,
    t: float,
    labels: torch.Tensor,
    *,
    sampler: SamplerConfig,
    null_class: int,
    channels: int,
    model_dtype: torch.dtype,
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> torch.Tensor:
    """v(x, t) in float64 (B, C, ...), with CFG when ``t`` is inside the guidance interval."""
    guided = is_guided(sampler, t)
    inputs, y = (
        (torch.cat([x, x]), torch.cat([labels, torch.full_like(labels, null_class)]))
        if (guided)
        else (x, labels)
    )
    times = torch.full((inputs.shape[0],), t, device=x.device, dtype=model_dtype)
    with autocast():
        out = model(inputs.to(model_dtype), times, y)
    v = out[:, :channels].double()  # learn_sigma models: the first C channels are v
    if guided:
        v_cond, v_uncond = v.chunk(2)
        v = v_uncond + sampler.cfg_scale * (v_cond - v_uncond)
    return v


@torch.no_grad()
def integrate(
    model: VelocityModel,
    x: torch.Tensor,
    labels: torch.Tensor,
    generators: Sequence[torch.Generator],
    sampler: SamplerConfig,
    *,
    path: Interpolant,
    null_class: int,
    model_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Integrate from t = 1 to 0 starting at ``x`` (B, C, ...) float64.

    Args:
        model: ``model(x, t, y) -> (B, C', ...)`` velocity (C' >= C).
        x: initial noise (float64).
        labels: (B,) int64 class labels.
        generators: one per sample, for the SDE increments (unused by the ODE).
        sampler: mode, steps, CFG, last step size.
        path: the interpolant the model was trained with.
        null_class: label index of the unconditional class.
        model_dtype: dtype of the network inputs (fp32, or bf16 through autocast).

    Returns:
        (B, C, ...) float64 samples at t = 0.
    """
    device = x.device
    bf16 = sampler.precision == "bf16"

    def autocast() -> contextlib.AbstractContextManager:
        if not bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    def velocity(x_cur: torch.Tensor, t: float) -> torch.Tensor:
        return _guided_velocity(
            model,
            x_cur,
            t,
            labels,
            sampler=sampler,
            null_class=null_class,
            channels=x.shape[1],
            model_dtype=model_dtype,
            autocast=autocast,
        )

    n = sampler.num_steps
    times = time_grid(sampler)
    if sampler.mode == "ode":
        for t_cur, t_next in itertools.pairwise(times):
            x = x + (t_next - t_cur) * velocity(x, t_cur)
        return x
    shape = tuple(x.shape[1:])
    for i, (t_cur, t_next) in enumerate(itertools.pairwise(times)):
        t_vec = torch.full((x.shape[0],), t_cur, dtype=torch.float64, device=device)
        v = velocity(x, t_cur)
        w = path.sigma(torch.tensor(t_cur, dtype=torch.float64)).item()  # diffusion w_t = σ_t
        drift = v - w * velocity_to_score(path, v, x, t_vec)
        dt = t_next - t_cur  # negative
        x = x + drift * dt
        if i < n - 1:  # Euler–Maruyama noise; the last step (to t = 0) is the mean only
            dw = _per_sample_normal(generators, shape, device) * abs(dt) ** 0.5
            x = x + (2.0 * w) ** 0.5 * dw
    return x


def sample_latents(
    model: VelocityModel,
    shape: tuple[int, ...],
    labels: torch.Tensor,
    seeds: torch.Tensor,
    sampler: SamplerConfig,
    *,
    path: str | Interpolant = "linear",
    null_class: int,
    device: torch.device | str,
    desc: str = "sample",
) -> torch.Tensor:
    """Generate N model-space samples (N, *shape) float32, per-sample seeded, in batches.

    Args:
        model: the velocity network (e.g. the EMA SiT).
        shape: one sample's shape (C, S, S).
        labels: (N,) int64 class labels.
        seeds: (N,) int64, one seed per sample (sample i uses only ``seeds[i]``).
        sampler: the sampler settings.
        path: interpolant name or object.
        null_class: the unconditional label (needed for CFG).
        device: where to run.
    """
    device = torch.device(device)
    labels, seeds = torch.as_tensor(labels).long(), torch.as_tensor(seeds).long()
    if labels.ndim != 1 or labels.shape != seeds.shape:
        raise HarnessError(
            f"labels {tuple(labels.shape)} and seeds {tuple(seeds.shape)} must be (N,)"
        )
    interp = PATHS.get(path) if isinstance(path, str) else path
    out = []
    batches = range(0, len(labels), sampler.batch_size)
    for lo in progress(batches, desc=desc, unit="batch"):
        hi = min(lo + sampler.batch_size, len(labels))
        generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds[lo:hi]]
        x = _per_sample_normal(generators, shape, device)  # (b, *shape) initial noise
        x = integrate(
            model,
            x,
            labels[lo:hi].to(device),
            generators,
            sampler,
            path=interp,
            null_class=null_class,
        )
        out.append(x.float().cpu())
    return torch.cat(out) if out else torch.empty((0, *shape))


def sample_images(
    model: torch.nn.Module,
    run: RunConfig,
    labels: torch.Tensor,
    seeds: torch.Tensor,
    sampler: SamplerConfig,
    device: torch.device | str,
    vae: torch.nn.Module | None = None,
) -> torch.Tensor:
    """Generate uint8 images (N, 3, H, W) from a trained SiT.

    Args:
        model: the (EMA) SiT, on ``device``.
        run: its run config (space, shape, path, VAE, latent scaling).
        labels: (N,) int64 class labels.
        seeds: (N,) int64 per-sample seeds.
        sampler: sampler settings (record them with the samples).
        device: where to run.
        vae: the decoder for latent runs (default: ``run.train.vae``, random if
            ``run.random_weights``).
    """
    from harness.train.latents import LatentScaling, decode_latents, load_vae

    cfg = run.model
    if sampler.cfg_scale > 1.0 and cfg.class_dropout <= 0:
        raise HarnessError(
            f"cfg_scale {sampler.cfg_scale} needs a model trained with label dropout "
            "(model.class_dropout > 0); use cfg_scale 1.0"
        )
    channels, side = cfg.in_channels or 0, cfg.input_size or 0
    z = sample_latents(
        model,
        (channels, side, side),
        labels,
        seeds,
        sampler,
        path=run.train.path,
        null_class=cfg.num_classes or 0,
        device=device,
    )  # (N, C, S, S)
    if cfg.space == "pixel":
        return model_to_pixels(z, sampler.to_uint8)
    if vae is None:
        vae = load_vae(run.train.vae, device, random_weights=run.random_weights)
    scaling = LatentScaling.from_config(run.train, channels)
    images = [
        decode_latents(
            vae, z[lo : lo + sampler.batch_size].to(device), scaling, sampler.to_uint8
        ).cpu()
        for lo in range(0, len(z), sampler.batch_size)
    ]
    return (
        torch.cat(images) if images else torch.empty((0, 3, 8 * side, 8 * side), dtype=torch.uint8)
    )
