"""Checkers for chapter 7, training.

- Exercise 7.1, :func:`check_ema_update`: ``ema_update(ema, model, decay)``, the in-place
  exponential moving average of the weights that the paper samples with
  (``ddpm.train.ema_update``): ema <- decay * ema + (1 - decay) * model for parameters and
  floating-point buffers; integer buffers are copied.
- Exercise 7.2, :func:`check_warmup_lr`: ``lr_at(step, lr, warmup_steps)``, the learning rate of
  optimizer step ``step`` (counted from 1) with linear warmup (``ddpm.train.lr_at``).
- Exercise 7.3, :func:`check_train_step`: one optimizer step of Algorithm 1 as ``ddpm.train.train``
  takes it: warmup LR, L_simple (eq. 14), gradient clipping, Adam, then the EMA update.

The functions under test change modules and optimizers in place, so each checker runs them on
freshly built, seeded modules and compares the resulting weights (and losses) with those the
package's reference gives.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..diffusion import GaussianDiffusion
from ..schedules import linear_beta_schedule
from ..train import TrainConfig, ema_update, lr_at
from ..unet import UNet
from . import CheckResult, Mistake, grade

__all__ = ["check_ema_update", "check_train_step", "check_warmup_lr"]


def _flat(module: nn.Module) -> torch.Tensor:
    """Every entry of the state dict (parameters and buffers) as one float64 vector."""
    return torch.cat([v.detach().double().flatten() for v in module.state_dict().values()])


# --------------------------------------------------------------------------- Exercise 7.1


def _ema_pair(seed: int) -> tuple[nn.Module, nn.Module]:
    """Two small nets with random weights and BatchNorm buffers (float running stats and an
    integer batch counter): (ema, model), the EMA frozen as in the training loop."""
    gen = torch.Generator().manual_seed(seed)
    nets = []
    for count in (3, 10):  # num_batches_tracked: 3 in the EMA, 10 in the model
        net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
        with torch.no_grad():
            for value in net.state_dict().values():
                if value.is_floating_point():
                    value.copy_(torch.randn(value.shape, generator=gen))
            net[1].num_batches_tracked.fill_(count)
        nets.append(net)
    ema, model = nets
    ema.requires_grad_(False)
    return ema, model


def _run_ema(fn: Callable, seed: int, decay: float, calls: int) -> torch.Tensor:
    """Apply ``fn(ema, model, decay)`` ``calls`` times; return the EMA's and the model's state
    as one vector (the model must not change)."""
    ema, model = _ema_pair(seed)
    with torch.no_grad():
        for _ in range(calls):
            fn(ema, model, decay)
    return torch.cat([_flat(ema), _flat(model)])


def _ema_with(swap: bool = False, buffers: bool = True, int_average: bool = False,
              in_place: bool = True) -> Callable:  # fmt: skip
    """An EMA update built from the pieces given (defaults: the right ones)."""

    def fn(ema, model, decay):
        keep = 1.0 - decay if swap else decay
        pairs = list(zip(ema.parameters(), model.parameters(), strict=True))
        if buffers:
            pairs += list(zip(ema.buffers(), model.buffers(), strict=True))
        for e, p in pairs:
            if not e.is_floating_point() and not int_average:
                new = p.clone()
            else:
                new = keep * e + (1.0 - keep) * p
            if in_place:
                e.copy_(new)  # an integer buffer truncates an averaged value

    return fn


_EMA_MISTAKES = [
    Mistake("the weights are swapped: the EMA keeps `decay` of its own value and takes only "
            "1 - decay of the model's (ema <- decay * ema + (1 - decay) * model).",
            _ema_with(swap=True)),
    Mistake("nothing changed in `ema`: update its tensors in place (e.g. `e.lerp_(p, 1 - decay)` "
            "or `e.mul_(decay).add_(p, alpha=1 - decay)`); assigning a new tensor to a loop "
            "variable leaves the module as it was.", _ema_with(in_place=False)),
    Mistake("the buffers were left out: floating-point buffers (such as BatchNorm's running "
            "statistics) are averaged too, loop over `ema.buffers()` as well as the parameters.",
            _ema_with(buffers=False)),
    Mistake("integer buffers (BatchNorm's `num_batches_tracked`) are counters, not weights: "
            "copy them from the model instead of averaging them.", _ema_with(int_average=True)),
]  # fmt: skip

_EMA_CASES = [(0, 0.9, 1), (1, 0.5, 3), (2, 0.999, 2), (3, 0.0, 1)]


def check_ema_update(fn: Callable, verbose: bool = True) -> CheckResult:
    """Grade ``fn(ema, model, decay) -> None`` (updates ``ema`` in place, called under no_grad)."""
    return grade(
        "7.1 (EMA update)",
        lambda *case: _run_ema(fn, *case),
        lambda *case: _run_ema(ema_update, *case),
        _EMA_CASES,
        [Mistake(m.hint, lambda *case, f=m.fn: _run_ema(f, *case)) for m in _EMA_MISTAKES],
        atol=1e-6,
        rtol=1e-6,
        verbose=verbose,
    )


# --------------------------------------------------------------------------- Exercise 7.2


def _schedule(fn: Callable, lr: float, warmup_steps: int, steps: tuple) -> torch.Tensor:
    """``fn(step, lr, warmup_steps)`` at each step, as a float64 vector."""
    return torch.tensor([float(fn(s, lr, warmup_steps)) for s in steps], dtype=torch.float64)


def _lr_with(shift: int = 0, cap: bool = True, warmup: bool = True) -> Callable:
    def fn(step, lr, warmup_steps):
        if not warmup or warmup_steps == 0:
            return lr
        ratio = (step - shift) / warmup_steps
        return lr * (min(1.0, ratio) if cap else ratio)

    return fn


_LR_MISTAKES = [
    Mistake("off by one: the first optimizer step is step 1 and already gets lr / warmup_steps; "
            "with (step - 1) the first update is wasted at LR 0 and the warmup ends a step late.",
            _lr_with(shift=1)),
    Mistake("after the warmup the LR stays at `lr`: cap the ratio, lr * min(1, step / "
            "warmup_steps).", _lr_with(cap=False)),
    Mistake("there is no warmup: the LR must ramp up linearly, from lr / warmup_steps at step 1 "
            "to lr at step warmup_steps.", _lr_with(warmup=False)),
]  # fmt: skip

_LR_CASES = [
    (2e-4, 5000, (1, 2, 2500, 4999, 5000, 5001, 800_000)),
    (1e-3, 200, tuple(range(1, 401, 7))),
    (1e-3, 0, (1, 2, 100)),  # warmup_steps = 0: no warmup
    (0.5, 1, (1, 2, 3)),
]


def check_warmup_lr(fn: Callable, verbose: bool = True) -> CheckResult:
    """Grade ``fn(step, lr, warmup_steps) -> float`` (step counted from 1) against lr_at."""
    return grade(
        "7.2 (warmup LR)",
        lambda *case: _schedule(fn, *case),
        lambda *case: _schedule(lr_at, *case),
        _LR_CASES,
        [Mistake(m.hint, lambda *case, f=m.fn: _schedule(f, *case)) for m in _LR_MISTAKES],
        atol=1e-12,
        rtol=1e-9,
        verbose=verbose,
    )


# --------------------------------------------------------------------------- Exercise 7.3

_DIFFUSION = GaussianDiffusion(linear_beta_schedule(1000))


def _reference_step(model, ema, optimizer, diffusion, batch, step, config) -> float:
    """One step of ddpm.train.train: LR, L_simple, backward, clip, Adam, EMA."""
    x0, t, noise = batch
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step, config.lr, config.warmup_steps)
    loss = diffusion.training_losses(model, x0, t=t, noise=noise).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    max_norm = config.grad_clip if config.grad_clip > 0 else math.inf
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    ema_update(ema, model, config.ema_decay)
    return loss.item()


def _step_with(warmup: bool = True, clip: bool = True, zero_grad: bool = True,
               ema_first: bool = False) -> Callable:  # fmt: skip
    """A training step built from the pieces given (defaults: the right ones)."""

    def fn(model, ema, optimizer, diffusion, batch, step, config):
        x0, t, noise = batch
        lr = lr_at(step, config.lr, config.warmup_steps) if warmup else config.lr
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = diffusion.training_losses(model, x0, t=t, noise=noise).mean()
        if zero_grad:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        if ema_first:
            ema_update(ema, model, config.ema_decay)
        optimizer.step()
        if not ema_first:
            ema_update(ema, model, config.ema_decay)
        return loss.item()

    return fn


def _run_steps(fn: Callable, seed: int, grad_clip: float, warmup_steps: int,
               n_steps: int) -> torch.Tensor:  # fmt: skip
    """``n_steps`` calls of ``fn`` on a small seeded digits UNet (SGD with momentum); returns
    the losses, the model's and the EMA's weights as one vector."""
    config = TrainConfig(lr=0.05, warmup_steps=warmup_steps, grad_clip=grad_clip, ema_decay=0.5)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UNet.from_preset("digits", ch=8)
    ema = UNet.from_preset("digits", ch=8).eval().requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    # SGD with momentum, not Adam: Adam divides by the gradients' running RMS, so float32
    # rounding in a correct loss written by hand could move weights with near-zero gradients
    # by a whole LR. Every step of the solution is the same with either optimizer.
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9)
    gen = torch.Generator().manual_seed(seed + 1)
    losses = []
    for step in range(1, n_steps + 1):
        x0 = torch.rand((8, 1, 8, 8), generator=gen) * 2 - 1
        t = torch.randint(0, _DIFFUSION.num_timesteps, (8,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        losses.append(float(fn(model, ema, optimizer, _DIFFUSION, (x0, t, noise), step, config)))
    return torch.cat([torch.tensor(losses, dtype=torch.float64), _flat(model), _flat(ema)])


_STEP_MISTAKES = [
    Mistake("the learning rate is not warmed up: set every param group's 'lr' to "
            "lr_at(step, config.lr, config.warmup_steps) before the optimizer steps.",
            _step_with(warmup=False)),
    Mistake("the gradients are not clipped: call torch.nn.utils.clip_grad_norm_(model."
            "parameters(), config.grad_clip) after backward() and before optimizer.step() "
            "(clipping after the step has no effect on it).", _step_with(clip=False)),
    Mistake("the gradients accumulate across steps: call optimizer.zero_grad() before "
            "backward(), since PyTorch adds new gradients to the old ones.",
            _step_with(zero_grad=False)),
    Mistake("the EMA is updated before optimizer.step(), so it averages the weights of the "
            "previous step: update it after the step.", _step_with(ema_first=True)),
]  # fmt: skip

# (seed, grad_clip, warmup_steps, n_steps): a tight clip so that clipping binds, a long warmup
# so that the warmed-up LR differs from config.lr, several steps so that stale gradients show.
_STEP_CASES = [(0, 0.05, 10, 3), (1, 1.0, 2, 3), (2, 0.01, 1000, 2)]


def check_train_step(fn: Callable, verbose: bool = True) -> CheckResult:
    """Grade ``fn(model, ema, optimizer, diffusion, batch, step, config) -> float`` (the loss);
    ``batch = (x0, t, noise)``, ``step`` counted from 1, ``config`` a TrainConfig."""
    return grade(
        "7.3 (training step)",
        lambda *case: _run_steps(fn, *case),
        lambda *case: _run_steps(_reference_step, *case),
        _STEP_CASES,
        [Mistake(m.hint, lambda *case, f=m.fn: _run_steps(f, *case)) for m in _STEP_MISTAKES],
        atol=1e-5,
        rtol=1e-4,
        verbose=verbose,
    )
