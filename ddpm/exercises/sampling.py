"""Checkers for chapter 8, sampling.

- Exercise 8.1, :func:`check_reverse_step`: one ancestral step x_t -> x_{t-1} of Algorithm 2,
  the mean of eq. 11 from the model's noise prediction plus sigma_t z, with sigma_t^2 = beta_t
  or beta-tilde_t, and no noise at the last step (code index t = 0).
- Exercise 8.2, :func:`check_ddim_step`: one deterministic DDIM step (eta = 0) from code index
  t to an earlier t_prev (Song et al. 2021, eq. 12), with the predicted x0 clipped to [-1, 1]
  and the noise re-derived from the clipped x0.

Both learner functions take the schedule as a float64 tensor ``betas`` (length T). Code index
``t`` in ``0..T-1`` is the paper's step ``t + 1``: ``betas[t]`` is beta_{t+1} and
``alphas_cumprod[t]`` alpha-bar_{t+1}; the alpha-bar before the first step is 1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..diffusion import GaussianDiffusion
from ..schedules import cosine_beta_schedule, linear_beta_schedule
from . import CheckResult, Mistake, grade

__all__ = ["check_ddim_step", "check_reverse_step"]

VARIANCES = {"beta": "fixed_large", "beta_tilde": "fixed_small"}

# Large steps: every step changes alpha-bar visibly, so beta and beta-tilde differ at every step
# and an index off by one cannot hide behind the tiny betas of the paper's schedule.
_SHORT_BETAS = torch.tensor([0.2, 0.4, 0.1, 0.6, 0.9], dtype=torch.float64)


def _reshape(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-example values [B] shaped [B, 1, ..., 1] to broadcast against x."""
    return values.reshape(-1, *([1] * (x.ndim - 1)))


def _constant_model(eps: torch.Tensor):
    """A "model" that returns the given noise prediction whatever it is asked."""

    def model(x, t):
        return eps

    return model


# --------------------------------------------------------------------------- Exercise 8.1


def _reverse_cases() -> list[tuple]:
    """(xt, t, eps, noise, betas, variance): x_t from q_sample, an imperfect eps prediction."""
    gen = torch.Generator().manual_seed(8)
    setups = [
        (linear_beta_schedule(1000), (6, 1, 2, 2), [999, 0, 500, 1, 0, 10], "beta"),
        (linear_beta_schedule(1000), (6, 1, 2, 2), [999, 0, 500, 1, 0, 10], "beta_tilde"),
        (cosine_beta_schedule(50), (4, 3), [49, 0, 25, 1], "beta"),
        (_SHORT_BETAS.clone(), (5, 2), [0, 1, 2, 3, 4], "beta_tilde"),
        (_SHORT_BETAS.clone(), (5, 2), [4, 3, 2, 1, 0], "beta"),
    ]
    cases = []
    for betas, shape, steps, variance in setups:
        t = torch.tensor(steps, dtype=torch.long)
        x0 = torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1
        true_eps = torch.randn(shape, generator=gen, dtype=torch.float64)
        xt = GaussianDiffusion(betas).q_sample(x0, t, true_eps)
        eps = true_eps + 0.3 * torch.randn(shape, generator=gen, dtype=torch.float64)
        noise = torch.randn(shape, generator=gen, dtype=torch.float64)
        cases.append((xt, t, eps, noise, betas, variance))
    return cases


def _reverse_reference(xt, t, eps, noise, betas, variance):
    diffusion = GaussianDiffusion(betas, "eps", VARIANCES[variance])
    return diffusion.p_sample(_constant_model(eps), xt, t, noise=noise, clip_denoised=False)


def _reverse_with(*, signal="alpha", eps_coef="sqrt", var=None, std=True, last_noise=False,
                  shift=0):  # fmt: skip
    """Eq. 11 plus sigma_t z, built from the pieces given (defaults: the right ones).

    ``signal``: "alpha" or "alpha_bar" under the square root that divides the mean;
    ``eps_coef``: "sqrt" (beta_t / sqrt(1 - a-bar_t)) or "nosqrt" (beta_t / (1 - a-bar_t));
    ``var``: None (as asked), "beta" or "beta_tilde" (always that one); ``std``: noise times
    sigma_t (True) or times sigma_t^2; ``last_noise``: add noise at t = 0 too; ``shift``: index
    the tables at t - shift (with Python's wrap-around at -1).
    """

    def fn(xt, t, eps, noise, betas, variance):
        b = betas.to(torch.float64)
        abar = torch.cumprod(1 - b, dim=0)
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        i = t - shift
        beta, alpha, ab, ab_prev = b[i], 1 - b[i], abar[i], abar_prev[i]
        root = alpha.sqrt() if signal == "alpha" else ab.sqrt()
        coef = beta / (1 - ab).sqrt() if eps_coef == "sqrt" else beta / (1 - ab)
        mean = (xt - _reshape(coef, xt) * eps) / _reshape(root, xt)
        kind = var or variance
        sigma2 = beta if kind == "beta" else (1 - ab_prev) / (1 - ab) * beta
        scale = sigma2.sqrt() if std else sigma2
        mask = torch.ones_like(scale) if last_noise else (t > 0).to(scale.dtype)
        return mean + _reshape(mask * scale, xt) * noise

    return fn


_REVERSE_MISTAKES = [
    Mistake("the mean divides by sqrt(alpha_t), one step's alpha, not by sqrt(alpha-bar_t): a "
            "reverse step undoes one forward step, x_{t-1} -> x_t, which scaled by "
            "sqrt(alpha_t) = sqrt(1 - beta_t).", _reverse_with(signal="alpha_bar")),
    Mistake("no noise at the last step: where t = 0 (the paper's t = 1) return the mean itself; "
            "Algorithm 2 sets z = 0 there.", _reverse_with(last_noise=True)),
    Mistake("you used sigma_t^2 = beta_t where beta-tilde_t = (1 - alpha-bar_{t-1}) / "
            "(1 - alpha-bar_t) * beta_t is asked (variance='beta_tilde').",
            _reverse_with(var="beta")),
    Mistake("you used sigma_t^2 = beta-tilde_t where beta_t is asked (variance='beta').",
            _reverse_with(var="beta_tilde")),
    Mistake("the noise is scaled by the variance sigma_t^2; scale it by the standard deviation "
            "sigma_t = sqrt(sigma_t^2).", _reverse_with(std=False)),
    Mistake("the coefficient of eps is beta_t / sqrt(1 - alpha-bar_t): you forgot the square "
            "root.", _reverse_with(eps_coef="nosqrt")),
    Mistake("off by one step: code index t is already the paper's step t+1, so use betas[t] and "
            "alphas_cumprod[t], not [t - 1] (which at t = 0 wraps around to the last step).",
            _reverse_with(shift=1)),
]  # fmt: skip


def check_reverse_step(fn: Callable, verbose: bool = True) -> CheckResult:
    """Exercise 8.1: ``fn(xt, t, eps, noise, betas, variance) -> x_{t-1}``.

    ``xt``, ``eps`` (the model's noise prediction) and ``noise`` (z) are [B, ...] float64, ``t``
    a long tensor [B] of code indices (each example its own step, 0 included), ``betas`` the
    float64 schedule, ``variance`` "beta" (sigma_t^2 = beta_t) or "beta_tilde" (beta-tilde_t).
    Compared with ``GaussianDiffusion.p_sample`` without clipping.
    """
    return grade("8.1 (one reverse step)", fn, _reverse_reference, _reverse_cases(),
                 _REVERSE_MISTAKES, verbose=verbose)  # fmt: skip


# --------------------------------------------------------------------------- Exercise 8.2


def _ddim_cases() -> list[tuple]:
    """(xt, t, t_prev, eps, betas): eps predictions poor enough that x0-hat leaves [-1, 1]."""
    gen = torch.Generator().manual_seed(80)
    setups = [
        (linear_beta_schedule(1000), (4, 1, 3, 3), 999, 949),
        (linear_beta_schedule(1000), (4, 1, 3, 3), 499, 299),
        (linear_beta_schedule(1000), (4, 1, 3, 3), 49, -1),
        (linear_beta_schedule(1000), (4, 1, 3, 3), 0, -1),
        (cosine_beta_schedule(50), (3, 8), 49, 39),
        (_SHORT_BETAS.clone(), (3, 8), 4, 1),
    ]
    cases = []
    for betas, shape, t, t_prev in setups:
        x0 = (torch.rand(shape, generator=gen, dtype=torch.float64) * 2.4 - 1.2).clamp(-1, 1)
        true_eps = torch.randn(shape, generator=gen, dtype=torch.float64)
        xt = GaussianDiffusion(betas).q_sample(x0, t, true_eps)
        eps = true_eps + 0.5 * torch.randn(shape, generator=gen, dtype=torch.float64)
        cases.append((xt, t, t_prev, eps, betas))
    return cases


def _ddim_reference(xt, t, t_prev, eps, betas):
    diffusion = GaussianDiffusion(betas)
    coefs = diffusion._ddim_coefs([t], [t_prev], 0.0, torch.promote_types(xt.dtype, torch.float32))
    x_prev, _ = diffusion._ddim_step(_constant_model(eps), xt, t, coefs[0], True, None)
    return x_prev


def _ddim_with(*, clip=True, rederive=True, prev="right"):
    """A DDIM (eta = 0) step built from the pieces given (defaults: the right ones).

    ``prev``: how alpha-bar at t_prev is found: "right" (1 at t_prev = -1), "adjacent"
    (alphas_cumprod[t - 1], the step before t, not t_prev) or "wrap" (alphas_cumprod[t_prev]
    with Python's wrap-around at -1).
    """

    def fn(xt, t, t_prev, eps, betas):
        abar = torch.cumprod(1 - betas.to(torch.float64), dim=0)
        a = abar[t]
        if prev == "adjacent":
            a_prev = abar[t - 1] if t > 0 else abar.new_ones(())
        elif prev == "wrap":
            a_prev = abar[t_prev]
        else:
            a_prev = abar[t_prev] if t_prev >= 0 else abar.new_ones(())
        x0 = (xt - (1 - a).sqrt() * eps) / a.sqrt()
        if clip:
            x0 = x0.clamp(-1, 1)
        if rederive:
            eps = (xt - a.sqrt() * x0) / (1 - a).sqrt()
        return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps

    return fn


_DDIM_MISTAKES = [
    Mistake("after clipping x0-hat, re-derive the noise from it, eps = (x_t - sqrt(alpha-bar_t) "
            "x0-hat) / sqrt(1 - alpha-bar_t); with the model's raw eps the step points to an x0 "
            "that is not the clipped one.", _ddim_with(rederive=False)),
    Mistake("the predicted x0 must be clipped to [-1, 1] before it is used (clip_denoised=True).",
            _ddim_with(clip=False, rederive=False)),
    Mistake("the step goes to t_prev, not to t - 1: use alpha-bar at t_prev "
            "(alphas_cumprod[t_prev]); DDIM skips the steps in between.",
            _ddim_with(prev="adjacent")),
    Mistake("at t_prev = -1 (the clean data) alpha-bar is 1; alphas_cumprod[-1] wraps around to "
            "the last step, alpha-bar_T, which is close to 0.", _ddim_with(prev="wrap")),
]  # fmt: skip


def check_ddim_step(fn: Callable, verbose: bool = True) -> CheckResult:
    """Exercise 8.2: ``fn(xt, t, t_prev, eps, betas) -> x at t_prev`` (DDIM, eta = 0, clipped).

    ``xt`` and ``eps`` are [B, ...] float64; ``t`` and ``t_prev`` are Python ints, code indices
    with ``t_prev < t`` (``t_prev = -1``: the final step, to the clean data, where alpha-bar is
    1); ``betas`` the float64 schedule. Compared with the step of ``GaussianDiffusion.ddim_sample``.
    """
    return grade("8.2 (one DDIM step)", fn, _ddim_reference, _ddim_cases(), _DDIM_MISTAKES,
                 verbose=verbose)  # fmt: skip
