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


def ddim_invert(model, x0, betas, timesteps):
    abar = torch.cumprod(1 - betas, dim=0)
    x, a_from = x0, torch.ones((), dtype=abar.dtype)  # the clean data: alpha-bar = 1
    for t in timesteps:
        a_to = abar[t]
        eps = model(x, torch.full((x.shape[0],), t))  # at the step we move to
        x0_hat = (x - (1 - a_from).sqrt() * eps) / a_from.sqrt()  # not clipped
        x = a_to.sqrt() * x0_hat + (1 - a_to).sqrt() * eps
        a_from = a_to
    return x


def ddim_invert_with_the_package(model, x0, betas, timesteps):
    """Also right: GaussianDiffusion.ddim_encode, the same inversion on the evenly spaced steps
    of ddim_sample (so it answers only those cases; the others run the book's loop)."""
    diffusion = GaussianDiffusion(betas)
    if list(timesteps) == diffusion._ddim_steps(len(timesteps))[::-1]:
        return diffusion.ddim_encode(model, x0, steps=len(timesteps))
    return ddim_invert(model, x0, betas, timesteps)


class TestContract(ExerciseContract):
    exercises = (
        Exercise(
            ex.check_reverse_step,
            reverse_step,
            ex._REVERSE_MISTAKES,
            reference=ex._reverse_reference,
        ),
        Exercise(ex.check_ddim_invert, ddim_invert, ex._INVERT_MISTAKES,
                 also_right=[ddim_invert_with_the_package]),
    )


def test_garbage_is_rejected():
    assert not ex.check_reverse_step(lambda xt, t, eps, noise, b, v: xt, verbose=False)
    assert not ex.check_reverse_step(lambda *args: "hello", verbose=False)
    assert not ex.check_ddim_invert(lambda m, x0, b, ts: torch.randn_like(x0), verbose=False)
    assert not ex.check_ddim_invert(lambda m, x0, b, ts: x0, verbose=False)  # no noise added


def test_the_package_cases_exist_and_clipping_is_active():
    """Some cases use ddim_sample's steps (so the package answer is really compared), and some
    x0-hat leaves [-1, 1] on the way (else the clipping mistake could not be told apart)."""
    package_cases, clipped = 0, False
    for model, x0, betas, timesteps in ex._invert_cases():
        diffusion = GaussianDiffusion(betas)
        package_cases += list(timesteps) == diffusion._ddim_steps(len(timesteps))[::-1]
        clip = ex._invert_with(clip=True)(model, x0, betas, timesteps)
        clipped |= not torch.allclose(clip, ex._invert_reference(model, x0, betas, timesteps))
    assert package_cases >= 2 and clipped


def test_inversion_then_ddim_decoding_reconstructs_for_a_smooth_model():
    """The point of the exercise: with many steps, decoding (ddim_sample, eta = 0, no clip)
    the encoded x_T returns close to x0; with few steps, less close. The inversion's error comes
    from evaluating eps one step early, a first-order error: O(1 / steps) overall, so 20 times
    the steps must shrink it more than 10 times."""
    diffusion = GaussianDiffusion(linear_beta_schedule(1000))
    x0 = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x0 = x0 * 2 - 1

    def model(x, t):  # smooth in x and t: the one-step approximation errs little
        return 0.3 * torch.tanh(x) * (1 + t.to(x.dtype)[:, None, None, None] / 1000)

    errors = []
    for steps in (10, 200):
        timesteps = diffusion._ddim_steps(steps)[::-1]
        xT = ddim_invert(model, x0, diffusion.betas, timesteps)
        back = diffusion.ddim_sample(model, x0.shape, steps=steps, x_start=xT,
                                     clip_denoised=False, progress=False)  # fmt: skip
        errors.append((back - x0).abs().max().item())
    assert errors[1] < 0.1 * errors[0] and errors[1] < 0.1, errors


def test_the_right_pieces_equal_the_package():
    for case in ex._reverse_cases():
        assert torch.allclose(ex._reverse_with()(*case), ex._reverse_reference(*case), atol=1e-8)


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
