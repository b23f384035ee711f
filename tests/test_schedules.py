"""Schedules: the paper's endpoints, the cosine formula, float64 tables, and input validation."""

import math

import numpy as np
import pytest
import torch

from ddpm.schedules import (
    check_betas,
    cosine_beta_schedule,
    get_beta_schedule,
    linear_beta_schedule,
    schedule_quantities,
)


def test_linear_schedule_is_the_papers():
    betas = linear_beta_schedule()
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(1e-4, abs=1e-15)
    assert betas[-1].item() == pytest.approx(0.02, abs=1e-15)
    steps = betas[1:] - betas[:-1]
    assert torch.allclose(steps, torch.full_like(steps, (0.02 - 1e-4) / 999), atol=1e-15)


def test_linear_schedule_rescales_with_T():
    assert torch.allclose(
        linear_beta_schedule(500)[[0, -1]], torch.tensor([2e-4, 0.04], dtype=torch.float64)
    )
    assert torch.allclose(
        linear_beta_schedule(10, rescale=False)[[0, -1]],
        torch.tensor([1e-4, 0.02], dtype=torch.float64),
    )
    # rescaled, alpha-bar_T stays close to 0 whatever T is
    for T in (50, 200, 1000, 4000):
        abar_T = torch.cumprod(1 - linear_beta_schedule(T), 0)[-1].item()
        assert abar_T < 1e-4, T
    with pytest.raises(ValueError, match="larger T or rescale=False"):
        linear_beta_schedule(10)
    with pytest.raises(ValueError, match="num_timesteps"):
        linear_beta_schedule(0)


def test_cosine_schedule_matches_its_formula():
    T, s = 1000, 0.008
    betas = cosine_beta_schedule(T)
    assert betas.dtype == torch.float64 and betas.shape == (T,)
    assert (betas > 0).all() and (betas <= 0.999).all()
    assert betas[-1].item() == pytest.approx(0.999)  # the clip bites at the last step
    abar = torch.cumprod(1 - betas, 0)

    def f(u):
        return math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2

    for t in (0, 1, 250, 500, 900):
        assert abar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-10)
    assert (betas[1:] >= betas[:-1]).all()


def test_get_beta_schedule_by_name():
    assert torch.equal(get_beta_schedule("linear", 1000), linear_beta_schedule(1000))
    assert torch.equal(get_beta_schedule("cosine", 100), cosine_beta_schedule(100))
    with pytest.raises(ValueError, match="linear, cosine"):
        get_beta_schedule("quadratic")


@pytest.mark.parametrize("bad", [[0.0, 0.1], [0.1, 1.0], [-0.1], [float("nan")], [[0.1]], []])
def test_check_betas_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="betas"):
        check_betas(bad)


def test_check_betas_accepts_lists_and_arrays():
    assert check_betas([0.1, 0.2]).dtype == torch.float64
    assert torch.equal(
        check_betas(np.array([0.1, 0.2])), torch.tensor([0.1, 0.2], dtype=torch.float64)
    )


def test_quantities_are_float64_and_exact():
    q = schedule_quantities(linear_beta_schedule(1000))
    for name, value in q.as_dict().items():
        assert value.dtype == torch.float64 and value.shape == (1000,), name
        assert torch.isfinite(value).all(), name
    # alpha-bar against a plain float64 product, and the paper's alpha-bar_T
    betas = linear_beta_schedule(1000).tolist()
    assert q.alphas_cumprod[-1].item() == pytest.approx(math.prod(1 - b for b in betas), rel=1e-12)
    assert q.alphas_cumprod[-1].item() == pytest.approx(4.0358e-5, rel=1e-4)
    # in float32, 1 - alpha-bar near t = 0 loses ~4 digits: why the tables are float64
    one_minus_f32 = 1 - torch.cumprod(1 - linear_beta_schedule(1000).float(), 0)[0].double()
    assert abs(one_minus_f32 / (1 - q.alphas_cumprod[0]) - 1).item() > 1e-5
    assert (1 - q.alphas_cumprod[0]).item() == pytest.approx(1e-4, rel=1e-12)
    assert q.alphas_cumprod_prev[0].item() == 1.0
    assert torch.equal(q.alphas_cumprod_prev[1:], q.alphas_cumprod[:-1])
    assert torch.allclose(
        q.sqrt_alphas_cumprod**2 + q.sqrt_one_minus_alphas_cumprod**2,
        torch.ones(1000, dtype=torch.float64),
    )
    assert (q.snr[1:] < q.snr[:-1]).all()


def test_posterior_tables():
    q = schedule_quantities(linear_beta_schedule(1000))
    assert q.posterior_variance[0].item() == 0.0  # x_0 is known exactly given x_1 and x_0
    assert q.posterior_log_variance_clipped[0].item() == pytest.approx(
        math.log(q.posterior_variance[1].item())
    )  # clipped: no -inf, which would break L_0
    # beta-tilde lies between 0 and beta, and the mean coefficients reproduce x when x0 = x_t = x
    # is a fixed point of the noiseless chain only at t = 0: coef1 = 1, coef2 = 0 there.
    assert (q.posterior_variance[1:] < q.betas[1:]).all()
    assert q.posterior_mean_coef1[0].item() == pytest.approx(1.0)
    assert q.posterior_mean_coef2[0].item() == pytest.approx(0.0, abs=1e-15)
