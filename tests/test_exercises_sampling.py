"""The chapter 8 checkers (ddpm.exercises.sampling) accept right answers (the package's and the
book's solutions), reject each typical mistake with its hint, and reject unsolved stubs and
garbage."""

import torch
from exercise_contract import Exercise, ExerciseContract

from ddpm import GaussianDiffusion, linear_beta_schedule
from ddpm.exercises import sampling as ex


# The book's solutions (book/08_sampling.ipynb, exercises 8.1 and 8.2), written out again.
def reverse_step(xt, t, eps, noise, betas, variance):
    alphas = 1 - betas
    abar = torch.cumprod(alphas, dim=0)
    abar_prev = torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
    shape = (-1,) + (1,) * (xt.ndim - 1)
    b, a, ab, ab_prev = (v[t].reshape(shape) for v in (betas, alphas, abar, abar_prev))
    mean = (xt - b / (1 - ab).sqrt() * eps) / a.sqrt()  # eq. 11
    var = b if variance == "beta" else (1 - ab_prev) / (1 - ab) * b
    nonzero = (t > 0).to(xt.dtype).reshape(shape)  # no noise at the last step
    return mean + nonzero * var.sqrt() * noise


def ddim_step(xt, t, t_prev, eps, betas):
    abar = torch.cumprod(1 - betas, dim=0)
    a = abar[t]
    a_prev = abar[t_prev] if t_prev >= 0 else torch.ones((), dtype=abar.dtype)
    x0 = ((xt - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
    eps = (xt - a.sqrt() * x0) / (1 - a).sqrt()  # re-derived from the clipped x0
    return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps


class TestContract(ExerciseContract):
    exercises = (
        Exercise(
            ex.check_reverse_step,
            reverse_step,
            ex._REVERSE_MISTAKES,
            reference=ex._reverse_reference,
        ),
        Exercise(ex.check_ddim_step, ddim_step, ex._DDIM_MISTAKES, reference=ex._ddim_reference),
    )


def test_garbage_is_rejected():
    assert not ex.check_reverse_step(lambda xt, t, eps, noise, b, v: xt, verbose=False)
    assert not ex.check_reverse_step(lambda *args: "hello", verbose=False)
    assert not ex.check_ddim_step(lambda xt, t, tp, eps, b: torch.zeros_like(xt), verbose=False)
    assert not ex.check_ddim_step(lambda xt, t, tp, eps, b: xt[:1], verbose=False)


def test_clipping_is_active_in_the_ddim_cases():
    """Without out-of-range predictions, the clipping mistakes could not be told apart."""
    for xt, t, _, eps, betas in ex._ddim_cases():
        abar = torch.cumprod(1 - betas, dim=0)[t]
        x0 = (xt - (1 - abar).sqrt() * eps) / abar.sqrt()
        if t > 0:
            assert (x0.abs() > 1).any()


def test_the_right_pieces_equal_the_package():
    for case in ex._reverse_cases():
        assert torch.allclose(ex._reverse_with()(*case), ex._reverse_reference(*case), atol=1e-8)
    for case in ex._ddim_cases():
        assert torch.allclose(ex._ddim_with()(*case), ex._ddim_reference(*case), atol=1e-8)


def test_eta_one_ddim_with_all_steps_is_ancestral_with_beta_tilde():
    """The identity behind exercise 8.4, on the package: DDIM with eta = 1 stepping t -> t - 1
    has the mean and the variance of the ancestral step with sigma_t^2 = beta-tilde_t."""
    diffusion = GaussianDiffusion(linear_beta_schedule(1000), "eps", "fixed_small")
    gen = torch.Generator().manual_seed(0)
    xt = torch.randn(3, 1, 4, 4, generator=gen, dtype=torch.float64)
    eps = torch.randn(3, 1, 4, 4, generator=gen, dtype=torch.float64)
    noise = torch.randn(3, 1, 4, 4, generator=gen, dtype=torch.float64)
    model = ex._constant_model(eps)
    for t in (999, 500, 1):
        coefs = diffusion._ddim_coefs([t], [t - 1], 1.0, torch.float64)[0]
        ddim, _ = diffusion._ddim_step(model, xt, t, coefs, True, noise)
        ancestral = diffusion.p_sample(model, xt, t, noise=noise, clip_denoised=True)
        assert torch.allclose(ddim, ancestral, atol=1e-8)
