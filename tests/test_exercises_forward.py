"""Checkers of chapter 1 (forward process): they accept right answers and name typical mistakes."""

import torch
from exercise_contract import Exercise, ExerciseContract

from ddpm.exercises.forward import (
    _ALPHA_BAR_SNR_MISTAKES,
    _Q_SAMPLE_MISTAKES,
    check_alpha_bar_snr,
    check_q_sample,
)

# --------------------------------------------------------------------------- Exercise 1.1


def notebook_q_sample(x0, t, noise, alphas_cumprod):
    """The solution printed in book/01_forward_process.ipynb (Exercise 1.1)."""
    abar = alphas_cumprod[t].reshape(-1, *([1] * (x0.ndim - 1)))
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


def q_sample_float32_tables(x0, t, noise, alphas_cumprod):
    """Also right: indexing first and computing the coefficients in the data's dtype."""
    abar = alphas_cumprod.to(x0.dtype)[t]
    shape = (len(t),) + (1,) * (x0.ndim - 1)
    return torch.sqrt(abar).view(shape) * x0 + torch.sqrt(1.0 - abar).view(shape) * noise


def test_q_sample_prints_its_verdict(capsys):
    check_q_sample(notebook_q_sample)
    assert "[PASS] Exercise 1.1" in capsys.readouterr().out


def test_q_sample_rejects_garbage():
    for garbage in (
        lambda x0, t, noise, ab: torch.zeros_like(x0),
        lambda x0, t, noise, ab: noise,  # pure noise, whatever t
        lambda x0, t, noise, ab: x0,  # no noise at all
        lambda x0, t, noise, ab: "x_t",
        lambda x0, t, noise, ab: x0.flatten(),
    ):
        result = check_q_sample(garbage, verbose=False)
        assert not result
        assert "Hint" not in result.message


def test_q_sample_reports_a_broadcasting_bug():
    """Forgetting to reshape alpha-bar[t] to [B, 1, ..., 1] crashes on images: say so."""

    def no_reshape(x0, t, noise, alphas_cumprod):
        abar = alphas_cumprod[t]
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    result = check_q_sample(no_reshape, verbose=False)
    assert not result
    assert "raised RuntimeError" in result.message


# --------------------------------------------------------------------------- Exercise 1.2


def notebook_alpha_bar_snr(betas):
    """The solution printed in book/01_forward_process.ipynb (Exercise 1.2)."""
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return alphas_cumprod, alphas_cumprod / (1.0 - alphas_cumprod)


def alpha_bar_snr_in_log_space(betas):
    """Also right: a sum of logs instead of a product."""
    abar = torch.exp(torch.cumsum(torch.log1p(-betas), dim=0))
    return abar, 1.0 / torch.expm1(-torch.log(abar))


def test_alpha_bar_snr_catches_float32():
    """A learner who casts the betas to float32 is told to keep the schedule in float64."""

    def in_float32(betas):
        abar = torch.cumprod(1.0 - betas.float(), dim=0)
        return abar, abar / (1.0 - abar)

    result = check_alpha_bar_snr(in_float32, verbose=False)
    assert not result
    assert "float32" in result.message and "Keep the schedule in float64" in result.message


def test_alpha_bar_snr_rejects_garbage():
    for garbage in (
        lambda betas: 1 - betas,  # one value instead of two
        lambda betas: (1 - betas, betas),
        lambda betas: (torch.cumprod(1 - betas, 0), torch.cumprod(1 - betas, 0)),  # SNR missing
        lambda betas: (torch.cumprod(1 - betas, 0)[:-1], betas[:-1]),  # wrong length
        lambda betas: None,
    ):
        result = check_alpha_bar_snr(garbage, verbose=False)
        assert not result
        assert "Hint" not in result.message


class TestContract(ExerciseContract):
    """Right answers pass, each mistake gets its hint, a stub is "not solved yet"."""

    exercises = (
        Exercise(
            check_q_sample,
            notebook_q_sample,
            _Q_SAMPLE_MISTAKES,
            also_right=[q_sample_float32_tables],
        ),
        Exercise(
            check_alpha_bar_snr,
            notebook_alpha_bar_snr,
            _ALPHA_BAR_SNR_MISTAKES,
            also_right=[alpha_bar_snr_in_log_space],
        ),
    )
