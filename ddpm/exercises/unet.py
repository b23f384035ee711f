"""Checkers for chapter 6, the UNet.

- Exercise 6.1, :func:`check_skip_channels`: the widths of the activations the down path stores
  for the up path's skip connections, for a config (ch, ch_mult, num_res_blocks).
- Exercise 6.2, :func:`check_resblock_params`: the number of parameters of a
  ``ddpm.unet.ResBlock(in_ch, out_ch, temb_ch, ...)`` in closed form.
"""

from __future__ import annotations

import math

from ..unet import ResBlock, UNet
from . import CheckResult, Mistake, grade

__all__ = ["check_resblock_params", "check_skip_channels"]

# --------------------------------------------------------------------------- Exercise 6.1


def _skip_channels_reference(ch: int, ch_mult: tuple[int, ...], num_res_blocks: int) -> list[int]:
    """Read off a built UNet: each up-path block takes h (the running width) plus one stored
    activation, so its conv's input width minus h is that activation's width."""
    groups = math.gcd(*[ch * m for m in ch_mult])
    model = UNet(in_channels=1, image_size=2 ** (len(ch_mult) - 1) * 4, ch=ch, ch_mult=ch_mult,
                 num_res_blocks=num_res_blocks, attn_resolutions=(), dropout=0.0,
                 num_groups=groups)  # fmt: skip
    popped, h = [], ch * ch_mult[-1]
    for stage in model.up:
        for block in stage.blocks:
            popped.append(block.conv1.in_channels - h)
            h = block.conv1.out_channels
    return popped[::-1]  # pushed in the reverse order of popping


def _skips_with(conv_in: bool = True, downsample: str = "all_but_last", width: str = "out",
                extra_block: bool = False):  # fmt: skip
    def fn(ch, ch_mult, num_res_blocks):
        skips, h = ([ch] if conv_in else []), ch
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks + (1 if extra_block else 0)):
                skips.append(h if width == "in" else ch * mult)
                h = ch * mult
            last = level == len(ch_mult) - 1
            if downsample == "all" or (downsample == "all_but_last" and not last):
                skips.append(h)
        return skips

    return fn


_SKIP_MISTAKES = [
    Mistake("you left out conv_in's output: it is the first activation stored (width ch), and "
            "the last up-path block eats it.", _skips_with(conv_in=False)),
    Mistake("you left out the downsamplers' outputs: every level but the last ends in a "
            "Downsample, whose output is stored too.", _skips_with(downsample="none")),
    Mistake("the last level has no Downsample (the middle follows at that resolution), so it "
            "stores nothing after its blocks.", _skips_with(downsample="all")),
    Mistake("you stored each block's input width; the stack holds its output, ch * ch_mult[i] "
            "(they differ at the first block of a level whose width changes).",
            _skips_with(width="in")),
    Mistake("the down path has num_res_blocks blocks per level; num_res_blocks + 1 is the up "
            "path's count (one more, to eat the downsampler's output).",
            _skips_with(extra_block=True)),
]  # fmt: skip


def check_skip_channels(fn, verbose: bool = True) -> CheckResult:
    """Grade ``fn(ch, ch_mult, num_res_blocks) -> list[int]``: the widths of the activations
    the down path stores for the up path, in the order they are stored."""
    cases = [(32, (1, 2, 2, 2), 2), (32, (1, 2), 1), (16, (1, 2, 3), 3), (8, (2, 1, 4), 1),
             (8, (1,), 2)]  # fmt: skip
    return grade("6.1", fn, _skip_channels_reference, cases, _SKIP_MISTAKES,
                 atol=0.0, rtol=0.0, verbose=verbose)  # fmt: skip


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
