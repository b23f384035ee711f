"""Tests for the chapter 6 checkers (ddpm.exercises.unet)."""

import math

import torch
from exercise_contract import Exercise, ExerciseContract

from ddpm.exercises import unet as ex


# The book's solutions (book/06_unet.ipynb), written out again.
def timestep_embedding(t, dim):
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half) / (half - 1))
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def resblock_params(in_ch, out_ch, temb_ch):
    n = 2 * in_ch + 9 * in_ch * out_ch + out_ch  # norm1, conv1
    n += temb_ch * out_ch + out_ch  # time projection
    n += 2 * out_ch + 9 * out_ch * out_ch + out_ch  # norm2, conv2
    if in_ch != out_ch:
        n += in_ch * out_ch + out_ch  # 1x1 shortcut
    return n


class TestContract(ExerciseContract):
    exercises = (
        Exercise(ex.check_timestep_embedding, timestep_embedding, ex._EMBEDDING_MISTAKES),
        Exercise(ex.check_resblock_params, resblock_params, ex._PARAMS_MISTAKES),
    )


def test_garbage_is_rejected():
    assert not ex.check_timestep_embedding(lambda t, dim: torch.zeros(len(t), dim), verbose=False)
    assert not ex.check_timestep_embedding(lambda t, dim: "hello", verbose=False)
    assert not ex.check_resblock_params(lambda i, o, e: 35_746_307, verbose=False)
    assert not ex.check_resblock_params(lambda i, o, e: 9 * i * o, verbose=False)


def test_reference_equals_package():
    t = torch.tensor([0, 5, 999])
    # float32 arguments t f_i up to 999 rad: a few 2^-24 x 999 apart (see the checker)
    assert torch.allclose(ex._embedding_with()(t, 64), ex.timestep_embedding(t, 64), atol=1e-3)
    assert ex._params_with()(128, 256, 512) == ex._resblock_params_reference(128, 256, 512)
