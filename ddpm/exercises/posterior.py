"""Checkers for chapter 2, the reverse process and the posterior.

- Exercise 2.1, :func:`check_posterior`: the mean mu-tilde_t and variance beta-tilde_t of the
  forward process posterior q(x_{t-1} | x_t, x_0) (eqs. 6-7 of Ho et al. 2020).
- Exercise 2.2, :func:`check_predict_x0_from_eps`: the estimate of x_0 from x_t and the noise,
  eq. 4 solved for x_0.

Both learner functions take the schedule as a float64 tensor ``betas`` (length T) and a long
tensor ``t`` [B] of code indices. Code index ``t`` in ``0..T-1`` is the paper's step ``t + 1``:
``betas[t]`` is beta_{t+1}, ``alphas_cumprod[t]`` is alpha-bar_{t+1}, and the alpha-bar of the
step before, alpha-bar_t in the paper's numbering, is ``alphas_cumprod[t - 1]``, or 1 at t = 0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..diffusion import GaussianDiffusion
from ..schedules import cosine_beta_schedule, linear_beta_schedule, schedule_quantities
from . import CheckResult, Mistake, grade

__all__ = ["check_posterior", "check_predict_x0_from_eps"]

# Large steps: every step changes alpha-bar visibly, so an off-by-one index cannot hide behind
# the tiny betas of the paper's schedule, and beta and beta-tilde differ at every step.
_SHORT_BETAS = torch.tensor([0.2, 0.4, 0.1, 0.6, 0.9], dtype=torch.float64)


def _reshape(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-example values [B] shaped [B, 1, ..., 1] to broadcast against x."""
    return values.reshape(-1, *([1] * (x.ndim - 1)))


def _cases(kind: str) -> list[tuple]:
    """Inputs for both exercises: (a, b, t, betas) with realistic x_t = q_sample(x0, t, eps).

    ``kind`` is ``"posterior"`` (a, b = x0, x_t) or ``"x0"`` (a, b = x_t, eps).
    """
    gen = torch.Generator().manual_seed(2)
    schedules = [
        (linear_beta_schedule(1000), (6, 3), [0, 999, 1, 2, 500, 0]),
        (cosine_beta_schedule(50), (4, 1, 3, 3), [49, 0, 25, 1]),
        (_SHORT_BETAS.clone(), (5,), [0, 1, 2, 3, 4]),
    ]
    cases = []
    for betas, shape, steps in schedules:
        t = torch.tensor(steps, dtype=torch.long)
        x0 = (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1).clamp(-1, 1)
        eps = torch.randn(shape, generator=gen, dtype=torch.float64)
        xt = GaussianDiffusion(betas).q_sample(x0, t, eps)
        cases.append((x0, xt, t, betas) if kind == "posterior" else (xt, t, eps, betas))
    return cases


# --------------------------------------------------------------------------- Exercise 2.1


def _posterior_reference(x0, xt, t, betas):
    mean, _, _ = GaussianDiffusion(betas).q_posterior_mean_variance(x0, xt, t)
    var = _reshape(schedule_quantities(betas).posterior_variance[t], xt)
    return mean, var


def _posterior_with(prev_abar: Callable, *, swap: bool = False, var_is_beta: bool = False):
    """A posterior computed from alpha-bar_{t-1} = prev_abar(alphas_cumprod, t), with a flaw."""

    def fn(x0, xt, t, betas):
        b = betas.to(torch.float64)
        abar = torch.cumprod(1 - b, dim=0)
        ab, ab_prev, beta = abar[t], prev_abar(abar, t), b[t]
        c0 = beta * ab_prev.sqrt() / (1 - ab)  # coefficient of x0
        ct = (1 - b[t]).sqrt() * (1 - ab_prev) / (1 - ab)  # coefficient of xt
        if swap:
            c0, ct = ct, c0
        var = beta if var_is_beta else beta * (1 - ab_prev) / (1 - ab)
        return _reshape(c0, x0) * x0 + _reshape(ct, xt) * xt, _reshape(var, xt)

    return fn


def _prev_right(abar, t):
    return torch.cat([abar.new_ones(1), abar[:-1]])[t]


_POSTERIOR_MISTAKES = [
    Mistake(
        "the coefficients of x0 and xt are swapped: x0 is multiplied by "
        "sqrt(alpha-bar_{t-1}) beta_t / (1 - alpha-bar_t), which is 1 at the first step "
        "(given x0 and x_1, x0 is known exactly) and small at large t.",
        _posterior_with(_prev_right, swap=True),
    ),
    Mistake(
        "off by one step: you used alpha-bar_t (alphas_cumprod[t]) where alpha-bar_{t-1} "
        "belongs. The prior q(x_{t-1} | x_0) has the alpha-bar of the step before: "
        "alphas_cumprod[t - 1] for code index t, and 1 at t = 0.",
        _posterior_with(lambda ab, t: ab[t]),
    ),
    Mistake(
        "right except at t = 0: there alphas_cumprod[t - 1] wraps around to the last entry "
        "(alpha-bar_T, close to 0 for a full schedule). Before the first step nothing has "
        "been multiplied yet, so alpha-bar_0 = 1: prepend a 1 to alphas_cumprod and index that.",
        _posterior_with(lambda ab, t: ab[t - 1]),
    ),
    Mistake(
        "your mean is right, but the variance of the posterior is "
        "beta-tilde_t = (1 - alpha-bar_{t-1}) / (1 - alpha-bar_t) * beta_t, not beta_t "
        "(beta_t is the forward step's variance; at t = 0 beta-tilde is 0 and beta is not).",
        _posterior_with(_prev_right, var_is_beta=True),
    ),
]


def check_posterior(fn: Callable, verbose: bool = True) -> CheckResult:
    """Exercise 2.1: ``fn(x0, xt, t, betas) -> (mean, variance)`` of q(x_{t-1} | x_t, x_0).

    ``x0`` and ``xt`` are [B, ...] (float64), ``t`` a long tensor [B] of code indices (each
    example its own step), ``betas`` the float64 schedule (length T). The mean is shaped like
    ``xt``; the variance either like ``xt`` or [B, 1, ..., 1].
    """
    return grade(
        "2.1 (posterior mean and variance)",
        fn,
        _posterior_reference,
        _cases("posterior"),
        _POSTERIOR_MISTAKES,
        verbose=verbose,
    )


# --------------------------------------------------------------------------- Exercise 2.2


def _x0_reference(xt, t, eps, betas):
    return GaussianDiffusion(betas).predict_x0_from_eps(xt, t, eps)


def _x0_with(signal: Callable, noise: Callable, sign: float = -1.0) -> Callable:
    """x0 = (xt + sign * noise(...) * eps) / signal(...), coefficients from (betas, abar, t)."""

    def fn(xt, t, eps, betas):
        b = betas.to(torch.float64)
        abar = torch.cumprod(1 - b, dim=0)
        s, n = _reshape(signal(b, abar, t), xt), _reshape(noise(b, abar, t), xt)
        return (xt + sign * n * eps) / s

    return fn


_X0_MISTAKES = [
    Mistake(
        "you used sqrt(alpha_t) where sqrt(alpha-bar_t) belongs: x_t = sqrt(alpha-bar_t) x0 + "
        "sqrt(1 - alpha-bar_t) eps jumps over all steps at once, so undo the product "
        "alpha-bar_t = alpha_1 ... alpha_t, not the last step's alpha_t alone.",
        _x0_with(lambda b, ab, t: (1 - b[t]).sqrt(), lambda b, ab, t: b[t].sqrt()),
    ),
    Mistake(
        "sign error: x_t = sqrt(alpha-bar_t) x0 + sqrt(1 - alpha-bar_t) eps, so solving for x0 "
        "*subtracts* the noise: x0 = (x_t - sqrt(1 - alpha-bar_t) eps) / sqrt(alpha-bar_t).",
        _x0_with(lambda b, ab, t: ab[t].sqrt(), lambda b, ab, t: (1 - ab[t]).sqrt(), sign=1.0),
    ),
    Mistake(
        "the noise enters x_t with its standard deviation sqrt(1 - alpha-bar_t), not with the "
        "variance 1 - alpha-bar_t.",
        _x0_with(lambda b, ab, t: ab[t].sqrt(), lambda b, ab, t: 1 - ab[t]),
    ),
    Mistake(
        "off by one step: code index t is already the paper's step t+1, so x_t uses "
        "alphas_cumprod[t], not alphas_cumprod[t - 1] (which at t = 0 even wraps around).",
        _x0_with(lambda b, ab, t: ab[t - 1].sqrt(), lambda b, ab, t: (1 - ab[t - 1]).sqrt()),
    ),
]


def check_predict_x0_from_eps(fn: Callable, verbose: bool = True) -> CheckResult:
    """Exercise 2.2: ``fn(xt, t, eps, betas) -> x0``, eq. 4 solved for x0.

    ``xt`` and ``eps`` are [B, ...] (float64), ``t`` a long tensor [B] of code indices,
    ``betas`` the float64 schedule (length T).
    """
    return grade(
        "2.2 (x0 from x_t and eps)",
        fn,
        _x0_reference,
        _cases("x0"),
        _X0_MISTAKES,
        verbose=verbose,
    )
