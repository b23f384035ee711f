"""Checkers for chapter 11, the score-matching and Langevin view.

- Exercise 11.1, :func:`check_mixture_score`: the score grad log q_t(x_t) of the noised marginal
  of a Gaussian mixture x0 ~ sum_k pi_k N(c_k, s^2 I), which is again a Gaussian mixture.
- Exercise 11.2, :func:`check_langevin_step`: one step of annealed Langevin dynamics at level t
  (Song & Ermon 2019, Algorithm 1), driven by a noise prediction through
  score = -eps / sqrt(1 - alpha-bar_t) (Ho et al. 2020, Section 3.2), with the step size
  delta_t = eta (1 - alpha-bar_t) proportional to the noise variance of the level.

Code index ``t`` in ``0..T-1`` is the paper's step ``t + 1``: ``alphas_cumprod[t]`` is
alpha-bar_{t+1}, the product of the first ``t + 1`` alphas.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..schedules import cosine_beta_schedule, linear_beta_schedule
from . import CheckResult, Mistake, grade

__all__ = ["check_langevin_step", "check_mixture_score"]

# Large steps: every step visibly changes alpha-bar, so an off-by-one index cannot hide.
_SHORT_BETAS = torch.tensor([0.1, 0.3, 0.5, 0.2, 0.9], dtype=torch.float64)


def _abar_tables() -> list[torch.Tensor]:
    return [
        torch.cumprod(1 - b, dim=0)
        for b in (linear_beta_schedule(100), cosine_beta_schedule(50), _SHORT_BETAS.clone())
    ]


def _col(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A [B] table lookup shaped [B, 1, ..., 1] to broadcast against x, in x's dtype."""
    return values.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def _steps(T: int, batch: int) -> torch.Tensor:
    """The edge steps 0 and T-1 and a few in between."""
    base = [0, T - 1, T // 2, 1, T // 3, 0, T - 1, T // 4]
    return torch.tensor([base[i % len(base)] for i in range(batch)], dtype=torch.long)


# --------------------------------------------------------------------------- Exercise 11.1


def _mixture_cases() -> list[tuple]:
    """(xt, t, alphas_cumprod, centers, log_weights, s): unequal weights, s neither 0 nor 1."""
    gen = torch.Generator().manual_seed(110)
    cases = []
    for abar, (batch, k, d), s in zip(
        _abar_tables(), [(8, 3, 2), (6, 4, 3), (5, 2, 2)], [0.3, 0.6, 0.15], strict=True
    ):
        centers = 1.5 * torch.randn(k, d, generator=gen, dtype=torch.float64)
        log_w = torch.log_softmax(torch.randn(k, generator=gen, dtype=torch.float64), dim=0)
        t = _steps(len(abar), batch)
        xt = torch.randn(batch, d, generator=gen, dtype=torch.float64) * 1.2
        cases.append((xt, t, abar, centers, log_w, s))
    return cases


def _mixture_log_density(x, abar, centers, log_weights, s):
    """log q_t(x) for x0 ~ sum_k pi_k N(c_k, s^2 I): a mixture of N(sqrt(abar) c_k, v I)."""
    d = x.shape[-1]
    v = abar * s**2 + 1 - abar  # [B, 1]
    sq = ((x[:, None, :] - abar.sqrt()[:, :, None] * centers) ** 2).sum(-1)  # [B, K]
    log_comp = -0.5 * sq / v - 0.5 * d * torch.log(2 * torch.pi * v)
    return torch.logsumexp(log_weights + log_comp, dim=1)


def _mixture_score_reference(xt, t, alphas_cumprod, centers, log_weights, s):
    """The gradient of the log density by automatic differentiation (not the closed form)."""
    abar = alphas_cumprod.to(torch.float64)[t][:, None]
    x = xt.detach().to(torch.float64).requires_grad_(True)
    with torch.enable_grad():
        logq = _mixture_log_density(x, abar, centers.to(torch.float64), log_weights, s)
        (grad,) = torch.autograd.grad(logq.sum(), x)
    return grad


def _score_with(*, var="right", shift=True, weights="posterior", out="score", t_shift=0):
    """The closed-form mixture score built from the given pieces (defaults: the right ones)."""

    def fn(xt, t, alphas_cumprod, centers, log_weights, s):
        abar = alphas_cumprod.to(torch.float64)[t + t_shift][:, None]  # [B, 1]
        v = {"right": abar * s**2 + 1 - abar, "noise": 1 - abar, "s": abar * s + 1 - abar}[var]
        means = abar.sqrt()[:, :, None] * centers if shift else centers.expand(len(xt), -1, -1)
        diff = xt[:, None, :] - means  # [B, K, d]
        logits = log_weights - 0.5 * (diff**2).sum(-1) / v
        if weights == "uniform":
            logits = -0.5 * (diff**2).sum(-1) / v
        w = torch.softmax(logits, dim=1)
        if weights == "prior":
            w = log_weights.exp().expand_as(w)
        score = -(w[:, :, None] * diff).sum(1) / v
        return -(1 - abar).sqrt() * score if out == "eps" else score

    return fn


_MIXTURE_MISTAKES = [
    Mistake("each component of q_t has variance alpha-bar_t s^2 + 1 - alpha-bar_t: the data's "
            "own spread s^2, shrunk, plus the noise; you used the noise variance "
            "1 - alpha-bar_t alone, which is right only for point masses (s = 0).",
            _score_with(var="noise")),
    Mistake("s is the components' standard deviation: their variance in q_t is alpha-bar_t s^2 "
            "+ 1 - alpha-bar_t, with s squared.", _score_with(var="s")),
    Mistake("the centres move with the data: component k of q_t is centred at "
            "sqrt(alpha-bar_t) c_k, not at c_k.", _score_with(shift=False)),
    Mistake("you dropped the mixture weights pi_k from the responsibilities: the posterior "
            "weight of component k is proportional to pi_k N(x_t; sqrt(alpha-bar_t) c_k, v_t "
            "I).", _score_with(weights="uniform")),
    Mistake("the components' scores are averaged with the posterior weights w_k(x_t) (the "
            "softmax of log pi_k - |x_t - sqrt(alpha-bar_t) c_k|^2 / (2 v_t)), not with the "
            "prior weights pi_k: the mixture's score is E[grad log q(x_t | k) | x_t].",
            _score_with(weights="prior")),
    Mistake("you returned the optimal noise prediction E[eps | x_t] = -sqrt(1 - alpha-bar_t) "
            "times the score; the exercise asks for the score itself.", _score_with(out="eps")),
    Mistake("off by one step: code index t is already the paper's step t+1, so use "
            "alphas_cumprod[t], not [t - 1] (which at t = 0 wraps around to the last step).",
            _score_with(t_shift=-1)),
]  # fmt: skip


def check_mixture_score(fn: Callable, verbose: bool = True) -> CheckResult:
    """Exercise 11.1: ``fn(xt, t, alphas_cumprod, centers, log_weights, s) -> score``.

    ``xt`` is [B, d] float64, ``t`` a long tensor [B] of code indices, ``alphas_cumprod`` the
    float64 table alpha-bar, ``centers`` [K, d] the components' means c_k, ``log_weights`` [K]
    their log probabilities log pi_k (summing to one), ``s`` their standard deviation. Returns
    grad log q_t(x_t), [B, d], compared with automatic differentiation of log q_t.
    """
    return grade("11.1 (score of a noised mixture)", fn, _mixture_score_reference,
                 _mixture_cases(), _MIXTURE_MISTAKES, atol=1e-8, rtol=1e-6,
                 verbose=verbose)  # fmt: skip


# --------------------------------------------------------------------------- Exercise 11.2


def _langevin_cases() -> list[tuple]:
    """(x, t, eps, noise, alphas_cumprod, eta): images and points, several step sizes."""
    gen = torch.Generator().manual_seed(111)
    cases = []
    for abar, shape, eta in zip(
        _abar_tables(), [(6, 1, 3, 3), (8, 2), (5, 4)], [0.3, 1.0, 0.05], strict=True
    ):
        t = _steps(len(abar), shape[0])
        x, eps, noise = (torch.randn(shape, generator=gen, dtype=torch.float64) for _ in "xyz")
        cases.append((x, t, eps, noise, abar, eta))
    return cases


def _langevin_reference(x, t, eps, noise, alphas_cumprod, eta):
    """x + delta/2 * score + sqrt(delta) * z with score = -eps / sqrt(1 - abar_t)."""
    abar = _col(alphas_cumprod.to(torch.float64)[t], x)
    score = -eps / (1 - abar).sqrt()
    delta = eta * (1 - abar)
    return x + 0.5 * delta * score + delta.sqrt() * noise


def _langevin_with(*, score="right", drift=0.5, noise_std=True, step="right", t_shift=0):
    """An annealed Langevin step built from the given pieces (defaults: the right ones)."""

    def fn(x, t, eps, noise, alphas_cumprod, eta):
        abar = _col(alphas_cumprod.to(torch.float64)[t + t_shift], x)
        s = {
            "right": -eps / (1 - abar).sqrt(),
            "eps": eps,
            "times": -eps * (1 - abar).sqrt(),
        }[score]
        delta = {"right": eta * (1 - abar), "const": eta * torch.ones_like(abar),
                 "abar": eta * abar}[step]  # fmt: skip
        return x + drift * delta * s + (delta.sqrt() if noise_std else delta) * noise

    return fn


_LANGEVIN_MISTAKES = [
    Mistake("the score is minus the noise prediction divided by sqrt(1 - alpha-bar_t): "
            "s = -eps / sqrt(1 - alpha-bar_t). With eps itself as the score, the step climbs "
            "the wrong way, away from the data.", _langevin_with(score="eps")),
    Mistake("you multiplied the noise prediction by sqrt(1 - alpha-bar_t); the score divides "
            "by it: s = -eps / sqrt(1 - alpha-bar_t) (the noise of x_t has standard deviation "
            "sqrt(1 - alpha-bar_t), and the score of a Gaussian is -(x - mean) / variance).",
            _langevin_with(score="times")),
    Mistake("the drift of a Langevin step is delta / 2 times the score, not delta: the factor "
            "1/2 pairs with noise of variance delta, so that the step leaves q_t invariant.",
            _langevin_with(drift=1.0)),
    Mistake("the noise is scaled by sqrt(delta), the standard deviation, not by the variance "
            "delta.", _langevin_with(noise_std=False)),
    Mistake("the step size is eta (1 - alpha-bar_t), proportional to the noise variance of "
            "the level as in Song & Ermon's sampler; you used eta at every level.",
            _langevin_with(step="const")),
    Mistake("the step size is eta (1 - alpha-bar_t), the noise variance of the level, not "
            "eta alpha-bar_t.", _langevin_with(step="abar")),
    Mistake("off by one step: code index t is already the paper's step t+1, so use "
            "alphas_cumprod[t], not [t - 1] (which at t = 0 wraps around to the last step).",
            _langevin_with(t_shift=-1)),
]  # fmt: skip


def check_langevin_step(fn: Callable, verbose: bool = True) -> CheckResult:
    """Exercise 11.2: ``fn(x, t, eps, noise, alphas_cumprod, eta) -> x after one step``.

    ``x``, ``eps`` (the noise prediction at ``x``) and ``noise`` (z) are [B, ...] float64, ``t``
    a long tensor [B] of code indices, ``alphas_cumprod`` the float64 table, ``eta`` a positive
    number. The step is x + delta/2 * score + sqrt(delta) * z with delta = eta (1 - alpha-bar_t)
    and score = -eps / sqrt(1 - alpha-bar_t).
    """
    return grade("11.2 (one annealed Langevin step)", fn, _langevin_reference,
                 _langevin_cases(), _LANGEVIN_MISTAKES, atol=1e-8, rtol=1e-6,
                 verbose=verbose)  # fmt: skip
