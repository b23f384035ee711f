"""Checkers for chapter 1, the forward process.

- Exercise 1.1, :func:`check_zero_terminal_snr`: rescale a schedule so that alpha-bar_T = 0
  (zero terminal SNR, Lin et al. 2024): sqrt(alpha-bar_t) shifted and stretched linearly.
- Exercise 1.2, :func:`check_alpha_bar_snr`: alpha-bar_t and the signal-to-noise ratio
  SNR_t = alpha-bar_t / (1 - alpha-bar_t) from the betas.

Code index ``t`` in ``0..T-1`` is the paper's step ``t + 1``: ``alphas_cumprod[t]`` is
alpha-bar_{t+1}, the product of the first ``t + 1`` alphas.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..schedules import cosine_beta_schedule, linear_beta_schedule, schedule_quantities
from . import CheckResult, Mistake, grade

__all__ = ["check_zero_terminal_snr", "check_alpha_bar_snr"]

# A short schedule with large steps: every step visibly changes alpha-bar, so an off-by-one
# index cannot hide behind the tiny betas of the paper's schedule.
_SHORT_BETAS = torch.tensor([0.1, 0.3, 0.5, 0.2, 0.9], dtype=torch.float64)


def _schedules() -> list[torch.Tensor]:
    return [linear_beta_schedule(1000), cosine_beta_schedule(1000), _SHORT_BETAS.clone()]


# --------------------------------------------------------------------------- Exercise 1.1


def _ztsnr_with(
    rescale: str = "sqrt", last_beta: float | None = None, keep_first: bool = True
) -> Callable:
    """Rescale a schedule to zero terminal SNR (Lin et al. 2024, Algorithm 1), as given.

    ``rescale``: which quantity is shifted and stretched linearly ("sqrt": sqrt(alpha-bar), the
    right one; "abar": alpha-bar itself). ``last_beta``: clip beta_T to this value.
    ``keep_first``: stretch so that the first value is kept (else only shift).
    """

    def fn(betas):
        abar = torch.cumprod(1 - betas.to(torch.float64), dim=0)
        v = abar.sqrt() if rescale == "sqrt" else abar
        first, last = v[0].clone(), v[-1].clone()
        v = v - last
        if keep_first:
            v = v * first / (first - last)
        abar = v**2 if rescale == "sqrt" else v
        alphas = abar / torch.cat([abar.new_ones(1), abar[:-1]])
        new = 1 - alphas
        if last_beta is not None:
            new[-1] = last_beta
        return new

    return fn


_zero_terminal_snr_reference = _ztsnr_with()

_ZERO_TERMINAL_SNR_MISTAKES = [
    Mistake(
        "you shifted and stretched alpha-bar itself; Lin et al. rescale sqrt(alpha-bar_t), the "
        "factor in front of x_0 in eq. 4 (the signal's amplitude), and square it afterwards.",
        _ztsnr_with(rescale="abar"),
    ),
    Mistake(
        "you only subtracted sqrt(alpha-bar_T): that also lowers sqrt(alpha-bar_1), so the "
        "first steps add more noise than before. Stretch by sqrt(alpha-bar_1) / (sqrt(alpha-bar_1)"
        " - sqrt(alpha-bar_T)) too, so that the first step is unchanged.",
        _ztsnr_with(keep_first=False),
    ),
    Mistake(
        "you clipped the last beta to 0.999 (as the cosine schedule does): that puts back a "
        "nonzero terminal SNR. With zero terminal SNR beta_T is exactly 1, alpha-bar_T = 0.",
        _ztsnr_with(last_beta=0.999),
    ),
]


def check_zero_terminal_snr(fn: Callable, verbose: bool = True) -> CheckResult:
    """Exercise 1.1: ``fn(betas) -> new_betas``, the schedule rescaled to zero terminal SNR.

    ``betas`` is a float64 tensor of length T; the answer keeps sqrt(alpha-bar_1), ends at
    alpha-bar_T = 0 (beta_T = 1), and is linear in sqrt(alpha-bar_t) in between.
    """
    return grade(
        "1.1 (zero terminal SNR)",
        fn,
        _zero_terminal_snr_reference,
        [(b,) for b in _schedules()],
        _ZERO_TERMINAL_SNR_MISTAKES,
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
