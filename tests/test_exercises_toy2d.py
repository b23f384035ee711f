"""Checkers of chapter 5 (DDPM in two dimensions): they accept right answers and name typical
mistakes."""

import torch
from exercise_contract import Exercise, ExerciseContract

from ddpm.exercises.toy2d import (
    _TRAINING_LOSS_MISTAKES,
    _X0_LOSS_MISTAKES,
    check_training_loss,
    check_x0_loss,
)

# --------------------------------------------------------------------------- Exercise 5.1


def notebook_training_loss(model, x0, t, noise, betas):
    """The solution printed in book/05_ddpm_2d.ipynb (Exercise 5.1)."""
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    abar = alphas_cumprod[t].to(x0.dtype)[:, None]
    xt = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    return ((model(xt, t) - noise) ** 2).mean()


def training_loss_with_the_package(model, x0, t, noise, betas):
    """Also right: q_sample from the package, then the mean squared error."""
    from ddpm import GaussianDiffusion

    xt = GaussianDiffusion(betas).q_sample(x0, t, noise)
    return torch.nn.functional.mse_loss(model(xt, t), noise)


def test_training_loss_prints_its_verdict(capsys):
    check_training_loss(notebook_training_loss)
    assert "[PASS] Exercise 5.1" in capsys.readouterr().out


def test_training_loss_rejects_garbage():
    for garbage in (
        lambda model, x0, t, noise, betas: torch.tensor(0.25),
        lambda model, x0, t, noise, betas: ((model(x0, t) - noise) ** 2).mean(),  # no noising
        lambda model, x0, t, noise, betas: "a loss",
    ):
        assert not check_training_loss(garbage, verbose=False)


# --------------------------------------------------------------------------- Exercise 5.2


def notebook_x0_loss(model, x0, t, noise, betas):
    """The solution printed in book/05_ddpm_2d.ipynb (Exercise 5.2)."""
    abar = torch.cumprod(1 - betas, dim=0)[t].to(x0.dtype)[:, None]
    xt = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    snr = abar[:, 0] / (1 - abar[:, 0])
    return snr * ((x0 - model(xt, t)) ** 2).mean(dim=1)


def x0_loss_through_eps(model, x0, t, noise, betas):
    """Also right: turn the x0 prediction into an eps prediction and take L_simple per example
    (the identity the weight stands for)."""
    abar = torch.cumprod(1 - betas, dim=0)[t].to(x0.dtype)[:, None]
    xt = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    eps_hat = (xt - abar.sqrt() * model(xt, t)) / (1 - abar).sqrt()
    return ((noise - eps_hat) ** 2).mean(dim=1)


def test_x0_loss_prints_its_verdict(capsys):
    check_x0_loss(notebook_x0_loss)
    assert "[PASS] Exercise 5.2" in capsys.readouterr().out


def test_x0_loss_rejects_garbage():
    for garbage in (
        lambda model, x0, t, noise, betas: torch.zeros(len(x0)),
        lambda model, x0, t, noise, betas: ((model(x0, t) - x0) ** 2).mean(dim=1),  # no noise
        lambda model, x0, t, noise, betas: "a loss",
    ):
        result = check_x0_loss(garbage, verbose=False)
        assert not result
        assert "Hint" not in result.message


class TestContract(ExerciseContract):
    """Right answers pass, each mistake gets its hint, a stub is "not solved yet"."""

    exercises = (
        Exercise(
            check_training_loss,
            notebook_training_loss,
            _TRAINING_LOSS_MISTAKES,
            also_right=[training_loss_with_the_package],
        ),
        Exercise(
            check_x0_loss,
            notebook_x0_loss,
            _X0_LOSS_MISTAKES,
            also_right=[x0_loss_through_eps],
        ),
    )
