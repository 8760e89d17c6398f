"""Flow matching: interpolants, velocity targets, time sampling, velocity -> score, loss."""

from __future__ import annotations

import math

import pytest
import torch

from harness.train.flow import PATHS, flow_loss, interpolate, sample_time, velocity_to_score


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_endpoints_and_velocity_is_time_derivative(name: str) -> None:
    path = PATHS.get(name)
    x0, noise = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    at0, _ = interpolate(path, x0, noise, torch.zeros(4, dtype=torch.float64))
    at1, _ = interpolate(path, x0, noise, torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(at0, x0)
    torch.testing.assert_close(at1, noise, atol=1e-12, rtol=0)
    t, h = torch.rand(4, dtype=torch.float64) * 0.8 + 0.1, 1e-6
    _, v = interpolate(path, x0, noise, t)
    plus, _ = interpolate(path, x0, noise, t + h)
    minus, _ = interpolate(path, x0, noise, t - h)
    torch.testing.assert_close(v, (plus - minus) / (2 * h), atol=1e-7, rtol=0)


def test_linear_target_is_noise_minus_data() -> None:
    x0, noise, t = torch.randn(5, 2), torch.randn(5, 2), torch.rand(5)
    x_t, v = interpolate(PATHS.get("linear"), x0, noise, t)
    torch.testing.assert_close(v, noise - x0)
    torch.testing.assert_close(x_t, (1 - t[:, None]) * x0 + t[:, None] * noise)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_score_from_exact_velocity_of_a_gaussian(name: str) -> None:
    """x0 ~ N(mu, s^2 I): x_t ~ N(a mu, (a^2 s^2 + sig^2) I); the exact velocity is
    E[a' x0 + sig' eps | x_t] and must map to the exact score -(x - a mu) / var."""
    path = PATHS.get(name)
    mu, s2 = 1.5, 0.7
    t = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    x = torch.randn(3, 4, dtype=torch.float64)
    a, sig = path.alpha(t)[:, None], path.sigma(t)[:, None]
    da, dsig = path.d_alpha(t)[:, None], path.d_sigma(t)[:, None]
    var = a**2 * s2 + sig**2
    resid = x - a * mu
    e_x0 = mu + a * s2 / var * resid
    e_eps = sig / var * resid
    v = da * e_x0 + dsig * e_eps
    torch.testing.assert_close(velocity_to_score(path, v, x, t), -resid / var)


def test_lognormal_time_sampling_is_logit_normal_for_linear() -> None:
    gen = torch.Generator().manual_seed(0)
    path = PATHS.get("linear")
    t = sample_time(
        "lognormal", 200_000, path=path, generator=gen, device="cpu", mean=-0.5, std=0.8
    )
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean().item() + 0.5) < 0.01 and abs(logit.std().item() - 0.8) < 0.01
    cos = sample_time("lognormal", 1000, path=PATHS.get("cosine"), generator=gen, device="cpu")
    ratio = torch.tan(cos * math.pi / 2)  # sigma/alpha of the cosine path
    assert torch.all(ratio > 0) and torch.all((cos > 0) & (cos < 1))


def test_uniform_time_sampling_and_unknown_kind() -> None:
    gen = torch.Generator().manual_seed(0)
    t = sample_time("uniform", 100_000, path=PATHS.get("linear"), generator=gen, device="cpu")
    assert t.min() >= 0 and t.max() < 1 and abs(t.mean().item() - 0.5) < 0.01
    with pytest.raises(ValueError, match="allowed"):
        sample_time("beta", 4, path=PATHS.get("linear"), generator=gen, device="cpu")


def test_flow_loss_is_per_sample_mse_in_fp32() -> None:
    pred = torch.ones(2, 3, 2, 2, dtype=torch.bfloat16)
    target = torch.zeros(2, 3, 2, 2)
    target[1] = 3.0
    loss = flow_loss(pred, target)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, torch.tensor([1.0, 4.0]))
