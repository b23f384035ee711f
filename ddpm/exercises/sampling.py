"""Checkers for chapter 8, sampling.

- Exercise 8.1, :func:`check_reverse_step`: one ancestral step x_t -> x_{t-1} of Algorithm 2,
  the mean of eq. 11 from the model's noise prediction plus sigma_t z, with sigma_t^2 = beta_t
  or beta-tilde_t, and no noise at the last step (code index t = 0).
- Exercise 8.2, :func:`check_ddim_invert`: deterministic DDIM inversion, the eta = 0 update
  run forwards from x0 to x_T (Song et al. 2021, Section 4.3), as ``ddim_encode`` does it.

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

__all__ = ["check_ddim_invert", "check_reverse_step"]

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


def _toy_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A fixed nonlinear "network": its output depends on x and, visibly, on the step t."""
    tt = _reshape(t.to(x.dtype), x)
    return torch.tanh(0.7 * x + 0.002 * tt) + 0.1 * x.flip(-1)


def _invert_cases() -> list[tuple]:
    """(model, x0, betas, timesteps): increasing code indices, the last one T - 1 (an int n:
    the n evenly spaced steps of ``ddim_sample``, reversed)."""
    gen = torch.Generator().manual_seed(82)
    setups = [
        (linear_beta_schedule(1000), (3, 1, 4, 4), 9),
        (cosine_beta_schedule(50), (2, 1, 2, 2), 7),
        (linear_beta_schedule(1000), (2, 5), [4, 500, 999]),
        (cosine_beta_schedule(50), (3, 8), [0, 1, 2, 10, 30, 49]),
        (_SHORT_BETAS.clone(), (4, 3), [0, 1, 2, 3, 4]),
        (_SHORT_BETAS.clone(), (4, 3), [2, 4]),
    ]
    cases = []
    for betas, shape, timesteps in setups:
        if isinstance(timesteps, int):
            timesteps = GaussianDiffusion(betas)._ddim_steps(timesteps)[::-1]
        x0 = torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1
        cases.append((_toy_model, x0, betas, timesteps))
    return cases


def _invert_with(*, eps_at: str = "to", x0_from: str = "from", clip: bool = False,
                 wrap: bool = False):  # fmt: skip
    """Deterministic DDIM inversion x0 -> x at timesteps[-1], built from the pieces given
    (defaults: the right ones, the update of ``GaussianDiffusion.ddim_encode``)."""

    def fn(model, x0, betas, timesteps):
        abar = torch.cumprod(1 - betas.to(torch.float64), dim=0)
        x, t_from = x0, -1  # the clean data: alpha-bar = 1
        for t_to in timesteps:
            a_from = abar[t_from] if (t_from >= 0 or wrap) else abar.new_ones(())
            a_to = abar[t_to]
            t_eval = t_to if eps_at == "to" else max(t_from, 0)
            eps = model(x, torch.full((x.shape[0],), t_eval, dtype=torch.long))
            a = a_from if x0_from == "from" else a_to
            x0_hat = (x - (1 - a).sqrt() * eps) / a.sqrt()
            if clip:
                x0_hat = x0_hat.clamp(-1, 1)
            x = a_to.sqrt() * x0_hat + (1 - a_to).sqrt() * eps
            t_from = t_to
        return x

    return fn


_invert_reference = _invert_with()

_INVERT_MISTAKES = [
    Mistake("evaluate the network at the step you move to, eps_theta(x, t_to): x is still at "
            "the noise level of t_from, but inversion assumes eps changes little over one step, "
            "and at the first step, from the clean data, there is no t_from to give the network "
            "(GaussianDiffusion.ddim_encode does the same).", _invert_with(eps_at="from")),
    Mistake("x0-hat comes from the x you have, which sits at t_from: divide by sqrt(alpha-bar) "
            "at t_from (1 for the clean data), not at t_to.", _invert_with(x0_from="to")),
    Mistake("don't clip x0-hat when encoding: clipping throws information away, so the decoder "
            "cannot run the steps backwards to the same image.", _invert_with(clip=True)),
    Mistake("at the first step x is the clean data, where alpha-bar is 1; alphas_cumprod[-1] "
            "wraps around to the last step, alpha-bar_T, close to 0.", _invert_with(wrap=True)),
]  # fmt: skip


def check_ddim_invert(fn: Callable, verbose: bool = True) -> CheckResult:
    """Exercise 8.2: ``fn(model, x0, betas, timesteps) -> x at timesteps[-1]``, deterministic
    DDIM inversion (the eta = 0 update run from the clean data up through ``timesteps``).

    ``model(x, t)`` predicts the noise (``t`` a long tensor [B]); ``x0`` is [B, ...] float64;
    ``timesteps`` an increasing list of code indices; ``betas`` the float64 schedule.
    """
    return grade("8.2 (DDIM inversion)", fn, _invert_reference, _invert_cases(),
                 _INVERT_MISTAKES, verbose=verbose)  # fmt: skip
