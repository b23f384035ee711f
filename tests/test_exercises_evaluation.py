"""Tests for the chapter 10 checkers (ddpm.exercises.evaluation)."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from exercise_contract import Exercise, ExerciseContract

from ddpm.exercises import evaluation as ex
from ddpm.metrics import frechet_distance_gaussians


# The book's solutions (book/10_evaluation.ipynb), written out again.
def frechet_distance(mu1, sigma1, mu2, sigma2):
    covmean = scipy.linalg.sqrtm(sigma1.numpy() @ sigma2.numpy()).real
    mean_term = ((mu1 - mu2) ** 2).sum().item()
    return mean_term + float(np.trace(sigma1.numpy() + sigma2.numpy() - 2 * covmean))


def nll_to_bits_per_dim(nll_nats, image_shape, continuous=False):
    dims = math.prod(image_shape)
    bpd = nll_nats / (dims * math.log(2))
    if continuous:
        bpd = bpd + math.log2(127.5)  # -log2 of the bin width 2 / 255
    return bpd


class TestContract(ExerciseContract):
    exercises = (
        Exercise(
            ex.check_frechet_distance,
            frechet_distance,
            ex._FRECHET_MISTAKES,
            reference=ex._frechet_with(),
        ),
        Exercise(
            ex.check_nll_to_bits_per_dim,
            nll_to_bits_per_dim,
            ex._BPD_MISTAKES,
            reference=ex._bpd_with(),
        ),
    )


def test_complex_result_is_rejected_with_a_hint():
    def keeps_imaginary_part(mu1, sigma1, mu2, sigma2):
        covmean = scipy.linalg.sqrtm(sigma1.numpy() @ sigma2.numpy()).astype(complex)
        return ((mu1 - mu2) ** 2).sum().item() + np.trace(
            sigma1.numpy() + sigma2.numpy() - 2 * covmean
        )

    result = ex.check_frechet_distance(keeps_imaginary_part, verbose=False)
    assert not result
    assert "real part" in result.message


def test_garbage_is_rejected():
    assert not ex.check_frechet_distance(lambda m1, s1, m2, s2: 0.0, verbose=False)
    assert not ex.check_frechet_distance(lambda m1, s1, m2, s2: "hello", verbose=False)
    assert not ex.check_frechet_distance(lambda m1, s1, m2, s2: torch.ones(3), verbose=False)
    assert not ex.check_nll_to_bits_per_dim(lambda n, s, c=False: n, verbose=False)
    assert not ex.check_nll_to_bits_per_dim(lambda n, s, c=False: n.sum(), verbose=False)
    assert not ex.check_nll_to_bits_per_dim(lambda n, s, c=False: None, verbose=False)


def test_references_agree_with_the_package_and_the_closed_forms():
    for mu1, s1, mu2, s2 in ex._frechet_cases():
        want = frechet_distance_gaussians(mu1.numpy(), s1.numpy(), mu2.numpy(), s2.numpy())
        assert ex._frechet_reference(mu1, s1, mu2, s2) == pytest.approx(want)
        assert ex._frechet_with()(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-9, abs=1e-9)
    # 1-D Gaussians: (m1 - m2)^2 + (s1 - s2)^2 with standard deviations s1, s2
    assert ex._frechet_reference([0.0], [[4.0]], [1.0], [[9.0]]) == pytest.approx(1.0 + 1.0)
    nll = torch.tensor([100.0, 200.0], dtype=torch.float64)
    want = nll / (64 * math.log(2))
    assert torch.allclose(ex._bpd_reference(nll, (1, 8, 8)), want)
    assert torch.allclose(ex._bpd_reference(nll, (1, 8, 8), True), want + math.log2(127.5))


def test_cases_separate_the_mistakes():
    """Every mistake differs from the reference on at least one case (else it can't be named)."""
    for mistakes, reference, cases in [
        (ex._FRECHET_MISTAKES, ex._frechet_reference, ex._frechet_cases()),
        (ex._BPD_MISTAKES, ex._bpd_reference, ex._bpd_cases()),
    ]:
        for mistake in mistakes:
            assert any(
                not np.allclose(
                    np.asarray(mistake.fn(*case), dtype=float),
                    np.asarray(reference(*case), dtype=float),
                    rtol=1e-4,
                )
                for case in cases
            ), mistake.hint
