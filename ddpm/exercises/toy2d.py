"""Checkers for chapter 5, DDPM in two dimensions.

- Exercise 5.1, :func:`check_training_loss`: the training loss L_simple of Algorithm 1 (eq. 14 of
  Ho et al. 2020) for a batch, given the model, x0, the steps, the noise and the betas.
- Exercise 5.2, :func:`check_optimal_eps`: the optimal noise predictor E[eps | x_t] when the data
  are Gaussian, x0 ~ N(mu, s^2 I).

Code index ``t`` in ``0..T-1`` is the paper's step ``t + 1``: ``alphas_cumprod[t]`` is
alpha-bar_{t+1}, the product of the first ``t + 1`` alphas.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..diffusion import GaussianDiffusion
from ..schedules import cosine_beta_schedule, linear_beta_schedule, schedule_quantities
from . import CheckResult, Mistake, grade

__all__ = ["check_training_loss", "check_optimal_eps"]

# Large steps: every step visibly changes alpha-bar, so an off-by-one index cannot hide.
_SHORT_BETAS = torch.tensor([0.1, 0.3, 0.5, 0.2, 0.9], dtype=torch.float64)


def _schedules() -> list[torch.Tensor]:
    return [linear_beta_schedule(100), cosine_beta_schedule(50), _SHORT_BETAS.clone()]


def _col(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A [B] table lookup shaped [B, 1, ..., 1] to broadcast against x, in x's dtype."""
    return values.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def _steps(T: int, batch: int) -> torch.Tensor:
    """The edge steps 0 and T-1 and a few in between."""
    base = [0, T - 1, T // 2, 1, T // 3, 0, T - 1, T // 4]
    return torch.tensor([base[i % len(base)] for i in range(batch)], dtype=torch.long)


# --------------------------------------------------------------------------- Exercise 5.1


def _toy_model(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A fixed 'network': a smooth nonlinear function of x_t and of the (integer) step."""
    tt = _col(t.to(torch.float64), xt)
    return torch.tanh(0.8 * xt + 0.05 * tt) - 0.1 * xt.flip(-1)


def _training_loss_reference(model, x0, t, noise, betas):
    return GaussianDiffusion(betas).training_losses(model, x0, t, noise).mean()


def _loss_with(
    abar_fn: Callable = lambda b: torch.cumprod(1 - b, dim=0),
    noise_coef: Callable = lambda a: (1 - a).sqrt(),
    target: str = "eps",
    t_shift: int = 0,
    reduce: Callable = lambda err: err.mean(),
) -> Callable:
    """A training loss built from the given pieces (the right ones by default)."""

    def fn(model, x0, t, noise, betas):
        abar = _col(abar_fn(betas.to(torch.float64))[t], x0)
        xt = abar.sqrt() * x0 + noise_coef(abar) * noise
        out = model(xt, t + t_shift)
        goal = noise if target == "eps" else x0
        return reduce((out - goal) ** 2)

    return fn


_TRAINING_LOSS_MISTAKES = [
    Mistake(
        "you used sqrt(alpha_t), the one-step factor, where sqrt(alpha-bar_t) belongs: x_t is "
        "drawn from q(x_t | x_0), which jumps over all steps 1..t at once, so it needs "
        "alpha-bar_t = alpha_1 ... alpha_t (torch.cumprod(1 - betas, 0)[t]).",
        _loss_with(abar_fn=lambda b: 1 - b),
    ),
    Mistake(
        "off by one step: code index t is already the paper's step t+1, so alpha-bar at code t "
        "is the product of alphas 0..t *including* t (torch.cumprod(1 - betas, 0)[t]); you used "
        "the product up to t-1.",
        _loss_with(abar_fn=lambda b: torch.cat([b.new_ones(1), torch.cumprod(1 - b, dim=0)[:-1]])),
    ),
    Mistake(
        "you scaled the noise by the variance (1 - alpha-bar_t) instead of the standard "
        "deviation sqrt(1 - alpha-bar_t).",
        _loss_with(noise_coef=lambda a: 1 - a),
    ),
    Mistake(
        "the model predicts the noise: regress its output on eps, not on x0.",
        _loss_with(target="x0"),
    ),
    Mistake(
        "off by one step: give the model the code index t it was trained with (0..T-1), not the "
        "paper's t+1.",
        _loss_with(t_shift=1),
    ),
    Mistake(
        "you summed the squared errors over the coordinates; L_simple (and the package's "
        "training_losses) averages over every dimension, so the loss does not depend on the "
        "data's dimension.",
        _loss_with(reduce=lambda err: err.reshape(err.shape[0], -1).sum(dim=1).mean()),
    ),
    Mistake(
        "you returned one loss per example: average over the batch as well, to get the scalar "
        "you call .backward() on.",
        _loss_with(reduce=lambda err: err.reshape(err.shape[0], -1).mean(dim=1)),
    ),
]


def _training_loss_cases() -> list[tuple]:
    gen = torch.Generator().manual_seed(5)
    cases = []
    for betas, shape in zip(_schedules(), [(8, 2), (6, 3), (5, 2)], strict=True):
        t = _steps(len(betas), shape[0])
        x0 = torch.randn(shape, generator=gen)
        noise = torch.randn(shape, generator=gen)
        cases.append((_toy_model, x0, t, noise, betas))
    return cases


def check_training_loss(fn: Callable, verbose: bool = True) -> CheckResult:
    """Exercise 5.1: ``fn(model, x0, t, noise, betas) -> loss`` (a scalar tensor).

    ``x0`` and ``noise`` are [B, d], ``t`` a long tensor [B] of code indices, ``betas`` the
    float64 schedule (length T); ``model(x_t, t)`` predicts the noise. The loss is the mean, over
    the batch and the coordinates, of the squared error of that prediction.
    """
    return grade(
        "5.1 (training loss)",
        fn,
        _training_loss_reference,
        _training_loss_cases(),
        _TRAINING_LOSS_MISTAKES,
        verbose=verbose,
    )


# --------------------------------------------------------------------------- Exercise 5.2


def _betas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    abar = alphas_cumprod.to(torch.float64)
    prev = torch.cat([abar.new_ones(1), abar[:-1]])
    return 1.0 - abar / prev


def _optimal_eps_reference(xt, t, alphas_cumprod, mu, s):
    """E[eps | x_t] through the posterior mean of x0 (Gaussian conditioning) and the package."""
    diffusion = GaussianDiffusion(_betas_from_alphas_cumprod(alphas_cumprod))
    abar = _col(alphas_cumprod[t], xt)
    gain = s**2 * abar.sqrt() / (abar * s**2 + 1 - abar)  # Cov(x0, x_t) / Var(x_t)
    x0_hat = mu + gain * (xt - abar.sqrt() * mu)
    return diffusion.predict_eps_from_x0(xt, t, x0_hat)


def _eps_with(
    shift: Callable = lambda a, mu: a.sqrt() * mu,
    var: Callable = lambda a, s: a * s**2 + 1 - a,
    numer: Callable = lambda a: (1 - a).sqrt(),
    t_shift: int = 0,
) -> Callable:
    """An optimal-eps formula built from the given pieces (the right ones by default)."""

    def fn(xt, t, alphas_cumprod, mu, s):
        abar = _col(alphas_cumprod.to(torch.float64)[t + t_shift], xt)
        return numer(abar) * (xt - shift(abar, mu)) / var(abar, s)

    return fn


_OPTIMAL_EPS_MISTAKES = [
    Mistake(
        "you subtracted mu, but the mean of x_t is sqrt(alpha-bar_t) mu: the signal is shrunk "
        "along with the data, so subtract sqrt(alpha-bar_t) mu.",
        _eps_with(shift=lambda a, mu: mu),
    ),
    Mistake(
        "you forgot the mean: E[eps | x_t] is proportional to x_t - sqrt(alpha-bar_t) mu, the "
        "deviation of x_t from its mean (it is x_t itself only when mu = 0).",
        _eps_with(shift=lambda a, mu: torch.zeros_like(mu)),
    ),
    Mistake(
        "s is the data's standard deviation: the variance of x_t is alpha-bar_t s^2 + "
        "1 - alpha-bar_t, with s squared.",
        _eps_with(var=lambda a, s: a * s + 1 - a),
    ),
    Mistake(
        "you divided by 1, the prior's variance, instead of Var(x_t) = alpha-bar_t s^2 + "
        "1 - alpha-bar_t (they agree only when s = 1 or at the last steps).",
        _eps_with(var=lambda a, s: torch.ones_like(a)),
    ),
    Mistake(
        "you returned (x_t - sqrt(alpha-bar_t) mu) / Var(x_t), which is minus the score of "
        "q(x_t); E[eps | x_t] carries an extra factor sqrt(1 - alpha-bar_t) = Cov(eps, x_t).",
        _eps_with(numer=lambda a: torch.ones_like(a)),
    ),
    Mistake(
        "off by one step: code index t is the paper's step t+1, so use alphas_cumprod[t], not "
        "alphas_cumprod[t-1] (which at t = 0 wraps around to the last step).",
        _eps_with(t_shift=-1),
    ),
]


def _optimal_eps_cases() -> list[tuple]:
    gen = torch.Generator().manual_seed(6)
    cases = []
    shapes, scales = [(8, 2), (6, 3), (5, 2)], [0.5, 2.0, 0.3]
    for betas, (batch, d), s in zip(_schedules(), shapes, scales, strict=True):
        abar = schedule_quantities(betas).alphas_cumprod
        t = _steps(len(betas), batch)
        mu = torch.randn(d, generator=gen, dtype=torch.float64) + 0.5
        xt = 1.5 * torch.randn(batch, d, generator=gen, dtype=torch.float64)
        cases.append((xt, t, abar, mu, s))
    return cases


def check_optimal_eps(fn: Callable, verbose: bool = True) -> CheckResult:
    """Exercise 5.2: ``fn(xt, t, alphas_cumprod, mu, s) -> E[eps | x_t]`` for x0 ~ N(mu, s^2 I).

    ``xt`` is [B, d], ``t`` a long tensor [B] of code indices, ``alphas_cumprod`` the float64
    table alpha-bar (length T), ``mu`` a [d] tensor and ``s`` a positive float.
    """
    return grade(
        "5.2 (optimal eps for Gaussian data)",
        fn,
        _optimal_eps_reference,
        _optimal_eps_cases(),
        _OPTIMAL_EPS_MISTAKES,
        verbose=verbose,
    )
