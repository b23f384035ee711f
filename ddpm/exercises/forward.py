"""Checkers for chapter 1, the forward process.

- Exercise 1.1, :func:`check_q_sample`: draw x_t ~ q(x_t | x_0) in closed form (eq. 4 of Ho et
  al. 2020) for a batch of code indices t, given alpha-bar as a table.
- Exercise 1.2, :func:`check_alpha_bar_snr`: alpha-bar_t and the signal-to-noise ratio
  SNR_t = alpha-bar_t / (1 - alpha-bar_t) from the betas.

Code index ``t`` in ``0..T-1`` is the paper's step ``t + 1``: ``alphas_cumprod[t]`` is
alpha-bar_{t+1}, the product of the first ``t + 1`` alphas.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..diffusion import GaussianDiffusion
from ..schedules import cosine_beta_schedule, linear_beta_schedule, schedule_quantities
from . import CheckResult, Mistake, grade

__all__ = ["check_q_sample", "check_alpha_bar_snr"]

# A short schedule with large steps: every step visibly changes alpha-bar, so an off-by-one
# index cannot hide behind the tiny betas of the paper's schedule.
_SHORT_BETAS = torch.tensor([0.1, 0.3, 0.5, 0.2, 0.9], dtype=torch.float64)


def _schedules() -> list[torch.Tensor]:
    return [linear_beta_schedule(1000), cosine_beta_schedule(1000), _SHORT_BETAS.clone()]


# --------------------------------------------------------------------------- Exercise 1.1


def _betas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    abar = alphas_cumprod.to(torch.float64)
    prev = torch.cat([abar.new_ones(1), abar[:-1]])
    return 1.0 - abar / prev


def _reshape(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, *([1] * (x.ndim - 1)))


def _q_sample_reference(x0, t, noise, alphas_cumprod):
    diffusion = GaussianDiffusion(_betas_from_alphas_cumprod(alphas_cumprod))
    return diffusion.q_sample(x0, t, noise)


def _q_sample_with(mean_coef: Callable, noise_coef: Callable) -> Callable:
    """A q_sample that computes its two coefficients from (alphas_cumprod, t) as given."""

    def fn(x0, t, noise, alphas_cumprod):
        abar = alphas_cumprod.to(torch.float64)
        a = _reshape(mean_coef(abar, t), x0)
        b = _reshape(noise_coef(abar, t), x0)
        return a * x0 + b * noise

    return fn


def _alphas(abar: torch.Tensor) -> torch.Tensor:
    return 1.0 - _betas_from_alphas_cumprod(abar)


_Q_SAMPLE_MISTAKES = [
    Mistake(
        "you used sqrt(alpha_t), the one-step factor, where sqrt(alpha-bar_t) belongs: "
        "q(x_t | x_0) jumps over all steps 1..t at once, so it needs the product "
        "alpha-bar_t = alpha_1 ... alpha_t (alphas_cumprod[t]).",
        _q_sample_with(
            lambda ab, t: _alphas(ab)[t].sqrt(), lambda ab, t: (1 - _alphas(ab)[t]).sqrt()
        ),
    ),
    Mistake(
        "off by one step: code index t is already the paper's step t+1, so use "
        "alphas_cumprod[t], not alphas_cumprod[t-1] (which, at t = 0, even wraps around to the "
        "last step).",
        _q_sample_with(lambda ab, t: ab[t - 1].sqrt(), lambda ab, t: (1 - ab[t - 1]).sqrt()),
    ),
    Mistake(
        "you scaled the noise by the variance (1 - alpha-bar_t) instead of the standard "
        "deviation sqrt(1 - alpha-bar_t): to get variance s^2 from eps ~ N(0, 1), multiply by s.",
        _q_sample_with(lambda ab, t: ab[t].sqrt(), lambda ab, t: 1 - ab[t]),
    ),
    Mistake(
        "the mean's coefficient is sqrt(alpha-bar_t), not alpha-bar_t.",
        _q_sample_with(lambda ab, t: ab[t], lambda ab, t: (1 - ab[t]).sqrt()),
    ),
    Mistake(
        "the two coefficients are swapped: x0 gets sqrt(alpha-bar_t) (large at small t) and the "
        "noise gets sqrt(1 - alpha-bar_t).",
        _q_sample_with(lambda ab, t: (1 - ab[t]).sqrt(), lambda ab, t: ab[t].sqrt()),
    ),
]


def _q_sample_cases() -> list[tuple]:
    gen = torch.Generator().manual_seed(1)
    cases = []
    for betas, shape in zip(_schedules(), [(6, 1, 8, 8), (5, 3), (5,)], strict=True):
        T = len(betas)
        abar = schedule_quantities(betas).alphas_cumprod
        # the edge steps 0 and T-1 and a few in between, all in one batch
        t = torch.tensor([0, T - 1, T // 2, 1, T // 3, 0][: shape[0]], dtype=torch.long)
        x0 = torch.rand(shape, generator=gen) * 2 - 1
        noise = torch.randn(shape, generator=gen)
        cases.append((x0, t, noise, abar))
    return cases


def check_q_sample(fn: Callable, verbose: bool = True) -> CheckResult:
    """Exercise 1.1: ``fn(x0, t, noise, alphas_cumprod) -> x_t``.

    ``x0`` and ``noise`` are [B, ...], ``t`` is a long tensor [B] of code indices (each sample
    its own step), ``alphas_cumprod`` the float64 table alpha-bar (length T).
    """
    return grade(
        "1.1 (q_sample)",
        fn,
        _q_sample_reference,
        _q_sample_cases(),
        _Q_SAMPLE_MISTAKES,
        verbose=verbose,
    )


# --------------------------------------------------------------------------- Exercise 1.2


def _alpha_bar_snr_reference(betas):
    q = schedule_quantities(betas)
    return q.alphas_cumprod, q.snr


def _with_snr(abar_fn: Callable, snr_fn: Callable | None = None) -> Callable:
    def fn(betas):
        abar = abar_fn(betas.to(torch.float64))
        snr = (snr_fn or (lambda a: a / (1 - a)))(abar)
        return abar, snr

    return fn


def _right_abar(betas):
    return torch.cumprod(1 - betas, dim=0)


def _float32_abar_snr(betas):
    abar = torch.cumprod(1 - betas.to(torch.float32), dim=0)
    return abar, abar / (1 - abar)


_ALPHA_BAR_SNR_MISTAKES = [
    Mistake(
        "you multiplied the betas; alpha-bar_t is the product of the alphas, alpha_s = 1 - beta_s "
        "(the fraction of signal *variance* each step keeps).",
        _with_snr(lambda b: torch.cumprod(b, dim=0)),
    ),
    Mistake(
        "you used 1 - (beta_1 + ... + beta_t): that is only the first-order approximation of "
        "prod(1 - beta_s) for small betas; compute the product itself (torch.cumprod).",
        _with_snr(lambda b: 1 - torch.cumsum(b, dim=0)),
    ),
    Mistake(
        "off by one step: alphas_cumprod[t] must include alpha at code index t itself "
        "(code t = paper's t+1), so alphas_cumprod[0] = 1 - beta_1, not 1.",
        _with_snr(lambda b: torch.cat([b.new_ones(1), torch.cumprod(1 - b, dim=0)[:-1]])),
    ),
    Mistake(
        "the SNR is a ratio of variances, alpha-bar_t / (1 - alpha-bar_t); you returned the "
        "ratio of standard deviations (its square root).",
        _with_snr(_right_abar, lambda a: (a / (1 - a)).sqrt()),
    ),
    Mistake(
        "the SNR is signal over noise, alpha-bar_t / (1 - alpha-bar_t); you returned its inverse.",
        _with_snr(_right_abar, lambda a: (1 - a) / a),
    ),
    Mistake(
        "your formulas are right but you computed in float32: 1 - alpha-bar_t near t = 0 is a "
        "difference of two numbers close to 1 and loses about 4 of float32's 7 significant digits "
        "(the SNR at t = 0 is off by ~1e-4 relative). Keep the schedule in float64 (chapter 1, "
        "'Why the schedule lives in float64').",
        _float32_abar_snr,
    ),
]


def check_alpha_bar_snr(fn: Callable, verbose: bool = True) -> CheckResult:
    """Exercise 1.2: ``fn(betas) -> (alphas_cumprod, snr)``, both 1-D tensors of length T."""
    cases = [(b,) for b in _schedules()] + [(torch.tensor([0.3], dtype=torch.float64),)]
    return grade(
        "1.2 (alpha-bar and SNR)",
        fn,
        _alpha_bar_snr_reference,
        cases,
        _ALPHA_BAR_SNR_MISTAKES,
        verbose=verbose,
    )
