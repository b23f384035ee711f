"""Tests for the chapter 4 checkers (ddpm.exercises.loss)."""

import pytest
import torch

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


def _stub(*args):
    raise NotImplementedError("Exercise 4.x: write your code here")


CHECKERS = [
    (ex.check_l_simple, l_simple, ex._l_simple_reference, ex._L_SIMPLE_MISTAKES),
    (ex.check_reverse_step, reverse_step, ex._reverse_step_reference, ex._REVERSE_STEP_MISTAKES),
]
IDS = ["l_simple", "reverse_step"]


@pytest.mark.parametrize(("check", "solution", "reference", "mistakes"), CHECKERS, ids=IDS)
def test_reference_and_book_solution_pass(check, solution, reference, mistakes):
    assert check(reference, verbose=False)
    result = check(solution, verbose=False)
    assert result, result.message


@pytest.mark.parametrize(("check", "solution", "reference", "mistakes"), CHECKERS, ids=IDS)
def test_each_mistake_is_rejected_with_its_hint(check, solution, reference, mistakes):
    assert len(mistakes) >= 2
    for mistake in mistakes:
        result = check(mistake.fn, verbose=False)
        assert not result
        assert mistake.hint in result.message, (mistake.hint, result.message)


@pytest.mark.parametrize(("check", "solution", "reference", "mistakes"), CHECKERS, ids=IDS)
def test_stub_is_not_solved_yet(check, solution, reference, mistakes):
    result = check(_stub, verbose=False)
    assert not result
    assert "not solved yet" in result.message


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


def test_crashing_solution_is_reported_not_raised():
    def crash(*args):
        raise ValueError("boom")

    result = ex.check_l_simple(crash, verbose=False)
    assert not result
    assert "ValueError" in result.message


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
