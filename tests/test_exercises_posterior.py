"""The chapter 2 checkers accept right answers (the package's and the book's solutions), reject
each typical mistake with its hint, and reject unsolved stubs and garbage."""

import pytest
import torch

from ddpm.exercises import posterior
from ddpm.exercises.posterior import check_posterior, check_predict_x0_from_eps

CHECKERS = [
    (check_posterior, posterior._posterior_reference, posterior._POSTERIOR_MISTAKES),
    (check_predict_x0_from_eps, posterior._x0_reference, posterior._X0_MISTAKES),
]
IDS = ["posterior", "predict_x0_from_eps"]


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


@pytest.mark.parametrize(("checker", "reference", "mistakes"), CHECKERS, ids=IDS)
def test_reference_passes(checker, reference, mistakes):
    result = checker(reference, verbose=False)
    assert result, result.message


@pytest.mark.parametrize(
    ("checker", "solution"),
    [
        (check_posterior, book_posterior),
        (check_posterior, full_variance_posterior),
        (check_predict_x0_from_eps, book_predict_x0_from_eps),
    ],
)
def test_book_solutions_pass(checker, solution):
    result = checker(solution, verbose=False)
    assert result, result.message


@pytest.mark.parametrize(("checker", "reference", "mistakes"), CHECKERS, ids=IDS)
def test_each_mistake_is_rejected_with_its_hint(checker, reference, mistakes):
    assert len(mistakes) >= 2
    for mistake in mistakes:
        result = checker(mistake.fn, verbose=False)
        assert not result
        assert mistake.hint in result.message, (mistake.hint, result.message)


@pytest.mark.parametrize(("checker", "reference", "mistakes"), CHECKERS, ids=IDS)
def test_mistakes_are_distinct(checker, reference, mistakes):
    """Each mistake gets its own hint: no earlier mistake also reproduces it."""
    for i, mistake in enumerate(mistakes):
        result = checker(mistake.fn, verbose=False)
        for other in mistakes[:i]:
            assert other.hint not in result.message


@pytest.mark.parametrize(("checker", "reference", "mistakes"), CHECKERS, ids=IDS)
def test_unsolved_stub_is_rejected(checker, reference, mistakes):
    def stub(*args):
        raise NotImplementedError("Exercise 2.x: your code here")

    result = checker(stub, verbose=False)
    assert not result
    assert "not solved yet" in result.message


@pytest.mark.parametrize(("checker", "reference", "mistakes"), CHECKERS, ids=IDS)
def test_garbage_is_rejected(checker, reference, mistakes):
    def zeros(*args):
        out = reference(*args)
        if isinstance(out, tuple):
            return tuple(torch.zeros_like(o) for o in out)
        return torch.zeros_like(out)

    def wrong_type(*args):
        return "x0"

    def crashes(*args):
        raise IndexError("index 1000 is out of bounds")

    for fn in (zeros, wrong_type, crashes):
        result = checker(fn, verbose=False)
        assert not result
        assert "Hint" not in result.message
    assert "IndexError" in checker(crashes, verbose=False).message


def test_posterior_rejects_right_mean_with_wrong_shape():
    def flat_variance(x0, xt, t, betas):
        mean, var = book_posterior(x0, xt, t, betas)
        return mean, var.reshape(-1)

    result = check_posterior(flat_variance, verbose=False)
    assert not result
    assert "shape" in result.message
