"""Tests for the chapter 7 checkers (ddpm.exercises.training)."""

import math

import pytest
import torch
from exercise_contract import Exercise, ExerciseContract

from ddpm.exercises import training as ex
from ddpm.train import ema_update as package_ema
from ddpm.train import lr_at as package_lr


# The book's solutions (book/07_training.ipynb), written out again.
@torch.no_grad()
def ema_update(ema, model, decay):
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.mul_(decay).add_(p, alpha=1 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        if e.is_floating_point():
            e.mul_(decay).add_(b, alpha=1 - decay)
        else:
            e.copy_(b)


def lr_at(step, lr, warmup_steps):
    if warmup_steps == 0:
        return lr
    return lr * min(1.0, step / warmup_steps)


def train_step(model, ema, optimizer, diffusion, batch, step, config):
    x0, t, noise = batch
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step, config.lr, config.warmup_steps)
    abar = diffusion.alphas_cumprod[t].float().reshape(-1, 1, 1, 1)
    xt = abar.sqrt() * x0 + (1 - abar).sqrt() * noise  # eq. 4, by hand
    loss = ((noise - model(xt, t)) ** 2).mean()  # L_simple (eq. 14), by hand
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    ema_update(ema, model, config.ema_decay)
    return loss.item()


class TestContract(ExerciseContract):
    exercises = (
        Exercise(ex.check_ema_update, ema_update, ex._EMA_MISTAKES, reference=package_ema),
        Exercise(ex.check_warmup_lr, lr_at, ex._LR_MISTAKES, reference=package_lr),
        Exercise(ex.check_train_step, train_step, ex._STEP_MISTAKES, reference=ex._reference_step),
    )


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_garbage_is_rejected():
    def halve(ema, model, decay):
        for e in ema.parameters():
            e.mul_(0.5)

    def no_op_step(model, ema, optimizer, diffusion, batch, step, config):
        return 1.0

    for check, fn in [
        (ex.check_ema_update, halve),
        (ex.check_ema_update, lambda ema, model, decay: "hello"),  # returns junk, changes nothing
        (ex.check_warmup_lr, lambda step, lr, warmup: "fast"),
        (ex.check_warmup_lr, lambda step, lr, warmup: lr * math.exp(-step)),
        (ex.check_warmup_lr, lambda step, lr, warmup: lr * step / warmup),  # 0 warmup: raises
        (ex.check_train_step, no_op_step),
    ]:
        result = check(fn, verbose=False)
        assert not result, fn


def test_ema_update_must_leave_the_model_alone():
    def also_changes_model(ema, model, decay):  # right EMA, but it moves the model towards it
        ema_update(ema, model, decay)
        ema_update(model, ema, decay)

    result = ex.check_ema_update(also_changes_model, verbose=False)
    assert not result and "differs from the reference" in result.message


def test_case_design_separates_the_mistakes():
    """Each mistake's output differs from the reference on some case (else its hint could
    never be shown), and the reference's own helpers agree with the package."""
    checks = [
        (ex._run_ema, ex.ema_update, ex._EMA_CASES, ex._EMA_MISTAKES),
        (ex._schedule, ex.lr_at, ex._LR_CASES, ex._LR_MISTAKES),
        (ex._run_steps, ex._reference_step, ex._STEP_CASES, ex._STEP_MISTAKES),
    ]
    for run, reference, cases, mistakes in checks:
        for mistake in mistakes:
            assert any(
                not torch.allclose(run(mistake.fn, *c), run(reference, *c), atol=1e-5)
                for c in cases
            ), mistake.hint
    assert ex._ema_with() is not None
    for case in ex._EMA_CASES:
        # float32 weights of size ~1 (returned as float64): lerp_ and the formula written out
        # round differently, by a few 2^-24; float64's default tolerance (1e-7) is too tight
        torch.testing.assert_close(ex._run_ema(ex._ema_with(), *case),
                                   ex._run_ema(ex.ema_update, *case),
                                   rtol=1e-6, atol=1e-6)  # fmt: skip
    for case in ex._STEP_CASES:
        torch.testing.assert_close(ex._run_steps(ex._step_with(), *case),
                                   ex._run_steps(ex._reference_step, *case))  # fmt: skip
