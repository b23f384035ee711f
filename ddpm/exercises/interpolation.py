"""Checkers for chapter 9, interpolation.

- Exercise 9.1, :func:`check_slerp`: spherical linear interpolation ``slerp(x1, x2, lam)`` of two
  batches [B, ...], one angle per example (over all of its C*H*W values), ``lam`` a float or a
  [B] tensor, falling back to the linear mix when the two vectors are (nearly) parallel.
- Exercise 9.2, :func:`check_interpolate`: the paper's interpolation (section 4.4 of Ho et al.
  2020) written with ``q_sample`` and ``p_sample``: encode both images to step t with their own
  noise, mix with lambda, and run the reverse chain starting *at* t; it must draw its random
  numbers in the order ``GaussianDiffusion.interpolate`` does, so that a seed gives the same
  result.

Code index ``t`` in ``0..T-1`` is the paper's step ``t + 1``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..diffusion import GaussianDiffusion
from . import CheckResult, Mistake, grade

__all__ = ["check_interpolate", "check_slerp", "slerp_reference"]

# --------------------------------------------------------------------------- Exercise 9.1

# Below this sin(theta) the two vectors count as parallel and slerp is the linear mix.
PARALLEL_SIN = 1e-4


def _lam_column(lam, x: torch.Tensor) -> torch.Tensor:
    """lambda as a float or [B] tensor, shaped [B or 1, 1, ..., 1] to broadcast against x."""
    lam = torch.as_tensor(lam, dtype=x.dtype, device=x.device)
    return lam.reshape(-1, *([1] * (x.ndim - 1)))


def slerp_reference(x1: torch.Tensor, x2: torch.Tensor, lam) -> torch.Tensor:
    """Spherical linear interpolation of each example of x1 [B, ...] with the same example of x2.

    With theta the angle between the two flattened examples,
    slerp = sin((1 - lam) theta) / sin(theta) x1 + sin(lam theta) / sin(theta) x2; where
    sin(theta) < PARALLEL_SIN the limit theta -> 0, the linear mix (1 - lam) x1 + lam x2.
    """
    a, b = x1.flatten(1).double(), x2.flatten(1).double()
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    theta = torch.acos(cos.clamp(-1.0, 1.0))
    theta = _lam_column(theta, x1).double()
    lam = _lam_column(lam, x1).double()
    sin = torch.sin(theta)
    parallel = sin < PARALLEL_SIN
    safe = torch.where(parallel, torch.ones_like(sin), sin)
    w1 = torch.where(parallel, 1 - lam, torch.sin((1 - lam) * theta) / safe)
    w2 = torch.where(parallel, lam, torch.sin(lam * theta) / safe)
    return (w1 * x1.double() + w2 * x2.double()).to(x1.dtype)


def _slerp_with(
    angle: str = "acos", per_example: bool = True, swap: bool = False, unit: bool = False
) -> Callable:
    """A slerp built from the pieces given (the right ones by default, parallel case aside)."""

    def fn(x1, x2, lam):
        a, b = x1.flatten(1).double(), x2.flatten(1).double()
        if per_example:
            cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
        else:  # one angle for the whole batch
            cos = (a * b).sum() / (a.norm() * b.norm()) * torch.ones(len(a), dtype=a.dtype)
        cos = cos.clamp(-1.0, 1.0)
        theta = torch.acos(cos) if angle == "acos" else cos
        theta = _lam_column(theta, x1).double()
        lam_col = _lam_column(lam, x1).double()
        w1 = torch.sin((1 - lam_col) * theta) / torch.sin(theta)
        w2 = torch.sin(lam_col * theta) / torch.sin(theta)
        if swap:
            w1, w2 = w2, w1
        u1, u2 = x1.double(), x2.double()
        if unit:
            u1 = u1 / _lam_column(a.norm(dim=1), x1).double()
            u2 = u2 / _lam_column(b.norm(dim=1), x1).double()
        return (w1 * u1 + w2 * u2).to(x1.dtype)

    return fn


def _lerp(x1, x2, lam):
    lam = _lam_column(lam, x1)
    return (1 - lam) * x1 + lam * x2


_SLERP_MISTAKES = [
    Mistake("this is the linear mix (1 - lam) x1 + lam x2, not slerp: weight the two vectors by "
            "sin((1 - lam) theta) / sin(theta) and sin(lam theta) / sin(theta).", _lerp),
    Mistake("the angle is wrong: theta is arccos of the cosine similarity "
            "<x1, x2> / (|x1| |x2|), not the cosine itself.", _slerp_with(angle="cos")),
    Mistake("one angle for the whole batch: compute theta per example (flatten each example, "
            "x.flatten(1), and sum over dim 1), since each pair has its own angle.",
            _slerp_with(per_example=False)),
    Mistake("the weights are swapped: lam = 0 must give x1, so x1 gets sin((1 - lam) theta).",
            _slerp_with(swap=True)),
    Mistake("you interpolated the unit vectors x / |x|: slerp keeps the vectors' own lengths "
            "(apply the weights to x1 and x2 themselves).", _slerp_with(unit=True)),
]  # fmt: skip


def _slerp_cases() -> list[tuple]:
    gen = torch.Generator().manual_seed(9)
    x1, x2 = torch.randn(4, 1, 3, 3, generator=gen), torch.randn(4, 1, 3, 3, generator=gen)
    scale = torch.tensor([0.5, 1.0, 2.0, 4.0]).reshape(-1, 1, 1)
    y1 = torch.randn(3, 2, 4, generator=gen) * scale[:3]
    y2 = torch.randn(3, 2, 4, generator=gen) + 0.8 * y1  # correlated: angles well below 90 deg
    e1, e2 = torch.tensor([[1.0, 0.0], [3.0, 0.0]]), torch.tensor([[1.0, 1.0], [-3.0, 3.0]])
    return [
        (x1, x2, 0.3),
        (x1, x2, torch.tensor([0.0, 0.25, 0.5, 1.0])),
        (y1, y2, torch.tensor([0.1, 0.5, 0.9])),
        (e1, e2, 0.5),
    ]


def _parallel_cases() -> list[tuple]:
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(3, 1, 4, 4, generator=gen)
    return [(x, x.clone(), 0.4), (x, 3.0 * x, torch.tensor([0.0, 0.5, 1.0]))]


def check_slerp(fn: Callable, verbose: bool = True) -> CheckResult:
    """Grade ``fn(x1, x2, lam)`` (x1, x2 [B, ...]; lam a float or [B] tensor) against slerp."""
    result = grade("9.1", fn, slerp_reference, _slerp_cases(), _SLERP_MISTAKES,
                   atol=1e-5, rtol=1e-4, verbose=False)  # fmt: skip
    if result:
        for x1, x2, lam in _parallel_cases():
            try:
                out = fn(x1.clone(), x2.clone(), lam)
                finite = bool(torch.isfinite(torch.as_tensor(out)).all())
            except Exception:  # reported by grade below
                finite = True
            if not finite:
                result = CheckResult(
                    "9.1",
                    False,
                    "NaN or inf for two parallel vectors (x2 = c x1). Hint: there theta = 0 and "
                    "sin(theta) = 0, so the weights are 0 / 0; where sin(theta) is tiny, fall "
                    "back to the linear mix (1 - lam) x1 + lam x2, the limit of slerp.",
                )
                break
        else:
            result = grade("9.1", fn, slerp_reference, _parallel_cases(), _SLERP_MISTAKES,
                           atol=1e-5, rtol=1e-4, verbose=False)  # fmt: skip
            if result:
                result.message = (
                    f"correct on all {len(_slerp_cases()) + len(_parallel_cases())} test inputs, "
                    "parallel vectors included."
                )
    if verbose:
        print(result)
    return result


# --------------------------------------------------------------------------- Exercise 9.2

# A short schedule with large steps: starting the reverse chain one step off changes the result
# visibly, and the checker runs in milliseconds.
_BETAS = torch.linspace(0.05, 0.5, 8, dtype=torch.float64)


def _stand_in_model(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A fixed 'noise predictor': a smooth nonlinear function of x_t and of the integer step."""
    tt = t.to(xt.dtype).reshape(-1, *([1] * (xt.ndim - 1)))
    return torch.tanh(0.7 * xt + 0.1 * tt) + 0.05 * xt.flip(-1) * tt


def _interpolate_reference(model, diffusion, x1, x2, lam, t, seed):
    gen = torch.Generator().manual_seed(seed)
    return diffusion.interpolate(model, x1, x2, lam, t, generator=gen)


def _interpolate_with(
    start_shift: int = 0, shared_noise: bool = False, swap: bool = False
) -> Callable:
    """The interpolation built from the pieces given (the right ones by default)."""

    def fn(model, diffusion, x1, x2, lam, t, seed):
        gen = torch.Generator().manual_seed(seed)
        n1 = torch.randn(x1.shape, generator=gen)
        n2 = n1 if shared_noise else torch.randn(x1.shape, generator=gen)
        w = _lam_column(lam, x1)
        if swap:
            w = 1 - w
        x = (1 - w) * diffusion.q_sample(x1, t, n1) + w * diffusion.q_sample(x2, t, n2)
        for i in range(t + start_shift, -1, -1):
            x = diffusion.p_sample(model, x, i, noise=torch.randn(x.shape, generator=gen))
        return x

    return fn


_INTERPOLATE_MISTAKES = [
    Mistake("off by one: x_t = q_sample(x0, t) is already at step t, so the reverse chain starts "
            "*at* t (for i in range(t, -1, -1)), not at t - 1.", _interpolate_with(start_shift=-1)),
    Mistake("off by one: the reverse chain starts at t, not t + 1 (x_t = q_sample(x0, t) is the "
            "input of p_sample at step t).", _interpolate_with(start_shift=1)),
    Mistake("one noise for both images: the paper encodes each image with its own noise, "
            "n1 and n2, drawn one after the other.", _interpolate_with(shared_noise=True)),
    Mistake("lambda weights the wrong image: lam = 0 must give x1, so x_t = (1 - lam) x1_t + "
            "lam x2_t.", _interpolate_with(swap=True)),
]  # fmt: skip


def _interpolate_cases() -> list[tuple]:
    gen = torch.Generator().manual_seed(11)
    diffusion = GaussianDiffusion(_BETAS.clone())
    x1, x2 = torch.rand(3, 1, 4, 4, generator=gen) * 2 - 1, torch.rand(3, 1, 4, 4, generator=gen)
    x2 = x2 * 2 - 1
    lam = torch.tensor([0.0, 0.4, 1.0])
    return [
        (_stand_in_model, diffusion, x1, x2, lam, 5, 0),
        (_stand_in_model, diffusion, x1, x2, 0.5, 6, 1),
        (_stand_in_model, diffusion, x1[:2], x2[:2], torch.tensor([0.25, 0.75]), 0, 2),
    ]


def check_interpolate(fn: Callable, verbose: bool = True) -> CheckResult:
    """Grade ``fn(model, diffusion, x1, x2, lam, t, generator)`` against
    ``diffusion.interpolate(model, x1, x2, lam, t, generator=generator)``.

    x1, x2 [B, ...]; lam a float or [B] tensor; t an int (code index); generator a seeded
    ``torch.Generator``. The learner's function gets a fresh generator per test input.
    """

    def candidate(model, diffusion, x1, x2, lam, t, seed):
        return fn(model, diffusion, x1, x2, lam, t, torch.Generator().manual_seed(seed))

    return grade("9.2", candidate, _interpolate_reference, _interpolate_cases(),
                 _INTERPOLATE_MISTAKES, atol=1e-5, rtol=1e-4, verbose=verbose)  # fmt: skip
