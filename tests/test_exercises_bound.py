"""Checkers of chapter 3 (the variational bound): they accept the reference and the book's own
solutions, reject each typical mistake with its hint, an unsolved stub, and garbage."""

import math

import torch
from exercise_contract import Exercise, ExerciseContract, each_exercise

from ddpm.diffusion import normal_kl
from ddpm.exercises.bound import (
    BPD_MISTAKES,
    KL_MISTAKES,
    bits_per_dim_reference,
    check_bits_per_dim,
    check_normal_kl,
)


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


EXERCISES = (
    Exercise(check_normal_kl, kl_diag_gaussians, KL_MISTAKES, reference=normal_kl),
    Exercise(check_bits_per_dim, bits_per_dim, BPD_MISTAKES, reference=bits_per_dim_reference),
)


class TestContract(ExerciseContract):
    exercises = EXERCISES


@each_exercise(EXERCISES)
def test_garbage_rejected(exercise):
    for garbage in (
        lambda *args: torch.tensor(0.1234),
        lambda *args: "nats",
        lambda *args: torch.full_like(torch.as_tensor(args[0]), float("nan")),
    ):
        result = exercise.check(garbage, verbose=False)
        assert not result
        assert "Hint" not in result.message  # no mistake claims a random answer


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
