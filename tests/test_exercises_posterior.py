"""The chapter 2 checkers accept right answers (the package's and the book's solutions), reject
each typical mistake with its hint, and reject unsolved stubs and garbage."""

import torch
from exercise_contract import Exercise, ExerciseContract, each_exercise

from ddpm.exercises import posterior
from ddpm.exercises.posterior import check_posterior, check_predict_x0_from_eps


# The book's solutions, written out as a learner would (chapter 2, exercises 2.1 and 2.2).
def book_posterior(x0, xt, t, betas):
    alphas = 1 - betas
    abar = torch.cumprod(alphas, dim=0)
    abar_prev = torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
    shape = (-1,) + (1,) * (xt.ndim - 1)
    b, a, ab, ab_prev = (v[t].reshape(shape) for v in (betas, alphas, abar, abar_prev))
    mean = (ab_prev.sqrt() * b * x0 + a.sqrt() * (1 - ab_prev) * xt) / (1 - ab)
    var = (1 - ab_prev) / (1 - ab) * b
    return mean, var


def book_predict_x0_from_eps(xt, t, eps, betas):
    abar = torch.cumprod(1 - betas, dim=0)[t].reshape((-1,) + (1,) * (xt.ndim - 1))
    return (xt - (1 - abar).sqrt() * eps) / abar.sqrt()


def full_variance_posterior(x0, xt, t, betas):
    """A right answer that returns the variance shaped like xt rather than [B, 1, ...]."""
    mean, var = book_posterior(x0, xt, t, betas)
    return mean, var.expand_as(xt)


EXERCISES = (
    Exercise(
        check_posterior,
        book_posterior,
        posterior._POSTERIOR_MISTAKES,
        reference=posterior._posterior_reference,
        also_right=[full_variance_posterior],
    ),
    Exercise(
        check_predict_x0_from_eps,
        book_predict_x0_from_eps,
        posterior._X0_MISTAKES,
        reference=posterior._x0_reference,
        id="predict_x0_from_eps",
    ),
)


class TestContract(ExerciseContract):
    exercises = EXERCISES


@each_exercise(EXERCISES)
def test_garbage_is_rejected(exercise):
    def zeros(*args):
        out = exercise.reference(*args)
        if isinstance(out, tuple):
            return tuple(torch.zeros_like(o) for o in out)
        return torch.zeros_like(out)

    def wrong_type(*args):
        return "x0"

    for fn in (zeros, wrong_type):
        result = exercise.check(fn, verbose=False)
        assert not result
        assert "Hint" not in result.message


def test_posterior_rejects_right_mean_with_wrong_shape():
    def flat_variance(x0, xt, t, betas):
        mean, var = book_posterior(x0, xt, t, betas)
        return mean, var.reshape(-1)

    result = check_posterior(flat_variance, verbose=False)
    assert not result
    assert "shape" in result.message
