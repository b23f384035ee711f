"""Checkers for chapter 12, class-conditional DDPM and classifier-free guidance.

- Exercise 12.1, :func:`check_guided_eps`: the guided noise prediction
  eps_w = (1 + w) eps(x, t, y) - w eps(x, t, null) (Ho & Salimans 2022), from a conditional
  ``model(x, t, y)`` whose null class is ``num_classes``.
- Exercise 12.2, :func:`check_drop_labels`: label dropout for training it: each label replaced
  by the null class ``num_classes`` where its uniform draw ``u`` is below ``p``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import CheckResult, Mistake, grade

__all__ = ["check_drop_labels", "check_guided_eps"]


# --------------------------------------------------------------------------- Exercise 12.1
class _ToyConditional:
    """A stand-in for a conditional UNet: eps(x, t, y) differs per label and per step, the null
    class (``num_classes``, or ``y=None``) included. Deterministic, so any right way of calling
    it (one batched call or two) gives the same numbers."""

    def __init__(self, num_classes: int, seed: int):
        gen = torch.Generator().manual_seed(seed)
        self.num_classes = num_classes
        self.scale = 0.5 + torch.rand(num_classes + 1, generator=gen, dtype=torch.float64)
        self.shift = torch.randn(num_classes + 1, generator=gen, dtype=torch.float64)

    def __call__(self, x, t, y=None):
        x = torch.as_tensor(x, dtype=torch.float64)
        if y is None:
            y = torch.full((x.shape[0],), self.num_classes)
        y = torch.as_tensor(y).long()
        if y.ndim == 0:
            y = y.expand(x.shape[0])
        if tuple(y.shape) != (x.shape[0],) or y.min() < 0 or y.max() > self.num_classes:
            raise ValueError(f"y must be [B] labels in 0..{self.num_classes}")
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1, *([1] * (x.ndim - 1)))
        a = self.scale[y].reshape(-1, *([1] * (x.ndim - 1)))
        b = self.shift[y].reshape(-1, *([1] * (x.ndim - 1)))
        return torch.tanh(a * x + b) + 1e-3 * t * b


def _guided_cases() -> list[tuple]:
    """(model, x, t, y, w, num_classes). No w of 0 or 1, where some wrong formulas agree with
    the right one (w = 1: u + w (c - u) = c)."""
    gen = torch.Generator().manual_seed(120)
    cases = []
    for k, (batch, w), seed in zip((10, 3, 10), ((6, 0.7), (5, 2.5), (4, 4.0)), (1, 2, 3),
                                   strict=True):  # fmt: skip
        x = torch.randn(batch, 1, 4, 4, generator=gen, dtype=torch.float64)
        t = torch.randint(0, 1000, (batch,), generator=gen)
        y = torch.randint(0, k, (batch,), generator=gen)
        cases.append((_ToyConditional(k, seed), x, t, y, w, k))
    return cases


def _guided_reference(model, x, t, y, w, num_classes):
    cond = model(x, t, y)
    uncond = model(x, t, torch.full_like(y, num_classes))
    return (1 + w) * cond - w * uncond


def _guided_with(combine: Callable, *, null: bool = True):
    """eps from the conditional and unconditional predictions, combined by ``combine(c, u, w)``;
    ``null=False`` makes the 'unconditional' call with the labels y themselves."""

    def fn(model, x, t, y, w, num_classes):
        cond = model(x, t, y)
        uncond = model(x, t, torch.full_like(y, num_classes) if null else y)
        return combine(cond, uncond, w)

    return fn


_GUIDED_MISTAKES = [
    Mistake("the unconditional prediction needs the null class, label num_classes (the extra "
            "row of the label embedding): you called the model with the labels y twice, so "
            "eps(y) - eps(null) became 0 and the guidance term vanished.",
            _guided_with(lambda c, u, w: (1 + w) * c - w * u, null=False)),
    Mistake("conditional and unconditional are swapped: eps_w = (1 + w) eps(x, t, y) - w "
            "eps(x, t, null) moves away from the unconditional prediction, towards the class.",
            _guided_with(lambda c, u, w: (1 + w) * u - w * c)),
    Mistake("the weights w and 1 + w are swapped: the conditional prediction gets 1 + w, the "
            "unconditional one -w (they sum to 1, so w = 0 is the conditional model).",
            _guided_with(lambda c, u, w: w * c - (1 + w) * u)),
    Mistake("that is eps(null) + w (eps(y) - eps(null)), the convention with the guidance "
            "scale s = 1 + w (as in diffusers' guidance_scale); in this chapter's convention "
            "(Ho & Salimans' w) it is eps(y) + w (eps(y) - eps(null)), and w = 0 is the "
            "conditional model.",
            _guided_with(lambda c, u, w: u + w * (c - u))),
    Mistake("the unconditional prediction is missing: (1 + w) eps(x, t, y) only scales the "
            "conditional one; guidance subtracts w eps(x, t, null).",
            _guided_with(lambda c, u, w: (1 + w) * c)),
]  # fmt: skip


def check_guided_eps(guided_eps: Callable, *, verbose: bool = True) -> CheckResult:
    """Exercise 12.1: ``guided_eps(model, x, t, y, w, num_classes)`` returns
    (1 + w) model(x, t, y) - w model(x, t, null), null = num_classes for every image."""
    return grade("12.1", guided_eps, _guided_reference, _guided_cases(), _GUIDED_MISTAKES,
                 atol=1e-8, rtol=1e-6, verbose=verbose)  # fmt: skip


# --------------------------------------------------------------------------- Exercise 12.2
def _dropout_cases() -> list[tuple]:
    """(y, u, p, num_classes): the draws u straddle p, labels include 0 and num_classes - 1."""
    gen = torch.Generator().manual_seed(121)
    cases = []
    for k, p, batch in ((10, 0.1, 64), (10, 0.3, 40), (4, 0.5, 24)):
        y = torch.randint(0, k, (batch,), generator=gen)
        y[:2] = torch.tensor([0, k - 1])
        u = torch.rand(batch, generator=gen, dtype=torch.float64)
        u[2:4] = torch.tensor([p / 2, (1 + p) / 2])  # one dropped, one kept, at least
        cases.append((y, u, p, k))
    return cases


def _dropout_reference(y, u, p, num_classes):
    return torch.where(u < p, num_classes, y)


def _dropout_with(*, null=lambda k: k, keep_if_below=False, together=False):
    def fn(y, u, p, num_classes):
        drop = u < p
        if keep_if_below:
            drop = ~drop
        if together:
            drop = drop[:1].expand_as(drop)
        return torch.where(drop, null(num_classes), y)

    return fn


_DROPOUT_MISTAKES = [
    Mistake("the comparison is the wrong way round: a label is dropped when its draw u < p "
            "(probability p); you dropped it when u >= p, i.e. with probability 1 - p.",
            _dropout_with(keep_if_below=True)),
    Mistake("the null class is num_classes, the extra row of the label embedding; 0 is a real "
            "class (the digit 0), so the model would learn 'no label' as a 0.",
            _dropout_with(null=lambda k: 0)),
    Mistake("off by one: the classes are 0..num_classes-1, so num_classes - 1 is a real class "
            "(the digit 9); the null class is num_classes.", _dropout_with(null=lambda k: k - 1)),
    Mistake("-1 marks 'no label' in some datasets, but here the null class is a real index "
            "into the label embedding, num_classes (its extra row).",
            _dropout_with(null=lambda k: -1)),
    Mistake("each example is dropped on its own draw u_i; you dropped the whole batch together "
            "on the first draw, so a batch is all conditional or all unconditional.",
            _dropout_with(together=True)),
]  # fmt: skip


def check_drop_labels(drop_labels: Callable, *, verbose: bool = True) -> CheckResult:
    """Exercise 12.2: ``drop_labels(y, u, p, num_classes)`` replaces ``y[i]`` by the null class
    ``num_classes`` where ``u[i] < p``, and keeps it elsewhere."""
    return grade("12.2", drop_labels, _dropout_reference, _dropout_cases(), _DROPOUT_MISTAKES,
                 atol=0, rtol=0, verbose=verbose)  # fmt: skip
