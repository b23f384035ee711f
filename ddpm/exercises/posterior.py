"""Checkers for chapter 2, the reverse process and the posterior.

- Exercise 2.1, :func:`check_posterior`: the mean mu-tilde_t and variance beta-tilde_t of the
  forward process posterior q(x_{t-1} | x_t, x_0) (eqs. 6-7 of Ho et al. 2020).
- Exercise 2.2, :func:`check_posterior_skip`: the posterior q(x_s | x_t, x_0) over several
  steps, s < t, which samplers that skip steps use.

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

__all__ = ["check_posterior", "check_posterior_skip"]

# Large steps: every step changes alpha-bar visibly, so an off-by-one index cannot hide behind
# the tiny betas of the paper's schedule, and beta and beta-tilde differ at every step.
_SHORT_BETAS = torch.tensor([0.2, 0.4, 0.1, 0.6, 0.9], dtype=torch.float64)


def _reshape(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-example values [B] shaped [B, 1, ..., 1] to broadcast against x."""
    return values.reshape(-1, *([1] * (x.ndim - 1)))


def _cases() -> list[tuple]:
    """Inputs for exercise 2.1: (x0, x_t, t, betas) with realistic x_t = q_sample(x0, t, eps)."""
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
        cases.append((x0, xt, t, betas))
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
        _cases(),
        _POSTERIOR_MISTAKES,
        verbose=verbose,
    )


# --------------------------------------------------------------------------- Exercise 2.2


def _skip_cases() -> list[tuple]:
    """(x0, xt, t, s, betas): x_t = q_sample(x0, t, eps), s from -1 (the clean data) to t - 1."""
    gen = torch.Generator().manual_seed(22)
    schedules = [
        (linear_beta_schedule(1000), (6, 3), [999, 999, 500, 10, 1, 0], [-1, 499, 499, 3, 0, -1]),
        (cosine_beta_schedule(50), (4, 1, 3, 3), [49, 20, 25, 1], [0, 19, -1, 0]),
        (_SHORT_BETAS.clone(), (5,), [4, 4, 3, 2, 1], [-1, 1, 2, 0, 0]),
    ]
    cases = []
    for betas, shape, t_steps, s_steps in schedules:
        t = torch.tensor(t_steps, dtype=torch.long)
        s = torch.tensor(s_steps, dtype=torch.long)
        x0 = torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1
        eps = torch.randn(shape, generator=gen, dtype=torch.float64)
        xt = GaussianDiffusion(betas).q_sample(x0, t, eps)
        cases.append((x0, xt, t, s, betas))
    return cases


def _abar_at(abar: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """alpha-bar at code indices i, with alpha-bar = 1 at i = -1 (the clean data)."""
    return torch.cat([abar.new_ones(1), abar])[i + 1]


def _skip_reference(x0, xt, t, s, betas):
    """Gaussian conditioning of the pair (x_s, x_t) given x0: a derivation independent of the
    completing-the-square one the chapter does for s = t - 1."""
    abar = schedule_quantities(betas).alphas_cumprod
    ab_t, ab_s = _reshape(_abar_at(abar, t), xt), _reshape(_abar_at(abar, s), xt)
    cov = (ab_t / ab_s).sqrt() * (1 - ab_s)  # Cov(x_s, x_t | x0), per coordinate
    var_t = 1 - ab_t  # Var(x_t | x0)
    mean = ab_s.sqrt() * x0 + cov / var_t * (xt - ab_t.sqrt() * x0)
    return mean, (1 - ab_s) - cov**2 / var_t


def _skip_with(*, one_step: bool = False, wrap: bool = False, swap: bool = False,
               var_is_beta: bool = False) -> Callable:  # fmt: skip
    """q(x_s | x_t, x0) from the chapter's form, with one flaw."""

    def fn(x0, xt, t, s, betas):
        b = betas.to(torch.float64)
        abar = torch.cumprod(1 - b, dim=0)
        ab_t = abar[t]
        ab_s = abar[s] if wrap else _abar_at(abar, s)
        a_ts = (1 - b[t]) if one_step else ab_t / ab_s  # alpha_{t|s}
        b_ts = 1 - a_ts  # beta_{t|s}
        c0 = ab_s.sqrt() * b_ts / (1 - ab_t)
        ct = a_ts.sqrt() * (1 - ab_s) / (1 - ab_t)
        if swap:
            c0, ct = ct, c0
        var = b_ts if var_is_beta else (1 - ab_s) / (1 - ab_t) * b_ts
        return _reshape(c0, x0) * x0 + _reshape(ct, xt) * xt, _reshape(var, xt)

    return fn


_SKIP_MISTAKES = [
    Mistake(
        "you put alpha-bar_s in place of alpha-bar_{t-1} but kept the one-step alpha_t and "
        "beta_t. From step s to step t the forward process scales by "
        "alpha_{t|s} = alpha-bar_t / alpha-bar_s and adds variance beta_{t|s} = 1 - alpha_{t|s}: "
        "use those (they are alpha_t and beta_t only when s = t - 1).",
        _skip_with(one_step=True),
    ),
    Mistake(
        "right except where s = -1: alphas_cumprod[-1] wraps around to the last entry. s = -1 "
        "is the clean data, where alpha-bar = 1 (then the mean is x0 and the variance 0).",
        _skip_with(wrap=True),
    ),
    Mistake(
        "the coefficients of x0 and x_t are swapped: x0 gets sqrt(alpha-bar_s) beta_{t|s} / "
        "(1 - alpha-bar_t), which is 1 at s = -1, where x_s is x0 itself.",
        _skip_with(swap=True),
    ),
    Mistake(
        "your mean is right, but the variance is (1 - alpha-bar_s) / (1 - alpha-bar_t) * "
        "beta_{t|s}, not beta_{t|s} (the forward jump's variance; knowing x0 shrinks it).",
        _skip_with(var_is_beta=True),
    ),
]


def check_posterior_skip(fn: Callable, verbose: bool = True) -> CheckResult:
    """Exercise 2.2: ``fn(x0, xt, t, s, betas) -> (mean, variance)`` of q(x_s | x_t, x_0).

    ``x0`` and ``xt`` are [B, ...] (float64), ``t`` and ``s`` long tensors [B] of code indices
    with ``-1 <= s < t`` (``s = -1``: the clean data), ``betas`` the float64 schedule. The mean
    is shaped like ``xt``; the variance like ``xt`` or [B, 1, ..., 1].
    """
    return grade(
        "2.2 (the posterior over several steps)",
        fn,
        _skip_reference,
        _skip_cases(),
        _SKIP_MISTAKES,
        verbose=verbose,
    )
