"""Tests for the chapter 6 checkers (ddpm.exercises.unet)."""

import torch
from exercise_contract import Exercise, ExerciseContract

from ddpm.exercises import unet as ex
from ddpm.unet import UNet


# The book's solutions (book/06_unet.ipynb), written out again.
def skip_channels(ch, ch_mult, num_res_blocks):
    skips = [ch]  # conv_in
    for level, mult in enumerate(ch_mult):
        skips += [ch * mult] * num_res_blocks  # each block's output
        if level < len(ch_mult) - 1:
            skips.append(ch * mult)  # the Downsample's output
    return skips


def skip_channels_by_forward_hooks(ch, ch_mult, num_res_blocks):
    """Also right: run a built UNet and record what its forward pass stores."""
    model = UNet(in_channels=1, image_size=8 * 2 ** (len(ch_mult) - 1), ch=ch, ch_mult=ch_mult,
                 num_res_blocks=num_res_blocks, attn_resolutions=(), dropout=0.0, num_groups=1)
    widths = []
    hooks = [model.conv_in.register_forward_hook(lambda m, i, o: widths.append(o.shape[1]))]
    for stage in model.down:
        for attn in stage.attns:
            hooks.append(attn.register_forward_hook(lambda m, i, o: widths.append(o.shape[1])))
        if stage.downsample is not None:
            hooks.append(stage.downsample.register_forward_hook(
                lambda m, i, o: widths.append(o.shape[1])))  # fmt: skip
    with torch.no_grad():
        model(torch.zeros(1, 1, model.config.image_size, model.config.image_size), 0)
    for hook in hooks:
        hook.remove()
    return widths


def resblock_params(in_ch, out_ch, temb_ch):
    n = 2 * in_ch + 9 * in_ch * out_ch + out_ch  # norm1, conv1
    n += temb_ch * out_ch + out_ch  # time projection
    n += 2 * out_ch + 9 * out_ch * out_ch + out_ch  # norm2, conv2
    if in_ch != out_ch:
        n += in_ch * out_ch + out_ch  # 1x1 shortcut
    return n


class TestContract(ExerciseContract):
    exercises = (
        Exercise(ex.check_skip_channels, skip_channels, ex._SKIP_MISTAKES,
                 also_right=[skip_channels_by_forward_hooks]),
        Exercise(ex.check_resblock_params, resblock_params, ex._PARAMS_MISTAKES),
    )


def test_garbage_is_rejected():
    assert not ex.check_skip_channels(lambda c, m, n: [c] * len(m), verbose=False)
    assert not ex.check_skip_channels(lambda c, m, n: "hello", verbose=False)
    assert not ex.check_resblock_params(lambda i, o, e: 35_746_307, verbose=False)
    assert not ex.check_resblock_params(lambda i, o, e: 9 * i * o, verbose=False)


def test_reference_equals_package():
    cifar10 = (128, (1, 2, 2, 2), 2)
    assert ex._skips_with()(*cifar10) == ex._skip_channels_reference(*cifar10)
    assert ex._params_with()(128, 256, 512) == ex._resblock_params_reference(128, 256, 512)
