"""The chapter 2 checkers accept right answers (the package's and the book's solutions), reject
each typical mistake with its hint, and reject unsolved stubs and garbage."""

import torch
from exercise_contract import Exercise, ExerciseContract, each_exercise

from ddpm.exercises import posterior
from ddpm.exercises.posterior import check_posterior, check_posterior_skip


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


def book_posterior_skip(x0, xt, t, s, betas):
    abar = torch.cat([torch.ones(1, dtype=betas.dtype), torch.cumprod(1 - betas, dim=0)])
    shape = (-1,) + (1,) * (xt.ndim - 1)
    ab_t, ab_s = abar[t + 1].reshape(shape), abar[s + 1].reshape(shape)  # index -1: clean, 1
    a_ts = ab_t / ab_s  # alpha_{t|s}: the forward jump from s to t scales by sqrt(a_ts)
    mean = (ab_s.sqrt() * (1 - a_ts) * x0 + a_ts.sqrt() * (1 - ab_s) * xt) / (1 - ab_t)
    var = (1 - ab_s) / (1 - ab_t) * (1 - a_ts)
    return mean, var


def posterior_skip_by_composing(x0, xt, t, s, betas):
    """Also right: the chapter's one-step posterior on a schedule whose single step t follows
    step s directly (the betas of the steps in between merged into one)."""
    abar = torch.cat([torch.ones(1, dtype=betas.dtype), torch.cumprod(1 - betas, dim=0)])
    means, variances = [], []
    for i in range(len(t)):
        ab_s, ab_t = abar[s[i] + 1], abar[t[i] + 1]
        if s[i] == -1:
            merged = (1 - ab_t).reshape(1)
            step = torch.tensor([0])
        else:
            merged = torch.stack([1 - ab_s, 1 - ab_t / ab_s])  # betas of a 2-step chain
            step = torch.tensor([1])
        mean, var = book_posterior(x0[i : i + 1], xt[i : i + 1], step, merged)
        means.append(mean)
        variances.append(var.expand_as(mean))
    return torch.cat(means), torch.cat(variances)


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
        check_posterior_skip,
        book_posterior_skip,
        posterior._SKIP_MISTAKES,
        reference=posterior._skip_reference,
        also_right=[posterior_skip_by_composing],
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


def test_posterior_skip_is_the_one_step_posterior_at_s_equal_t_minus_1():
    for x0, xt, t, _, betas in posterior._skip_cases():
        got = posterior._skip_reference(x0, xt, t, t - 1, betas)
        want = posterior._posterior_reference(x0, xt, t, betas)
        for g, w in zip(got, want, strict=True):
            assert torch.allclose(g, w.expand_as(g), rtol=1e-9, atol=1e-12)
