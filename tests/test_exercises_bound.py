"""Checkers of chapter 3 (the variational bound): they accept the reference and the book's own
solutions, reject each typical mistake with its hint, an unsolved stub, and garbage."""

import math

import pytest
import torch

from ddpm.diffusion import normal_kl
from ddpm.exercises.bound import (
    BPD_MISTAKES,
    KL_MISTAKES,
    bits_per_dim_reference,
    check_bits_per_dim,
    check_normal_kl,
)

CHECKERS = [
    (check_normal_kl, normal_kl, KL_MISTAKES),
    (check_bits_per_dim, bits_per_dim_reference, BPD_MISTAKES),
]
IDS = ["normal_kl", "bits_per_dim"]


# The solutions written in the notebook (book/03_variational_bound.ipynb), copied here.
def kl_diag_gaussians(mean1, logvar1, mean2, logvar2):
    return 0.5 * (
        logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
        - 1.0
    )


def bits_per_dim(total_nll_nats, shape):
    num_dims = math.prod(shape)  # batch size times dimensions per image
    return total_nll_nats / (num_dims * math.log(2.0))


@pytest.mark.parametrize(("check", "reference", "mistakes"), CHECKERS, ids=IDS)
def test_reference_passes(check, reference, mistakes):
    result = check(reference, verbose=False)
    assert result, result.message
    assert "correct" in result.message


@pytest.mark.parametrize(
    ("check", "solution"),
    [(check_normal_kl, kl_diag_gaussians), (check_bits_per_dim, bits_per_dim)],
    ids=IDS,
)
def test_notebook_solution_passes(check, solution):
    assert check(solution, verbose=False)


@pytest.mark.parametrize(("check", "reference", "mistakes"), CHECKERS, ids=IDS)
def test_each_mistake_rejected_with_its_hint(check, reference, mistakes):
    assert len(mistakes) >= 2
    for mistake in mistakes:
        result = check(mistake.fn, verbose=False)
        assert not result
        assert mistake.hint in result.message, (mistake.hint, result.message)


@pytest.mark.parametrize(("check", "reference", "mistakes"), CHECKERS, ids=IDS)
def test_stub_rejected(check, reference, mistakes):
    def stub(*args):
        raise NotImplementedError("Exercise 3.x: write your code here")

    result = check(stub, verbose=False)
    assert not result
    assert "not solved yet" in result.message


@pytest.mark.parametrize(("check", "reference", "mistakes"), CHECKERS, ids=IDS)
def test_garbage_rejected(check, reference, mistakes):
    for garbage in (
        lambda *args: torch.tensor(0.1234),
        lambda *args: "nats",
        lambda *args: torch.full_like(torch.as_tensor(args[0]), float("nan")),
    ):
        result = check(garbage, verbose=False)
        assert not result
        assert "Hint" not in result.message  # no mistake claims a random answer


def test_crashing_function_reported_not_raised():
    def crash(*args):
        raise RuntimeError("shape mismatch")

    result = check_normal_kl(crash, verbose=False)
    assert not result
    assert "RuntimeError" in result.message


def test_kl_is_zero_for_identical_gaussians_and_asymmetric():
    """Sanity of the reference the checker relies on."""
    m, lv = torch.tensor([0.3, -1.0]), torch.tensor([0.5, -2.0])
    assert torch.allclose(normal_kl(m, lv, m, lv), torch.zeros(2))
    a = normal_kl(m, lv, -m, -lv)
    b = normal_kl(-m, -lv, m, lv)
    assert not torch.allclose(a, b)


def test_bits_per_dim_uniform_is_eight():
    shape = (3, 1, 8, 8)
    total = math.prod(shape) * math.log(256.0)
    assert abs(float(bits_per_dim_reference(total, shape)) - 8.0) < 1e-12
