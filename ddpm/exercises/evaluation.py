"""Checkers for chapter 10, evaluation.

- Exercise 10.1, :func:`check_frechet_distance`: the Frechet distance between two Gaussians,
  ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), the formula behind FID
  (``ddpm.metrics.frechet_distance_gaussians``).
- Exercise 10.2, :func:`check_nll_to_bits_per_dim`: a per-image negative log-likelihood in nats
  turned into bits per dimension, nll / (D ln 2), plus log2(127.5) per dimension when the nll is
  that of a continuous density on the [-1, 1]-scaled 8-bit data (bins of width 1 / 127.5).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..metrics import frechet_distance_gaussians
from . import CheckResult, Mistake, grade

__all__ = ["check_frechet_distance", "check_nll_to_bits_per_dim"]

# --------------------------------------------------------------------------- Exercise 10.1


def _np(x) -> np.ndarray:
    return np.atleast_1d(np.asarray(torch.as_tensor(x).detach().cpu(), dtype=np.float64))


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric PSD matrix."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """tr (S1 S2)^(1/2), from the eigenvalues of S1^(1/2) S2 S1^(1/2) (same spectrum)."""
    r = _psd_sqrt(s1)
    m = r @ s2 @ r
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())


def _frechet_reference(mu1, sigma1, mu2, sigma2) -> float:
    return frechet_distance_gaussians(_np(mu1), np.atleast_2d(_np(sigma1)), _np(mu2),
                                      np.atleast_2d(_np(sigma2)))  # fmt: skip


def _frechet_with(mean_squared=True, factor=2.0, trace_term="product"):
    """A Frechet distance built from the pieces given (defaults: the right ones)."""

    def fn(mu1, sigma1, mu2, sigma2):
        m1, m2 = _np(mu1), _np(mu2)
        s1, s2 = np.atleast_2d(_np(sigma1)), np.atleast_2d(_np(sigma2))
        diff = float(np.sum((m1 - m2) ** 2))
        mean_term = diff if mean_squared else math.sqrt(diff)
        if trace_term == "product":
            cross = _trace_sqrt_product(s1, s2)
        elif trace_term == "elementwise":  # sqrt of each entry of S1 S2 (entries > 0 in the cases)
            cross = float(np.trace(np.sqrt(np.abs(s1 @ s2))))
        elif trace_term == "separate":  # S1^(1/2) S2^(1/2): equal only when S1, S2 commute
            cross = float(np.trace(_psd_sqrt(s1) @ _psd_sqrt(s2)))
        else:  # "diagonal": per-dimension standard deviations, correlations ignored
            std1, std2 = np.sqrt(np.diag(s1)), np.sqrt(np.diag(s2))
            return mean_term + float(np.sum((std1 - std2) ** 2))
        return mean_term + float(np.trace(s1) + np.trace(s2)) - factor * cross

    return fn


_FRECHET_MISTAKES = [
    Mistake("the cross term is 2 tr (S1 S2)^(1/2): you left out the factor 2.",
            _frechet_with(factor=1.0)),
    Mistake("(S1 S2)^(1/2) is a matrix square root (scipy.linalg.sqrtm), not the square root of "
            "each entry of S1 @ S2.", _frechet_with(trace_term="elementwise")),
    Mistake("(S1 S2)^(1/2) is not S1^(1/2) S2^(1/2) unless the two covariances commute: take "
            "the square root of the product.", _frechet_with(trace_term="separate")),
    Mistake("you used the per-dimension standard deviations (the diagonal) instead of the full "
            "covariance matrices: the formula is tr(S1 + S2 - 2 (S1 S2)^(1/2)).",
            _frechet_with(trace_term="diagonal")),
    Mistake("the mean term is the squared distance ||mu1 - mu2||^2, not the distance.",
            _frechet_with(mean_squared=False)),
]  # fmt: skip


def _positive_covariance(d: int, gen: torch.Generator) -> torch.Tensor:
    """A random covariance with positive entries (so S1 @ S2 has positive entries too)."""
    a = torch.rand(d, d, generator=gen, dtype=torch.float64)
    return a @ a.T + 0.1 * torch.eye(d, dtype=torch.float64)


def _frechet_cases() -> list[tuple]:
    gen = torch.Generator().manual_seed(10)
    cases = []
    for d in (1, 2, 3, 6):
        mu1 = torch.randn(d, generator=gen, dtype=torch.float64)
        mu2 = torch.randn(d, generator=gen, dtype=torch.float64)
        cases.append((mu1, _positive_covariance(d, gen), mu2, _positive_covariance(d, gen)))
    mu = torch.zeros(4, dtype=torch.float64)  # far from the origin: means differ by 3 per dim
    cases.append((mu, _positive_covariance(4, gen), mu + 3.0, _positive_covariance(4, gen)))
    return cases


def _refuse_complex(fn):
    """Wrap ``fn`` so that a complex result is reported with a hint, never silently cast."""

    def wrapped(*args):
        out = fn(*args)
        if np.iscomplexobj(out) or (isinstance(out, torch.Tensor) and out.is_complex()):
            raise TypeError(
                "it returned a complex number: scipy.linalg.sqrtm may leave a tiny imaginary "
                "part in (S1 S2)^(1/2); take its real part (.real) before the trace."
            )
        return out

    return wrapped


def check_frechet_distance(fn, verbose: bool = True) -> CheckResult:
    """Grade ``fn(mu1, sigma1, mu2, sigma2) -> float`` (means [D], covariances [D, D], float64
    tensors) against ``ddpm.metrics.frechet_distance_gaussians``."""
    return grade("10.1", _refuse_complex(fn), _frechet_reference, _frechet_cases(),
                 _FRECHET_MISTAKES, atol=1e-6, rtol=1e-6, verbose=verbose)  # fmt: skip


# --------------------------------------------------------------------------- Exercise 10.2

BIN_WIDTH = 2.0 / 255.0  # the spacing of the 8-bit levels v / 127.5 - 1 in [-1, 1]


_LN2 = math.log(2.0)
_SCALE_TERM = -math.log2(BIN_WIDTH)  # log2(127.5), about 6.99 bits per dimension


def _bpd_with(log=_LN2, dims="all", scale_term=_SCALE_TERM, always_scale=False):
    """nll (nats) -> bits/dim built from the pieces given (defaults: the right ones)."""

    def fn(nll_nats, image_shape, continuous=False):
        c, h, w = image_shape
        d = c * h * w if dims == "all" else h * w
        out = torch.as_tensor(nll_nats, dtype=torch.float64) / (d * log)
        if continuous or always_scale:
            out = out + scale_term
        return out

    return fn


def _bpd_reference(nll_nats, image_shape, continuous=False):
    """bits/dim = nll / (D ln 2), plus -log2(bin width) = log2(127.5) for a continuous density."""
    d = math.prod(image_shape)
    out = torch.as_tensor(nll_nats, dtype=torch.float64) / (d * math.log(2.0))
    return out - math.log2(BIN_WIDTH) if continuous else out


_BPD_MISTAKES = [
    Mistake("you forgot the ln 2: nats / D are nats per dimension; divide by D ln 2 for bits.",
            _bpd_with(log=1.0)),
    Mistake("you forgot the ln 2 (everything, the bin width too, came out in nats); divide by "
            "D ln 2 and add log2(127.5) for bits.", _bpd_with(log=1.0, scale_term=math.log(127.5))),
    Mistake("D counts dimensions, C * H * W, not pixels H * W: a colour pixel has 3 values.",
            _bpd_with(dims="pixels")),
    Mistake("a density is not a probability: for a continuous model add log2(127.5) per "
            "dimension, -log2 of the 8-bit bin width 2 / 255 on the [-1, 1] scale.",
            _bpd_with(scale_term=0.0)),
    Mistake("the data-scaling term has the wrong sign: P(bin) ~ p(x) * width, so "
            "-log2 P = -log2 p(x) + log2(127.5).", _bpd_with(scale_term=-math.log2(127.5))),
    Mistake("log2(256) = 8 is the term for data scaled to [0, 1] by v / 256; here the 8-bit "
            "levels are v / 127.5 - 1, bins of width 2 / 255: add log2(127.5).",
            _bpd_with(scale_term=8.0)),
    Mistake("the discrete likelihood (e.g. the discretized decoder) already gives probabilities "
            "of the 8-bit bins: add the log2(127.5) term only when continuous=True.",
            _bpd_with(always_scale=True)),
]  # fmt: skip


def _bpd_cases() -> list[tuple]:
    gen = torch.Generator().manual_seed(11)
    cases = []
    for shape, scale in [((1, 8, 8), 150.0), ((3, 32, 32), 8000.0), ((1, 28, 28), 1500.0)]:
        nll = scale * (1 + torch.rand(5, generator=gen, dtype=torch.float64))
        cases.append((nll, shape, False))
        cases.append((nll - 2 * scale, shape, True))  # a density can give a negative nll
    return cases


def check_nll_to_bits_per_dim(fn, verbose: bool = True) -> CheckResult:
    """Grade ``fn(nll_nats, image_shape, continuous=False) -> tensor [N]``: nll_nats [N] per image
    in nats, image_shape (C, H, W); ``continuous`` says the nll is that of a density on the
    [-1, 1]-scaled 8-bit data."""
    return grade("10.2", fn, _bpd_reference, _bpd_cases(), _BPD_MISTAKES,
                 atol=1e-6, rtol=1e-6, verbose=verbose)  # fmt: skip
