"""Checkers for chapter 6, the UNet.

- Exercise 6.1, :func:`check_timestep_embedding`: the sinusoidal embedding [B, dim] of the
  zero-based steps ``t`` [B] (``ddpm.timestep_embedding``), for an even ``dim``: the first half
  sin(t f_i), the second half cos(t f_i), with f_i = 10000 ** (-i / (half - 1)).
- Exercise 6.2, :func:`check_resblock_params`: the number of parameters of a
  ``ddpm.unet.ResBlock(in_ch, out_ch, temb_ch, ...)`` in closed form.
"""

from __future__ import annotations

import math

import torch

from ..unet import ResBlock, timestep_embedding
from . import CheckResult, Mistake, grade

__all__ = ["check_resblock_params", "check_timestep_embedding"]

# --------------------------------------------------------------------------- Exercise 6.1


def _embedding_with(
    base: float = 10000.0, denom_shift: int = 1, swap: bool = False, t_shift: int = 0
):
    """A sinusoidal embedding built from the pieces given (defaults: the right ones)."""

    def fn(t, dim):
        half = dim // 2
        i = torch.arange(half, dtype=torch.float32)
        freqs = torch.exp(-math.log(base) * i / max(half - denom_shift, 1))
        args = (t.to(torch.float32) + t_shift)[:, None] * freqs[None, :]
        parts = [torch.cos(args), torch.sin(args)] if swap else [torch.sin(args), torch.cos(args)]
        return torch.cat(parts, dim=1)

    return fn


_EMBEDDING_MISTAKES = [
    Mistake("sin and cos are swapped: the first half is sin(t f_i), the second cos(t f_i).",
            _embedding_with(swap=True)),
    Mistake("the exponent divides i by half; it must divide by half - 1, so that the slowest "
            "frequency is exactly 1/10000.", _embedding_with(denom_shift=0)),
    Mistake("the base is 1000; the frequencies are 10000 ** (-i / (half - 1)).",
            _embedding_with(base=1000.0)),
    Mistake("off by one step: embed the code index t itself (0..T-1), not t + 1.",
            _embedding_with(t_shift=1)),
]  # fmt: skip


def _embedding_cases() -> list[tuple]:
    return [
        (torch.tensor([0, 1, 2, 999]), 8),
        (torch.tensor([0, 10, 250, 500, 998, 999]), 32),
        (torch.tensor([0, 3, 999]), 128),
    ]


def check_timestep_embedding(fn, verbose: bool = True) -> CheckResult:
    """Grade ``fn(t, dim)`` (t: long [B], dim: even int) against ``ddpm.timestep_embedding``."""
    # float32: an argument t f_i of up to 999 radians is rounded (with f_i, an exp) to within a
    # few 2^-24 x 999, a few 1e-4 apart between two correct formulas; every mistake is >= 1e-2
    return grade("6.1", fn, timestep_embedding, _embedding_cases(), _EMBEDDING_MISTAKES,
                 atol=1e-3, rtol=1e-4, verbose=verbose)  # fmt: skip


# --------------------------------------------------------------------------- Exercise 6.2


def _resblock_params_reference(in_ch: int, out_ch: int, temb_ch: int) -> int:
    block = ResBlock(in_ch, out_ch, temb_ch, dropout=0.0, groups=1)
    return sum(p.numel() for p in block.parameters())


def _params_with(biases: bool = True, shortcut: bool = True, norm_affine: bool = True):
    def fn(in_ch, out_ch, temb_ch):
        b = 1 if biases else 0
        n = 9 * in_ch * out_ch + b * out_ch  # conv1 3x3
        n += temb_ch * out_ch + b * out_ch  # time projection
        n += 9 * out_ch * out_ch + b * out_ch  # conv2 3x3
        if norm_affine:
            n += 2 * in_ch + 2 * out_ch  # GroupNorm scale and shift
        if shortcut and in_ch != out_ch:
            n += in_ch * out_ch + b * out_ch  # 1x1 shortcut
        return n

    return fn


_PARAMS_MISTAKES = [
    Mistake("you forgot the biases: every conv and the time projection has one per output "
            "channel.", _params_with(biases=False)),
    Mistake("you forgot the 1x1 shortcut conv, which the block has when in_ch != out_ch.",
            _params_with(shortcut=False)),
    Mistake("GroupNorm is affine: each of the two norms has a scale and a shift per channel.",
            _params_with(norm_affine=False)),
]  # fmt: skip


def check_resblock_params(fn, verbose: bool = True) -> CheckResult:
    """Grade ``fn(in_ch, out_ch, temb_ch) -> int`` against a built ``ResBlock``."""
    cases = [(128, 128, 512), (128, 256, 512), (256, 128, 512), (32, 64, 128), (3, 5, 7),
             (1, 1, 1)]  # fmt: skip
    return grade("6.2", fn, _resblock_params_reference, cases, _PARAMS_MISTAKES,
                 atol=0.0, rtol=0.0, verbose=verbose)  # fmt: skip
