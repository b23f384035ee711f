"""Checkers of chapter 1 (forward process): they accept right answers and name typical mistakes."""

import torch
from exercise_contract import Exercise, ExerciseContract

from ddpm.exercises.forward import (
    _ALPHA_BAR_SNR_MISTAKES,
    _ZERO_TERMINAL_SNR_MISTAKES,
    _zero_terminal_snr_reference,
    check_alpha_bar_snr,
    check_zero_terminal_snr,
)
from ddpm.schedules import cosine_beta_schedule, linear_beta_schedule

# --------------------------------------------------------------------------- Exercise 1.1


def notebook_zero_terminal_snr(betas):
    """The solution printed in book/01_forward_process.ipynb (Exercise 1.1)."""
    s = torch.cumprod(1 - betas, dim=0).sqrt()  # sqrt(alpha-bar_t)
    s = (s - s[-1]) * s[0] / (s[0] - s[-1])  # s[0] kept, s[-1] moved to 0
    abar = s**2
    alphas = abar / torch.cat([abar.new_ones(1), abar[:-1]])
    return 1 - alphas


def zero_terminal_snr_in_log_space(betas):
    """Also right: the same rescaling, the alphas as a ratio in log space (beta_T = 1 exactly)."""
    s = torch.exp(0.5 * torch.cumsum(torch.log1p(-betas), dim=0))
    s = (s - s[-1]) / (s[0] - s[-1]) * s[0]
    log_abar = 2 * torch.log(s[:-1])
    alphas = torch.exp(log_abar - torch.cat([log_abar.new_zeros(1), log_abar[:-1]]))
    return torch.cat([1 - alphas, betas.new_ones(1)])


def test_zero_terminal_snr_prints_its_verdict(capsys):
    check_zero_terminal_snr(notebook_zero_terminal_snr)
    assert "[PASS] Exercise 1.1" in capsys.readouterr().out


def test_zero_terminal_snr_keeps_the_first_step_and_ends_at_zero():
    """The reference itself: alpha-bar_T = 0, beta_T = 1, beta_1 unchanged, betas in (0, 1]."""
    for betas in (linear_beta_schedule(1000), cosine_beta_schedule(1000)):
        new = _zero_terminal_snr_reference(betas)
        abar = torch.cumprod(1 - new, dim=0)
        assert abar[-1] == 0 and new[-1] == 1
        # beta_1 = 1 - alpha-bar_1 cancels: float64 rounding (1e-16) over beta_1 (4e-5) is ~1e-11
        assert torch.isclose(new[0], betas[0], rtol=1e-9, atol=0)
        assert (new[:-1] > 0).all() and (new[:-1] < 1).all()


def test_zero_terminal_snr_rejects_garbage():
    for garbage in (
        lambda betas: betas,  # unchanged: terminal SNR still > 0
        lambda betas: torch.cumprod(1 - betas, 0),  # alpha-bar instead of the betas
        lambda betas: betas[:-1],  # wrong length
        lambda betas: None,
    ):
        result = check_zero_terminal_snr(garbage, verbose=False)
        assert not result
        assert "Hint" not in result.message


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
            check_zero_terminal_snr,
            notebook_zero_terminal_snr,
            _ZERO_TERMINAL_SNR_MISTAKES,
            also_right=[zero_terminal_snr_in_log_space],
        ),
        Exercise(
            check_alpha_bar_snr,
            notebook_alpha_bar_snr,
            _ALPHA_BAR_SNR_MISTAKES,
            also_right=[alpha_bar_snr_in_log_space],
        ),
    )
