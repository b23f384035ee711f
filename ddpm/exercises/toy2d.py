"""Checkers for chapter 5, DDPM in two dimensions.

- Exercise 5.1, :func:`check_training_loss`: the training loss L_simple of Algorithm 1 (eq. 14 of
  Ho et al. 2020) for a batch, given the model, x0, the steps, the noise and the betas.
- Exercise 5.2, :func:`check_x0_loss`: the weight SNR_t that turns a network predicting x0 into
  one trained with L_simple: ||eps - eps-hat||^2 = SNR_t ||x0 - x0-hat||^2.

Code index ``t`` in ``0..T-1`` is the paper's step ``t + 1``: ``alphas_cumprod[t]`` is
alpha-bar_{t+1}, the product of the first ``t + 1`` alphas.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..diffusion import GaussianDiffusion
from ..schedules import cosine_beta_schedule, linear_beta_schedule, schedule_quantities
from . import CheckResult, Mistake, grade

__all__ = ["check_training_loss", "check_x0_loss"]

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


def _x0_loss_reference(model, x0, t, noise, betas):
    """The package's x0-prediction MSE per example, times SNR_t."""
    diffusion = GaussianDiffusion(betas, model_mean_type="x0")
    snr = _col(schedule_quantities(betas).snr[t], x0).flatten()
    return snr * diffusion.training_losses(model, x0, t, noise)


def _x0_loss_with(weight: Callable, reduce: Callable = lambda per_example: per_example):
    """An x0 loss with the weight ``weight(alphas, alphas_cumprod)`` (a table, indexed by t)."""

    def fn(model, x0, t, noise, betas):
        b = betas.to(torch.float64)
        abar = torch.cumprod(1 - b, dim=0)
        a = _col(abar[t], x0)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        err = ((x0 - model(xt, t)) ** 2).reshape(len(x0), -1).mean(dim=1)
        return reduce(weight(1 - b, abar)[t].to(err.dtype) * err)

    return fn


_X0_LOSS_MISTAKES = [
    Mistake(
        "you weighted by (1 - alpha-bar_t) / alpha-bar_t = 1 / SNR_t, the inverse: an error "
        "in x0-hat becomes an error in eps-hat multiplied by sqrt(alpha-bar_t / "
        "(1 - alpha-bar_t)), so the squared errors differ by the factor SNR_t.",
        _x0_loss_with(lambda a, ab: (1 - ab) / ab),
    ),
    Mistake(
        "you weighted by sqrt(SNR_t): that is the factor between the errors themselves; "
        "between the *squared* errors it is SNR_t = alpha-bar_t / (1 - alpha-bar_t).",
        _x0_loss_with(lambda a, ab: (ab / (1 - ab)).sqrt()),
    ),
    Mistake(
        "no weight: the plain x0 mean squared error is a different loss (it is L_simple "
        "divided by SNR_t, so it hardly cares about the small-t steps where SNR_t is large).",
        _x0_loss_with(lambda a, ab: torch.ones_like(ab)),
    ),
    Mistake(
        "you used the one-step alpha_t / (1 - alpha_t) = alpha_t / beta_t; the SNR of x_t is "
        "alpha-bar_t / (1 - alpha-bar_t), with the product alpha-bar_t.",
        _x0_loss_with(lambda a, ab: a / (1 - a)),
    ),
    Mistake(
        "you averaged over the batch: return one loss per example (shape [B]); each example "
        "has its own step t and so its own weight.",
        _x0_loss_with(lambda a, ab: ab / (1 - ab), reduce=lambda per_example: per_example.mean()),
    ),
]


def _x0_loss_cases() -> list[tuple]:
    gen = torch.Generator().manual_seed(7)
    cases = []
    for betas, shape in zip(_schedules(), [(8, 2), (6, 3), (5, 2)], strict=True):
        t = _steps(len(betas), shape[0])
        x0 = torch.randn(shape, generator=gen, dtype=torch.float64)
        noise = torch.randn(shape, generator=gen, dtype=torch.float64)
        cases.append((_toy_model, x0, t, noise, betas))
    return cases


def check_x0_loss(fn: Callable, verbose: bool = True) -> CheckResult:
    """Exercise 5.2: ``fn(model, x0, t, noise, betas) -> loss`` of shape [B].

    ``model(x_t, t)`` predicts x0; the loss of each example is its x0 squared error (averaged
    over the coordinates) weighted so that it equals the eps squared error of the same
    prediction: SNR_t = alpha-bar_t / (1 - alpha-bar_t).
    """
    return grade(
        "5.2 (the x0-prediction loss weight)",
        fn,
        _x0_loss_reference,
        _x0_loss_cases(),
        _X0_LOSS_MISTAKES,
        verbose=verbose,
    )
