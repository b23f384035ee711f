"""Checkers for chapter 4, the simplified loss.

- Exercise 4.1, :func:`check_l_simple`: the per-example L_simple loss (eq. 14 of Ho et al. 2020,
  Algorithm 1) for a batch, given the model, x0, the code indices t, the noise and the betas.
- Exercise 4.2, :func:`check_reverse_step`: one step of Algorithm 2, x_t -> x_{t-1}, for a
  batch whose examples sit at different steps t, given the noise prediction, the fresh noise z
  and the betas, with sigma_t^2 = beta_t.

Conventions (the package's, see ``GaussianDiffusion.training_losses`` and ``p_sample``):
code index ``t`` in ``0..T-1`` is the paper's step ``t + 1``; the loss of one example is the
*mean* of the squared error over all its dimensions (L_simple divided by the dimension d), one
value per example; the reverse step adds no noise at code index t = 0 (the paper's t = 1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..diffusion import GaussianDiffusion
from ..schedules import cosine_beta_schedule, linear_beta_schedule, schedule_quantities
from . import CheckResult, Mistake, grade

__all__ = ["check_l_simple", "check_reverse_step", "toy_eps_model"]

# A short schedule with large steps: every step visibly changes alpha-bar, so an off-by-one
# index or alpha_t in place of alpha-bar_t cannot hide behind the tiny betas of T = 1000.
_SHORT_BETAS = torch.tensor([0.1, 0.3, 0.5, 0.2, 0.9], dtype=torch.float64)


def _schedules() -> list[torch.Tensor]:
    return [linear_beta_schedule(1000), cosine_beta_schedule(100), _SHORT_BETAS.clone()]


def _col(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A [B] table shaped [B, 1, ..., 1] to broadcast against x."""
    return values.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)


def toy_eps_model(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A fixed stand-in for a network: a smooth, nonlinear function of x_t and of the code index t.

    It depends on x_t (so a wrong x_t changes its output) and on t (so a wrong step does too).
    """
    t = _col(t.to(torch.float64), xt)
    return torch.tanh(1.5 * xt + 0.3) * (0.8 + 0.1 * torch.sin(t)) - 0.2 * torch.cos(0.7 * t)


def _cases(gen_seed: int) -> list[tuple]:
    """(x0, t, noise, betas) for each schedule: edge steps 0 and T-1 and a few in between."""
    gen = torch.Generator().manual_seed(gen_seed)
    cases = []
    for betas, shape in zip(_schedules(), [(6, 2), (5, 1, 3, 3), (5, 3)], strict=True):
        T = len(betas)
        t = torch.tensor([0, T - 1, T // 2, 1, T // 3, T - 2][: shape[0]], dtype=torch.long)
        x0 = (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1).clamp(-1, 1)
        noise = torch.randn(shape, generator=gen, dtype=torch.float64)
        cases.append((x0, t, noise, betas))
    return cases


# --------------------------------------------------------------------------- Exercise 4.1


def _l_simple_reference(model, x0, t, noise, betas):
    return GaussianDiffusion(betas).training_losses(model, x0, t, noise, loss_type="simple")


def _l_simple_with(
    abar_fn: Callable | None = None,
    sqrt: bool = True,
    target: str = "eps",
    reduce: str = "mean",
    t_shift: int = 0,
) -> Callable:
    """An L_simple built from the pieces given (defaults: the right ones)."""

    def fn(model, x0, t, noise, betas):
        q = schedule_quantities(betas)
        abar = (abar_fn or (lambda q, t: q.alphas_cumprod[t]))(q, t)
        abar = _col(abar, x0)
        if sqrt:
            xt = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
        else:
            xt = abar * x0 + (1 - abar) * noise
        err = (model(xt, t + t_shift) - (noise if target == "eps" else x0)) ** 2
        per_example = err.reshape(err.shape[0], -1)
        if reduce == "sum":
            return per_example.sum(dim=1)
        if reduce == "all":
            return per_example.mean()
        return per_example.mean(dim=1)

    return fn


_L_SIMPLE_MISTAKES = [
    Mistake(
        "your target is x0; with the eps parameterization the network predicts the noise, so "
        "the loss is ||eps - eps_theta(x_t, t)||^2 with the same eps you used to build x_t.",
        _l_simple_with(target="x0"),
    ),
    Mistake(
        "you used sqrt(alpha_t) (one step) where sqrt(alpha-bar_t) belongs: x_t is drawn from "
        "q(x_t | x_0) in one jump over the steps 1..t, which needs alpha-bar_t = alpha_1 ... "
        "alpha_t (the cumulative product of 1 - betas).",
        _l_simple_with(abar_fn=lambda q, t: q.alphas[t]),
    ),
    Mistake(
        "off by one step: code index t is already the paper's step t+1, so x_t needs "
        "alpha-bar at index t (the product of alphas[0..t]), not the product up to t-1.",
        _l_simple_with(abar_fn=lambda q, t: q.alphas_cumprod_prev[t]),
    ),
    Mistake(
        "off by one step: alphas_cumprod[t-1] is the previous step (and at t = 0 the index -1 "
        "wraps around to the last step); code index t is already the paper's t+1, so use "
        "alphas_cumprod[t].",
        _l_simple_with(abar_fn=lambda q, t: q.alphas_cumprod[t - 1]),
    ),
    Mistake(
        "you used alpha-bar_t and 1 - alpha-bar_t (variances) as the coefficients; x_t = "
        "sqrt(alpha-bar_t) x0 + sqrt(1 - alpha-bar_t) eps uses their square roots.",
        _l_simple_with(sqrt=False),
    ),
    Mistake(
        "you summed the squared error over the dimensions; the convention here (the package's) is "
        "the mean over every dimension but the batch, so the loss does not grow with image size.",
        _l_simple_with(reduce="sum"),
    ),
    Mistake(
        "you averaged over the batch too; return one loss per example (shape [B]), the mean over "
        "every dimension but the batch (the training loop takes the batch mean itself).",
        _l_simple_with(reduce="all"),
    ),
    Mistake(
        "the model takes the code index t (0..T-1) as it is; don't convert it to the paper's t+1.",
        _l_simple_with(t_shift=1),
    ),
]


def check_l_simple(fn: Callable, verbose: bool = True) -> CheckResult:
    """Exercise 4.1: ``fn(model, x0, t, noise, betas) -> loss`` of shape [B].

    ``x0`` and ``noise`` are [B, ...] float64, ``t`` a long tensor [B] of code indices, ``betas``
    the float64 schedule (length T), ``model(x_t, t)`` returns the noise prediction. The loss of
    each example is the mean over its dimensions of (eps - model(x_t, t))^2.
    """
    cases = [(toy_eps_model, *case) for case in _cases(41)]
    return grade(
        "4.1 (L_simple)",
        fn,
        _l_simple_reference,
        cases,
        _L_SIMPLE_MISTAKES,
        verbose=verbose,
    )


# --------------------------------------------------------------------------- Exercise 4.2


def _reverse_step_reference(xt, t, eps_pred, noise, betas):
    diffusion = GaussianDiffusion(betas, model_mean_type="eps", model_var_type="fixed_large")
    return diffusion.p_sample(lambda x, s: eps_pred, xt, t, noise=noise, clip_denoised=False)


def _reverse_step_with(
    eps_coef: Callable | None = None,
    scale: Callable | None = None,
    noise_scale: Callable | None = None,
    noise_at_zero: bool = False,
) -> Callable:
    """x_{t-1} = scale * (x_t - eps_coef * eps) + noise_scale * z, the pieces as given."""

    def fn(xt, t, eps_pred, noise, betas):
        q = schedule_quantities(betas)
        c_eps = (eps_coef or (lambda q, t: q.betas[t] / q.sqrt_one_minus_alphas_cumprod[t]))(q, t)
        c = (scale or (lambda q, t: 1 / q.alphas[t].sqrt()))(q, t)
        s = (noise_scale or (lambda q, t: q.betas[t].sqrt()))(q, t)
        if not noise_at_zero:
            s = torch.where(t == 0, torch.zeros_like(s), s)
        return _col(c, xt) * (xt - _col(c_eps, xt) * eps_pred) + _col(s, xt) * noise

    return fn


_REVERSE_STEP_MISTAKES = [
    Mistake(
        "you added noise at t = 0: the last step (the paper's t = 1) returns the mean, "
        "z = 0 there (Algorithm 2, line 3); noise would only blur the final sample. With a batch "
        "of steps, zero the noise only for the examples whose t is 0 (e.g. torch.where).",
        _reverse_step_with(noise_at_zero=True),
    ),
    Mistake(
        "you used sigma_t^2 = beta_t as the standard deviation: the noise term is sigma_t z "
        "with sigma_t = sqrt(beta_t).",
        _reverse_step_with(noise_scale=lambda q, t: q.betas[t]),
    ),
    Mistake(
        "off by one step in beta_t / sqrt(1 - alpha-bar_t): you took alpha-bar of the previous "
        "step (alphas_cumprod[t-1], which at t = 0 wraps around to the last step); the code "
        "index t is the paper's step t+1 and everything in this update belongs to that step.",
        _reverse_step_with(eps_coef=lambda q, t: q.betas[t] / (1 - q.alphas_cumprod[t - 1]).sqrt()),
    ),
    Mistake(
        "the factor in front is 1 / sqrt(alpha_t) (one step back), not 1 / sqrt(alpha-bar_t) "
        "(which would jump all the way to x0).",
        _reverse_step_with(scale=lambda q, t: 1 / q.alphas_cumprod[t].sqrt()),
    ),
    Mistake(
        "the noise coefficient is beta_t / sqrt(1 - alpha-bar_t); you used "
        "sqrt(1 - alpha-bar_t) alone (that is the coefficient of eps in x0's prediction, eq. 15, "
        "not in mu_theta, eq. 11).",
        _reverse_step_with(eps_coef=lambda q, t: q.sqrt_one_minus_alphas_cumprod[t]),
    ),
    Mistake(
        "you used sigma_t^2 = beta-tilde_t, the other valid choice; this exercise asks for "
        "sigma_t^2 = beta_t (the reverse variance of the paper's CIFAR-10 model).",
        _reverse_step_with(noise_scale=lambda q, t: q.posterior_variance[t].sqrt()),
    ),
]


def _reverse_step_cases() -> list[tuple]:
    cases = []
    for x0, t, noise, betas in _cases(42):
        gen = torch.Generator().manual_seed(len(betas))
        xt = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
        eps_pred = toy_eps_model(xt, t)
        cases.append((xt, t, eps_pred, noise, betas))
        # the whole batch at one step: the first (t = 0) and the last (t = T-1)
        for step in (0, len(betas) - 1):
            same = torch.full_like(t, step)
            cases.append((xt, same, toy_eps_model(xt, same), noise, betas))
    return cases


def check_reverse_step(fn: Callable, verbose: bool = True) -> CheckResult:
    """Exercise 4.2: ``fn(xt, t, eps_pred, noise, betas) -> x_{t-1}`` (Algorithm 2, line 4).

    ``xt``, ``eps_pred`` (the model's output eps_theta(x_t, t)) and ``noise`` (z) are [B, ...]
    float64, ``t`` a long tensor [B] of code indices (each example at its own step), ``betas``
    the float64 schedule; sigma_t^2 = beta_t, and no noise for the examples where t = 0.
    """
    return grade(
        "4.2 (reverse step)",
        fn,
        _reverse_step_reference,
        _reverse_step_cases(),
        _REVERSE_STEP_MISTAKES,
        verbose=verbose,
    )
