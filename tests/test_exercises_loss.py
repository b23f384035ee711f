"""Tests for the chapter 4 checkers (ddpm.exercises.loss)."""

import torch
from exercise_contract import Exercise, ExerciseContract

from ddpm.exercises import loss as ex


# The book's solutions (book/04_simplified_loss.ipynb), written out again.
def l_simple(model, x0, t, noise, betas):
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    abar = alphas_cumprod[t].reshape(-1, *([1] * (x0.ndim - 1)))
    xt = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    err = (noise - model(xt, t)) ** 2
    return err.reshape(x0.shape[0], -1).mean(dim=1)


def reverse_step(xt, t, eps_pred, noise, betas):
    alphas = 1 - betas
    alphas_cumprod = torch.cumprod(alphas, dim=0)

    def col(v):  # a [B] table as [B, 1, ..., 1]
        return v.reshape(-1, *([1] * (xt.ndim - 1)))

    eps_coef = betas[t] / (1 - alphas_cumprod[t]).sqrt()
    mean = (xt - col(eps_coef) * eps_pred) / col(alphas[t].sqrt())
    sigma = torch.where(t > 0, betas[t].sqrt(), torch.zeros_like(betas[t]))
    return mean + col(sigma) * noise


class TestContract(ExerciseContract):
    exercises = (
        Exercise(
            ex.check_l_simple, l_simple, ex._L_SIMPLE_MISTAKES, reference=ex._l_simple_reference
        ),
        Exercise(
            ex.check_reverse_step,
            reverse_step,
            ex._REVERSE_STEP_MISTAKES,
            reference=ex._reverse_step_reference,
        ),
    )


def test_garbage_is_rejected():
    def garbage_loss(model, x0, t, noise, betas):
        return torch.rand(x0.shape[0], dtype=x0.dtype)

    def garbage_step(xt, t, eps_pred, noise, betas):
        return xt * 0.5

    def wrong_shape_step(xt, t, eps_pred, noise, betas):
        return xt[:1]

    for check, fn in [
        (ex.check_l_simple, garbage_loss),
        (ex.check_reverse_step, garbage_step),
        (ex.check_reverse_step, wrong_shape_step),
    ]:
        result = check(fn, verbose=False)
        assert not result
        assert "Hint" not in result.message


def test_verbose_prints_verdict(capsys):
    ex.check_reverse_step(reverse_step)
    assert "PASS" in capsys.readouterr().out


def test_toy_model_depends_on_x_and_t():
    x = torch.linspace(-1, 1, 6, dtype=torch.float64).reshape(3, 2)
    t = torch.tensor([0, 1, 2])
    out = ex.toy_eps_model(x, t)
    assert out.shape == x.shape
    assert not torch.allclose(out, ex.toy_eps_model(x + 0.1, t))
    assert not torch.allclose(out, ex.toy_eps_model(x, t + 1))
