"""Checkers for chapter 3, the variational bound.

- :func:`check_normal_kl`: Exercise 3.1, the KL divergence between two diagonal Gaussians given
  their means and log-variances (the reference is
  :func:`ddpm.normal_kl <ddpm.diffusion.normal_kl>`).
- :func:`check_bits_per_dim`: Exercise 3.2, a total negative log-likelihood in nats over a batch
  of images converted to bits per dimension.
"""

from __future__ import annotations

import math

import torch

from ..diffusion import normal_kl
from ..schedules import linear_beta_schedule, schedule_quantities
from . import CheckResult, Mistake, grade

__all__ = ["check_normal_kl", "check_bits_per_dim", "bits_per_dim_reference"]

_LN2 = math.log(2.0)


# ---------------------------------------------------------------- Exercise 3.1: normal_kl
def _kl_cases() -> list[tuple[torch.Tensor, ...]]:
    """Inputs (mean1, logvar1, mean2, logvar2): generic ones, and the posterior q(x_{t-1} | x_t,
    x_0) against a fixed_large reverse step at the edge steps code t = 0, 1 and T-1."""
    g = torch.Generator().manual_seed(3)
    cases = []
    for shape in [(5,), (2, 3, 4)]:
        m1 = torch.randn(shape, generator=g, dtype=torch.float64)
        m2 = torch.randn(shape, generator=g, dtype=torch.float64)
        l1 = torch.rand(shape, generator=g, dtype=torch.float64) * 5 - 3
        l2 = torch.rand(shape, generator=g, dtype=torch.float64) * 5 - 3
        cases.append((m1, l1, m2, l2))
    # Same means, different variances: only the variance part of the KL is left.
    lv = torch.tensor([-2.0, 0.0, 1.5], dtype=torch.float64)
    cases.append(
        (torch.zeros(3, dtype=torch.float64), lv, torch.zeros(3, dtype=torch.float64), -lv)
    )
    # Steps of the paper's schedule: tiny variances (t = 0, 1) and large ones (t = T - 1).
    sq = schedule_quantities(linear_beta_schedule(1000))
    for t in (0, 1, 999):
        mean1 = torch.randn(4, generator=g, dtype=torch.float64) * 0.5
        mean2 = mean1 + 0.01 * torch.randn(4, generator=g, dtype=torch.float64)
        logvar1 = sq.posterior_log_variance_clipped[t].expand(4).clone()
        logvar2 = torch.log(sq.betas[t]).expand(4).clone()
        cases.append((mean1, logvar1, mean2, logvar2))
    return cases


def _kl_std_for_var(m1, l1, m2, l2):
    return 0.5 * (l2 - l1 + torch.exp(0.5 * (l1 - l2)) + (m1 - m2) ** 2 * torch.exp(-0.5 * l2) - 1)


def _kl_logstd(m1, l1, m2, l2):
    return 0.5 * (
        2 * l2 - 2 * l1 + torch.exp(2 * (l1 - l2)) + (m1 - m2) ** 2 * torch.exp(-2 * l2) - 1
    )


KL_MISTAKES = [
    Mistake(
        "you computed KL(p2 || p1): the arguments are swapped. KL is not symmetric; the first "
        "Gaussian is the one the expectation is taken under.",
        lambda m1, l1, m2, l2: normal_kl(m2, l2, m1, l1),
    ),
    Mistake(
        "the factor 1/2 is missing: every term of the closed form is halved.",
        lambda m1, l1, m2, l2: 2 * normal_kl(m1, l1, m2, l2),
    ),
    Mistake(
        "variance vs standard deviation: you used exp(logvar / 2) (a standard deviation) where "
        "the variance exp(logvar) belongs, in the ratio and under the squared mean difference.",
        _kl_std_for_var,
    ),
    Mistake(
        "you treated the log-variances as log standard deviations (variance exp(2 * logvar)); "
        "the inputs are log sigma^2, so the variance is exp(logvar).",
        _kl_logstd,
    ),
    Mistake(
        "the log term has the wrong sign: it is log(sigma2^2 / sigma1^2) = logvar2 - logvar1.",
        lambda m1, l1, m2, l2: normal_kl(m1, l1, m2, l2) + (l1 - l2),
    ),
    Mistake(
        "the constant -1 (the dimension count, per dimension) is missing: the KL of a Gaussian "
        "with itself must be 0.",
        lambda m1, l1, m2, l2: normal_kl(m1, l1, m2, l2) + 0.5,
    ),
]


def check_normal_kl(fn, verbose: bool = True) -> CheckResult:
    """Exercise 3.1: ``fn(mean1, logvar1, mean2, logvar2)`` must return, elementwise and in nats,
    KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2)))."""
    return grade(
        "3.1 (KL between diagonal Gaussians)",
        fn,
        normal_kl,
        _kl_cases(),
        KL_MISTAKES,
        atol=1e-7,
        rtol=1e-5,
        verbose=verbose,
    )


# ---------------------------------------------------------------- Exercise 3.2: bits per dimension
def bits_per_dim_reference(total_nll_nats, shape) -> torch.Tensor:
    """Average bits per dimension of a batch whose total negative log-likelihood is
    ``total_nll_nats`` (nats, summed over the batch and every dimension); ``shape`` is the batch's
    shape ``(B, ...)``, e.g. ``(B, C, H, W)``."""
    dims = math.prod(shape)
    return torch.as_tensor(total_nll_nats, dtype=torch.float64) / (dims * _LN2)


def _bpd_cases() -> list[tuple]:
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return [
        (t(3.70 * 8 * 3 * 32 * 32 * _LN2), (8, 3, 32, 32)),  # the paper's CIFAR-10 NLL
        (t(8 * 64 * math.log(256.0)), (8, 1, 8, 8)),  # uniform over 256 levels: 8 bits/dim
        (t(1234.5), (1, 1, 28, 28)),  # a single image
        (t(17.25), (4, 2)),  # a batch of 2-D points
    ]


def _bpd_per_image(total, shape):
    return total / (shape[0] * _LN2)


def _bpd_no_batch(total, shape):
    return total / (math.prod(shape[1:]) * _LN2)


BPD_MISTAKES = [
    Mistake(
        "you divided by ln(10): that gives decimal digits (bans). Bits use log base 2: divide "
        "nats by ln(2).",
        lambda total, shape: total / (math.prod(shape) * math.log(10.0)),
    ),
    Mistake(
        "this is nats per dimension: you forgot to convert nats to bits (divide by ln 2).",
        lambda total, shape: total / math.prod(shape),
    ),
    Mistake(
        "you multiplied by ln(2) (or divided by log2(e)): 1 nat = 1 / ln(2) = 1.44 bits, so "
        "nats are divided by ln 2.",
        lambda total, shape: total * _LN2 / math.prod(shape),
    ),
    Mistake(
        "you forgot to divide by the number of dimensions per image (C * H * W): this is bits "
        "per image.",
        _bpd_per_image,
    ),
    Mistake(
        "you divided by the dimensions of one image but not by the batch size: the total is "
        "summed over the whole batch.",
        _bpd_no_batch,
    ),
    Mistake(
        "you divided by batch * dimensions twice.",
        lambda total, shape: total / (math.prod(shape) ** 2 * _LN2),
    ),
]


def check_bits_per_dim(fn, verbose: bool = True) -> CheckResult:
    """Exercise 3.2: ``fn(total_nll_nats, shape)`` must return the average bits per dimension
    (a scalar) of a batch of shape ``shape`` whose summed NLL is ``total_nll_nats`` nats."""
    return grade(
        "3.2 (bits per dimension)",
        fn,
        bits_per_dim_reference,
        _bpd_cases(),
        BPD_MISTAKES,
        atol=1e-9,
        rtol=1e-7,
        verbose=verbose,
    )
