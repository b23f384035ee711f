"""Checkers of chapter 5 (DDPM in two dimensions): they accept right answers and name typical
mistakes."""

import torch
from exercise_contract import Exercise, ExerciseContract

from ddpm.exercises.toy2d import (
    _OPTIMAL_EPS_MISTAKES,
    _TRAINING_LOSS_MISTAKES,
    check_optimal_eps,
    check_training_loss,
)

# --------------------------------------------------------------------------- Exercise 5.1


def notebook_training_loss(model, x0, t, noise, betas):
    """The solution printed in book/05_ddpm_2d.ipynb (Exercise 5.1)."""
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    abar = alphas_cumprod[t].to(x0.dtype)[:, None]
    xt = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    return ((model(xt, t) - noise) ** 2).mean()


def training_loss_with_the_package(model, x0, t, noise, betas):
    """Also right: q_sample from the package, then the mean squared error."""
    from ddpm import GaussianDiffusion

    xt = GaussianDiffusion(betas).q_sample(x0, t, noise)
    return torch.nn.functional.mse_loss(model(xt, t), noise)


def test_training_loss_prints_its_verdict(capsys):
    check_training_loss(notebook_training_loss)
    assert "[PASS] Exercise 5.1" in capsys.readouterr().out


def test_training_loss_rejects_garbage():
    for garbage in (
        lambda model, x0, t, noise, betas: torch.tensor(0.25),
        lambda model, x0, t, noise, betas: ((model(x0, t) - noise) ** 2).mean(),  # no noising
        lambda model, x0, t, noise, betas: "a loss",
    ):
        assert not check_training_loss(garbage, verbose=False)


# --------------------------------------------------------------------------- Exercise 5.2


def notebook_optimal_eps(xt, t, alphas_cumprod, mu, s):
    """The solution printed in book/05_ddpm_2d.ipynb (Exercise 5.2)."""
    abar = alphas_cumprod[t][:, None]
    return (1 - abar).sqrt() * (xt - abar.sqrt() * mu) / (abar * s**2 + 1 - abar)


def optimal_eps_by_score(xt, t, alphas_cumprod, mu, s):
    """Also right: Tweedie, E[eps | x_t] = -sqrt(1 - abar) * score of q(x_t), by autograd."""
    abar = alphas_cumprod[t][:, None]
    x = xt.clone().requires_grad_(True)
    var = abar * s**2 + 1 - abar
    log_q = (-0.5 * (x - abar.sqrt() * mu) ** 2 / var).sum()
    (score,) = torch.autograd.grad(log_q, x)
    return -(1 - abar).sqrt() * score


def test_optimal_eps_rejects_garbage():
    for garbage in (
        lambda xt, t, alphas_cumprod, mu, s: torch.zeros_like(xt),
        lambda xt, t, alphas_cumprod, mu, s: torch.randn_like(xt),
        lambda xt, t, alphas_cumprod, mu, s: xt[:, :1],
    ):
        assert not check_optimal_eps(garbage, verbose=False)


def test_optimal_eps_minimises_the_training_loss():
    """The reference really is E[eps | x_t]: nudging it in any direction raises the Monte Carlo
    mean squared error (the minimum of L_simple for Gaussian data)."""
    from ddpm import GaussianDiffusion, linear_beta_schedule

    d = GaussianDiffusion(linear_beta_schedule(100))
    mu, s, n = torch.tensor([0.4, -0.7], dtype=torch.float64), 0.6, 200_000
    gen = torch.Generator().manual_seed(0)
    x0 = mu + s * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    noise = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    t = torch.full((n,), 30)
    xt = d.q_sample(x0, t, noise)
    best = notebook_optimal_eps(xt, t, d.alphas_cumprod, mu, s)
    mse = ((best - noise) ** 2).mean()
    abar = d.alphas_cumprod[30]
    assert abs(mse - abar * s**2 / (abar * s**2 + 1 - abar)) < 0.005  # Var(eps | x_t)
    for scale in (0.9, 1.1):
        assert ((scale * best - noise) ** 2).mean() > mse


class TestContract(ExerciseContract):
    """Right answers pass, each mistake gets its hint, a stub is "not solved yet"."""

    exercises = (
        Exercise(
            check_training_loss,
            notebook_training_loss,
            _TRAINING_LOSS_MISTAKES,
            also_right=[training_loss_with_the_package],
        ),
        Exercise(
            check_optimal_eps,
            notebook_optimal_eps,
            _OPTIMAL_EPS_MISTAKES,
            also_right=[optimal_eps_by_score],
        ),
    )
