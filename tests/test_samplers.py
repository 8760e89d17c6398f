"""Samplers against closed forms: exact velocity of a Gaussian target, CFG + guidance interval,
the SDE time grid, per-sample seeding, and image decoding."""

from __future__ import annotations

import pytest
import torch

from harness.config.model import ModelConfig
from harness.config.run import RunConfig
from harness.config.sampler import SamplerConfig
from harness.config.train import TrainConfig
from harness.errors import HarnessError
from harness.train.sampling import sample_images, sample_latents

DIM = 4


class GaussianVelocity(torch.nn.Module):
    """Exact velocity of the linear path for x0 ~ N(mu, Sigma), shape (DIM, 1, 1):
    v(x, t) = E[eps | x_t] - E[x0 | x_t] with C_t = (1-t)^2 Sigma + t^2 I."""

    def __init__(self, mu: torch.Tensor, sigma: torch.Tensor) -> None:
        super().__init__()
        self.mu, self.sigma = mu.double(), sigma.double()
        self.calls: list[float] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls.append(float(t[0]))
        ti = t.double()[0]  # the samplers evaluate one time per call
        a = 1 - ti
        cov = a**2 * self.sigma + ti**2 * torch.eye(DIM, dtype=torch.float64)  # (DIM, DIM)
        r = torch.linalg.solve(cov, (x.double().flatten(1) - a * self.mu).T).T  # (B, DIM)
        e_x0 = self.mu + a * r @ self.sigma  # Sigma is symmetric
        e_eps = ti * r
        return (e_eps - e_x0).reshape(x.shape).to(x.dtype)


def _target() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(DIM, DIM, generator=gen) * 0.5
    return torch.tensor([1.0, -2.0, 0.5, 3.0]), a @ a.T + 0.3 * torch.eye(DIM)


@pytest.mark.parametrize("mode", ["ode", "sde"])
def test_samples_match_gaussian_mean_and_covariance(mode: str) -> None:
    mu, sigma = _target()
    model = GaussianVelocity(mu, sigma)
    n = 3000
    sampler = SamplerConfig(mode=mode, num_steps=100, batch_size=n)
    x = (
        sample_latents(
            model,
            (DIM, 1, 1),
            torch.zeros(n, dtype=torch.long),
            torch.arange(n),
            sampler,
            null_class=1,
            device="cpu",
        )
        .double()
        .flatten(1)
    )  # (n, DIM)
    var = torch.diagonal(sigma).double()
    mean_err = (x.mean(0) - mu.double()).abs()
    assert torch.all(mean_err < 5 * (var / n).sqrt()), (mean_err, (var / n).sqrt())
    cov = torch.cov(x.T)
    cov_se = ((var[:, None] * var[None, :] + sigma.double() ** 2) / n).sqrt()
    assert torch.all((cov - sigma.double()).abs() < 5 * cov_se + 0.02), (cov, sigma)
    assert len(model.calls) == 100  # NFE = num_steps (no CFG)


def test_sde_time_grid_ends_with_a_step_from_0_04() -> None:
    model = GaussianVelocity(*_target())
    sampler = SamplerConfig(mode="sde", num_steps=250, batch_size=2)
    sample_latents(
        model,
        (DIM, 1, 1),
        torch.zeros(2, dtype=torch.long),
        torch.arange(2),
        sampler,
        null_class=1,
        device="cpu",
    )
    expected = torch.linspace(1.0, 0.04, 250, dtype=torch.float64)
    torch.testing.assert_close(
        torch.tensor(model.calls, dtype=torch.float64), expected, atol=1e-6, rtol=0
    )


class ConstantVelocity(torch.nn.Module):
    """v(x, t, y) = c[y]: the ODE moves each sample by exactly -integral of v."""

    def __init__(self) -> None:
        super().__init__()
        self.c = torch.tensor([1.0, 5.0])  # class 0 and the null class (1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.c[y].reshape(-1, 1, 1, 1).expand_as(x).to(x.dtype)


@pytest.mark.parametrize(
    ("low", "high", "expected_shift"),
    [
        (0.0, 1.0, 1.0 * (5 + 3 * (1 - 5))),  # guided everywhere: c_u + w (c_c - c_u) = -7
        (0.0, 0.45, 0.6 * 1.0 + 0.4 * -7.0),  # guided at t = 0.4, 0.3, 0.2, 0.1: 4 of 10 steps
        (0.95, 1.0, 0.9 * 1.0 + 0.1 * -7.0),  # only the first step (t = 1)
    ],
)
def test_cfg_with_guidance_interval(low: float, high: float, expected_shift: float) -> None:
    sampler = SamplerConfig(
        mode="ode", num_steps=10, cfg_scale=3.0, guidance_low=low, guidance_high=high
    )
    seeds, labels = torch.arange(3), torch.zeros(3, dtype=torch.long)
    x = sample_latents(
        ConstantVelocity(), (1, 1, 1), labels, seeds, sampler, null_class=1, device="cpu"
    )
    start = sample_latents(  # zero velocity: returns the initial noise of each seed
        lambda x, t, y: torch.zeros_like(x),
        (1, 1, 1),
        labels,
        seeds,
        sampler,
        null_class=1,
        device="cpu",
    )
    torch.testing.assert_close(x, start - expected_shift, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["ode", "sde"])
def test_samples_depend_only_on_their_seed(mode: str) -> None:
    model = GaussianVelocity(*_target())
    seeds = torch.tensor([11, 3, 7, 5, 2, 9, 4])
    labels = torch.zeros(7, dtype=torch.long)

    def run(batch: int, order: torch.Tensor) -> torch.Tensor:
        sampler = SamplerConfig(mode=mode, num_steps=20, batch_size=batch)
        return sample_latents(
            model, (DIM, 1, 1), labels[order], seeds[order], sampler, null_class=1, device="cpu"
        )

    base = run(7, torch.arange(7))
    torch.testing.assert_close(run(3, torch.arange(7)), base, atol=1e-6, rtol=0)
    reverse = torch.arange(6, -1, -1)
    torch.testing.assert_close(run(2, reverse), base[reverse], atol=1e-6, rtol=0)
    assert not torch.allclose(base[0], base[1])


def _run(space: str) -> RunConfig:
    return RunConfig(
        method="none",
        data={"resolution": 16, "num_classes": 4},
        model=ModelConfig(name="SiT-T/2", space=space),
        train=TrainConfig(precision="fp32"),
        random_weights=True,
    )


def test_sample_images_pixel_and_latent_space() -> None:
    from harness.models.sit import SiT

    for space, side in (("pixel", 16), ("latent", 16)):
        run = _run(space)
        torch.manual_seed(0)
        model = SiT.from_config(run.model).eval()
        sampler = SamplerConfig(mode="sde", num_steps=4, batch_size=2)
        images = sample_images(model, run, torch.tensor([0, 1, 2]), torch.arange(3), sampler, "cpu")
        assert images.dtype == torch.uint8 and images.shape == (3, 3, side, side)
    with pytest.raises(HarnessError, match="label dropout"):
        run = _run("pixel").model_copy(
            update={"model": _run("pixel").model.model_copy(update={"class_dropout": 0.0})}
        )
        sample_images(
            model, run, torch.tensor([0]), torch.arange(1), SamplerConfig(cfg_scale=2.0), "cpu"
        )


# ---------------------------------------------------------------------------------------------
# NFE: the network evaluations the sampler really makes, per sample
# ---------------------------------------------------------------------------------------------
class CountingVelocity(torch.nn.Module):
    """Zero velocity that counts the network evaluations it serves (batch rows per call)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows = 0

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        return torch.zeros_like(x)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"mode": "ode", "num_steps": 10}, 10),
        ({"mode": "sde", "num_steps": 12}, 12),
        ({"mode": "ode", "num_steps": 10, "cfg_scale": 3.0}, 20),  # every step guided
        # t = 1, 0.9, ..., 0.1 (the ODE evaluates no step at 0): 0.4 ... 0.1 are guided
        ({"mode": "ode", "num_steps": 10, "cfg_scale": 3.0, "guidance_high": 0.45}, 14),
        # SDE: t = linspace(1, 0.04, 25) = 1, 0.96, ..., 0.04: those <= 0.7 (0.68 ... 0.04,
        # 17 of 25) cost two evaluations
        ({"mode": "sde", "num_steps": 25, "cfg_scale": 1.8, "guidance_high": 0.7}, 42),
        ({"mode": "sde", "num_steps": 25, "cfg_scale": 1.0, "guidance_high": 0.7}, 25),  # off
    ],
)
def test_nfe_counts_the_models_real_evaluations(settings: dict, expected: int) -> None:
    from harness.train.sampling import nfe

    n = 3
    sampler = SamplerConfig(batch_size=n, **settings)
    model = CountingVelocity()
    labels = torch.zeros(n, dtype=torch.long)
    sample_latents(model, (1, 1, 1), labels, torch.arange(n), sampler, null_class=1, device="cpu")
    assert model.rows == n * expected  # evaluations per sample, counted at the model
    assert nfe(sampler) == expected


# ---------------------------------------------------------------------------------------------
# uint8 conversion of generated images
# ---------------------------------------------------------------------------------------------
def test_model_to_pixels_truncates_as_the_official_generate_py_by_default() -> None:
    from harness.train.data import model_to_pixels

    # 255 (x + 1) / 2 = 0.6, 127.6, 254.9, 100.5: rounding and truncation differ on every one
    levels = torch.tensor([0.6, 127.6, 254.9, 100.5])
    x = (levels / 127.5 - 1.0).reshape(1, 1, 2, 2)
    x = torch.cat([x, torch.tensor([-1.5, 1.5, -1.0, 1.0]).reshape(1, 1, 2, 2)], dim=1)  # clamps
    official = torch.clamp(255 * (x + 1) / 2, 0, 255).to(torch.uint8)  # REPA / iREPA generate.py
    assert torch.equal(model_to_pixels(x), official)
    assert model_to_pixels(x)[0, 0].flatten().tolist() == [0, 127, 254, 100]
    rounded = model_to_pixels(x, "round")
    assert rounded[0, 0].flatten().tolist() == [1, 128, 255, 100]  # 100.5 rounds half to even
    assert rounded[0, 1].flatten().tolist() == official[0, 1].flatten().tolist() == [0, 255, 0, 255]
    with pytest.raises(ValueError, match="to_uint8"):
        model_to_pixels(x, "floor")  # type: ignore[arg-type]


def test_sample_images_follow_the_samplers_uint8_conversion() -> None:
    from harness.models.sit import SiT
    from harness.train.data import model_to_pixels

    run = _run("pixel")
    torch.manual_seed(0)
    model = SiT.from_config(run.model).eval()
    labels, seeds = torch.tensor([0, 1]), torch.arange(2)
    sampler = SamplerConfig(mode="ode", num_steps=2, batch_size=2)
    z = sample_latents(model, (3, 16, 16), labels, seeds, sampler, null_class=4, device="cpu")
    for mode in ("truncate", "round"):
        chosen = sampler.model_copy(update={"to_uint8": mode})
        images = sample_images(model, run, labels, seeds, chosen, "cpu")
        assert torch.equal(images, model_to_pixels(z, mode))
    truncated = sample_images(model, run, labels, seeds, sampler, "cpu")
    rounded = sample_images(
        model, run, labels, seeds, sampler.model_copy(update={"to_uint8": "round"}), "cpu"
    )
    assert not torch.equal(truncated, rounded)  # the option reaches the images
