"""Checkers for the book's coding exercises.

A checker runs a learner's function on a few fixed inputs and compares it with the reference
implementation from the ``ddpm`` package. When the answer is wrong it says *why*: each exercise
lists the typical mistakes (e.g. sqrt(alpha_t) where sqrt(alpha-bar_t) belongs, or an
off-by-one step), and if the learner's output equals what a mistake would give, the hint names
that mistake. Chapters call a checker right after the exercise::

    from ddpm.exercises.forward import check_zero_terminal_snr
    check_zero_terminal_snr(my_fn)       # prints a verdict and returns a CheckResult

A ``CheckResult`` is truthy when the answer is right, so the book's own solutions are tested with
``assert check_zero_terminal_snr(zero_terminal_snr)``. Each chapter's checkers live in a module
of this package.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["CheckResult", "Mistake", "grade"]


@dataclass
class Mistake:
    """A typical wrong answer: ``fn`` computes it from the same inputs, ``hint`` explains it."""

    hint: str
    fn: Callable[..., Any]


@dataclass
class CheckResult:
    """The verdict on one exercise; truthy when the answer is right."""

    exercise: str
    passed: bool
    message: str
    details: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        mark = "PASS" if self.passed else "NOT YET"
        return f"[{mark}] Exercise {self.exercise}: {self.message}"

    __repr__ = __str__


def _as_tensors(value) -> list[torch.Tensor]:
    if isinstance(value, (tuple, list)):
        return [torch.as_tensor(v) for v in value]
    return [torch.as_tensor(value)]


def _close(got, want, atol: float, rtol: float) -> tuple[bool, str]:
    """Compare outputs (a tensor or a tuple of tensors); return (equal, what differs)."""
    try:
        got_list, want_list = _as_tensors(got), _as_tensors(want)
    except (TypeError, ValueError, RuntimeError):
        return False, f"returned a {type(got).__name__}, expected tensor output"
    if len(got_list) != len(want_list):
        return False, f"returned {len(got_list)} values, expected {len(want_list)}"
    for i, (g, w) in enumerate(zip(got_list, want_list, strict=True)):
        label = f"output {i}" if len(want_list) > 1 else "the output"
        g, w = g.to(torch.float64), w.to(torch.float64)
        if g.shape != w.shape:  # a reference may return a broadcastable shape, e.g. [B, 1, 1, 1]
            try:
                if torch.broadcast_shapes(g.shape, w.shape) != g.shape:
                    raise RuntimeError
                w = w.expand(g.shape)
            except RuntimeError:
                return False, f"{label} has shape {tuple(g.shape)}, expected {tuple(w.shape)}"
        if not torch.isfinite(g).all() and torch.isfinite(w).all():
            return False, f"{label} contains NaN or inf"
        if not torch.allclose(g, w, atol=atol, rtol=rtol):
            err = (g - w).abs().max().item()
            return False, f"{label} differs from the reference by up to {err:.3g}"
    return True, ""


def grade(
    exercise: str,
    candidate: Callable[..., Any],
    reference: Callable[..., Any],
    cases: Sequence[tuple],
    mistakes: Sequence[Mistake] = (),
    *,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    verbose: bool = True,
) -> CheckResult:
    """Run ``candidate`` and ``reference`` on every argument tuple in ``cases`` and compare.

    On a mismatch, the first ``Mistake`` whose ``fn`` reproduces the candidate's output on every
    case supplies the hint. Exceptions in the candidate (including the ``NotImplementedError`` of
    an unsolved exercise) are reported, never raised. Prints the verdict when ``verbose``.
    """
    result = _grade(exercise, candidate, reference, cases, mistakes, atol, rtol)
    if verbose:
        print(result)
    return result


def _grade(exercise, candidate, reference, cases, mistakes, atol, rtol) -> CheckResult:
    outputs = []
    for args in cases:
        try:
            outputs.append(candidate(*_clone(args)))
        except NotImplementedError:
            return CheckResult(
                exercise,
                False,
                "not solved yet: replace the `raise "
                "NotImplementedError(...)` line with your code and run the cell.",
            )
        except Exception as err:  # a learner's bug: report it, don't crash the notebook
            return CheckResult(
                exercise, False, f"your function raised {type(err).__name__}: {err}".strip()
            )
    for args, got in zip(cases, outputs, strict=True):
        ok, why = _close(got, reference(*_clone(args)), atol, rtol)
        if ok:
            continue
        for mistake in mistakes:
            if all(
                _close(g, mistake.fn(*_clone(a)), atol, rtol)[0]
                for a, g in zip(cases, outputs, strict=True)
            ):
                return CheckResult(exercise, False, f"{why}. Hint: {mistake.hint}", [why])
        return CheckResult(exercise, False, f"{why} (on input {_describe(args)}).", [why])
    return CheckResult(exercise, True, f"correct on all {len(cases)} test inputs.")


def _clone(args: tuple) -> tuple:
    """Fresh copies of tensor arguments, so a candidate that edits its inputs can't fool us."""
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def _describe(args: tuple) -> str:
    parts = []
    for a in args:
        if isinstance(a, torch.Tensor):
            parts.append(f"tensor{tuple(a.shape)}" if a.numel() > 4 else f"{a.tolist()}")
        elif callable(a):
            parts.append(getattr(a, "__name__", "a function"))
        else:
            parts.append(repr(a))
    return "(" + ", ".join(parts) + ")"
