"""The chapter 11 checkers (ddpm.exercises.score) accept right answers (the reference and the
book's solutions), reject each typical mistake with its hint, and reject unsolved stubs and
garbage."""

import torch
from exercise_contract import Exercise, ExerciseContract

from ddpm.exercises import score as ex


# The book's solutions (book/11_score_matching.ipynb, exercises 11.1 and 11.2), written out again.
def mixture_score(xt, t, alphas_cumprod, centers, log_weights, s):
    abar = alphas_cumprod[t][:, None]  # [B, 1]
    v = abar * s**2 + 1 - abar  # the variance of every component of q_t
    diff = xt[:, None, :] - abar.sqrt()[:, :, None] * centers  # [B, K, d]
    w = torch.softmax(log_weights - 0.5 * (diff**2).sum(-1) / v, dim=1)  # responsibilities
    return -(w[:, :, None] * diff).sum(1) / v


def langevin_step(x, t, eps, noise, alphas_cumprod, eta):
    abar = alphas_cumprod[t].reshape(-1, *([1] * (x.ndim - 1)))
    score = -eps / (1 - abar).sqrt()
    delta = eta * (1 - abar)
    return x + delta / 2 * score + delta.sqrt() * noise


def mixture_score_by_autograd(xt, t, alphas_cumprod, centers, log_weights, s):
    """Another right answer: differentiate log q_t, written with torch.distributions."""
    abar = alphas_cumprod[t][:, None, None]
    x = xt.clone().requires_grad_(True)
    comp = torch.distributions.Normal(abar.sqrt() * centers, (abar * s**2 + 1 - abar).sqrt())
    logq = torch.logsumexp(log_weights + comp.log_prob(x[:, None, :]).sum(-1), dim=1)
    (grad,) = torch.autograd.grad(logq.sum(), x)
    return grad


class TestContract(ExerciseContract):
    exercises = (
        Exercise(ex.check_mixture_score, mixture_score, ex._MIXTURE_MISTAKES,
                 reference=ex._mixture_score_reference,
                 also_right=(mixture_score_by_autograd, ex._score_with())),
        Exercise(ex.check_langevin_step, langevin_step, ex._LANGEVIN_MISTAKES,
                 reference=ex._langevin_reference, also_right=(ex._langevin_with(),)),
    )  # fmt: skip


def test_garbage_is_rejected():
    assert not ex.check_mixture_score(lambda xt, *a: torch.zeros_like(xt), verbose=False)
    assert not ex.check_mixture_score(lambda xt, *a: -xt, verbose=False)  # N(0, I)'s score
    assert not ex.check_mixture_score(lambda *a: "hello", verbose=False)
    assert not ex.check_langevin_step(lambda x, *a: x, verbose=False)
    assert not ex.check_langevin_step(lambda x, *a: x[:1], verbose=False)


def test_the_mixture_cases_can_tell_the_mistakes_apart():
    """s is neither 0 nor 1 and the weights are unequal in every case (else the variance and
    weight mistakes would coincide with the right answer), and several components compete
    (responsibilities not all 0 or 1) somewhere in each case."""
    for xt, t, abar, centers, log_w, s in ex._mixture_cases():
        assert 0 < s < 1 and log_w.exp().std() > 0.05
        assert torch.allclose(log_w.exp().sum(), torch.tensor(1.0, dtype=torch.float64))
        assert {0, len(abar) - 1} <= set(t.tolist())
        a = abar[t][:, None]
        diff = xt[:, None, :] - a.sqrt()[:, :, None] * centers
        w = torch.softmax(log_w - 0.5 * (diff**2).sum(-1) / (a * s**2 + 1 - a), dim=1)
        assert ((w > 0.05) & (w < 0.95)).any()


def test_the_score_is_minus_eps_over_sqrt_one_minus_abar_for_a_single_gaussian():
    """With one component the mixture is N(mu, s^2 I): its score times -sqrt(1 - abar) is
    chapter 5's optimal noise predictor (eq. toy-opt-eps), the relation the chapter asserts."""
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    gen = torch.Generator().manual_seed(0)
    mu, s = torch.tensor([[0.5, -0.3]], dtype=torch.float64), 0.4
    xt = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 998, 999])
    score = ex._mixture_score_reference(xt, t, abar, mu, torch.zeros(1, dtype=torch.float64), s)
    a = abar[t][:, None]
    eps_star = (1 - a).sqrt() * (xt - a.sqrt() * mu) / (a * s**2 + 1 - a)
    assert torch.allclose(-(1 - a).sqrt() * score, eps_star, atol=1e-12)


def test_a_langevin_step_with_the_exact_score_keeps_a_gaussian_invariant():
    """The reason for the 1/2 and the square root: for q = N(0, v I), one step maps variance v
    to (1 - delta / (2 v))^2 v + delta = v + delta^2 / (4 v): invariant up to O(delta^2), while a
    drift of delta (no 1/2) or noise scaled by delta would shrink it by about delta."""
    abar = torch.tensor([0.5], dtype=torch.float64)
    v, eta = 1.0, 0.2  # delta = 0.1: the drift and noise mistakes give variances near 0.91
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(400_000, 1, generator=gen, dtype=torch.float64) * v**0.5
    eps = (1 - abar).sqrt() * x / v  # E[eps | x] for q_t = N(0, v): -sqrt(1 - abar) * score
    noise = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    t = torch.zeros(len(x), dtype=torch.long)
    var = ex._langevin_reference(x, t, eps, noise, abar, eta).var().item()
    delta = eta * 0.5
    assert abs(var - (v + delta**2 / (4 * v))) < 5 * v * (2 / len(x)) ** 0.5  # 5 std errors
