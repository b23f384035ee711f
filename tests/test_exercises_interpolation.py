"""Tests for the chapter 9 checkers (ddpm.exercises.interpolation)."""

import math

import torch
from exercise_contract import Exercise, ExerciseContract

from ddpm import GaussianDiffusion, linear_beta_schedule
from ddpm.exercises import interpolation as ex


# The book's solutions (book/09_interpolation.ipynb), written out again.
def slerp(x1, x2, lam):
    a, b = x1.flatten(1), x2.flatten(1)
    cos = (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1))
    theta = torch.acos(cos.clamp(-1.0, 1.0))
    shape = (-1,) + (1,) * (x1.ndim - 1)
    theta = theta.reshape(shape)
    lam = torch.as_tensor(lam, dtype=x1.dtype).reshape(shape)
    sin = torch.sin(theta)
    parallel = sin < 1e-4
    sin = torch.where(parallel, torch.ones_like(sin), sin)
    w1 = torch.where(parallel, 1 - lam, torch.sin((1 - lam) * theta) / sin)
    w2 = torch.where(parallel, lam, torch.sin(lam * theta) / sin)
    return w1 * x1 + w2 * x2


def interpolate(model, diffusion, x1, x2, lam, t, generator):
    n1 = torch.randn(x1.shape, generator=generator)
    n2 = torch.randn(x1.shape, generator=generator)
    lam = torch.as_tensor(lam, dtype=x1.dtype).reshape((-1,) + (1,) * (x1.ndim - 1))
    x = (1 - lam) * diffusion.q_sample(x1, t, n1) + lam * diffusion.q_sample(x2, t, n2)
    for i in range(t, -1, -1):
        x = diffusion.p_sample(model, x, i, noise=torch.randn(x.shape, generator=generator))
    return x


def package_interpolate(model, diffusion, x1, x2, lam, t, generator):
    return diffusion.interpolate(model, x1, x2, lam, t, generator=generator)


def with_generator(fn):
    """A mistake's ``fn`` takes the seed of the checker's generator: take the generator."""

    def candidate(model, diffusion, x1, x2, lam, t, generator):
        return fn(model, diffusion, x1, x2, lam, t, int(generator.initial_seed()))

    return candidate


class TestContract(ExerciseContract):
    exercises = (
        Exercise(ex.check_slerp, slerp, ex._SLERP_MISTAKES, reference=ex.slerp_reference),
        Exercise(
            ex.check_interpolate,
            interpolate,
            ex._INTERPOLATE_MISTAKES,
            reference=package_interpolate,
            as_learner=with_generator,
        ),
    )


def test_slerp_without_parallel_fallback_is_named():
    def naive(x1, x2, lam):  # right everywhere but at theta = 0
        a, b = x1.flatten(1), x2.flatten(1)
        theta = torch.acos((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)))
        theta = theta.reshape((-1,) + (1,) * (x1.ndim - 1))
        lam = torch.as_tensor(lam, dtype=x1.dtype).reshape((-1,) + (1,) * (x1.ndim - 1))
        return (torch.sin((1 - lam) * theta) * x1 + torch.sin(lam * theta) * x2) / torch.sin(theta)

    result = ex.check_slerp(naive, verbose=False)
    assert not result
    assert "parallel" in result.message and "fall back" in result.message


def test_garbage_is_rejected():
    assert not ex.check_slerp(lambda x1, x2, lam: torch.zeros_like(x1), verbose=False)
    assert not ex.check_slerp(lambda x1, x2, lam: "hello", verbose=False)
    assert not ex.check_slerp(lambda x1, x2, lam: x1, verbose=False)
    assert not ex.check_interpolate(lambda *args: torch.zeros(3, 1, 4, 4), verbose=False)
    assert not ex.check_interpolate(lambda m, d, x1, x2, lam, t, g: x1, verbose=False)
    assert not ex.check_interpolate(lambda *args: None, verbose=False)


def test_slerp_reference_properties():
    gen = torch.Generator().manual_seed(0)
    e1, e2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    half = ex.slerp_reference(e1, e2, 0.5)
    assert torch.allclose(half, torch.full((1, 2), math.sqrt(0.5)))  # on the unit circle
    x1, x2 = torch.randn(5, 1, 8, 8, generator=gen), torch.randn(5, 1, 8, 8, generator=gen)
    assert torch.allclose(ex.slerp_reference(x1, x2, 0.0), x1, atol=1e-6)
    assert torch.allclose(ex.slerp_reference(x1, x2, 1.0), x2, atol=1e-5)
    assert torch.allclose(ex.slerp_reference(x1, 2 * x1, 0.5), 1.5 * x1)  # parallel: lerp


def test_interpolate_reference_starts_at_t():
    """The checker's reference (the package) equals encode-mix-decode starting at t, on the
    paper's schedule too."""
    diffusion = GaussianDiffusion(linear_beta_schedule(30))
    gen = torch.Generator().manual_seed(3)
    x1, x2 = torch.rand(2, 1, 4, 4, generator=gen), torch.rand(2, 1, 4, 4, generator=gen)
    lam = torch.tensor([0.3, 0.6])
    want = diffusion.interpolate(
        ex._stand_in_model, x1, x2, lam, 20, generator=torch.Generator().manual_seed(4)
    )
    got = interpolate(
        ex._stand_in_model, diffusion, x1, x2, lam, 20, torch.Generator().manual_seed(4)
    )
    assert torch.allclose(got, want, atol=1e-6)
