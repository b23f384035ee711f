"""ddpm.mode: choosing quick or full mode, and trained_model's cache (load, train, resume, refuse).

The full-mode path runs here on the CPU, with the real mnist preset architecture (8.9M
parameters at 32x32) for 2 steps on a few MNIST images written in the real idx format, with the
network blocked: the code a GPU runs for hours, so that it cannot rot where no GPU is available.
"""

import os
import signal
from dataclasses import replace

import pytest
import torch
from test_data import write_mnist

from ddpm import mode as M
from ddpm.device import resolve_device
from ddpm.train import CheckpointError, TrainResult, preset_config
from ddpm.unet import UNet

TINY = dict(model_overrides={"ch": 16}, timesteps=50, batch_size=16, lr=1e-3, warmup_steps=4,
            ema_decay=0.9, log_every=1, sample_every=0, ckpt_every=1000)  # fmt: skip


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No mode chosen by the environment of whoever runs the tests; one CPU thread."""
    monkeypatch.delenv(M.MODE_ENV, raising=False)
    monkeypatch.delenv(M.DATASET_ENV, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def train_calls(monkeypatch):
    """Record every call trained_model makes to ddpm.train.train: (resume, first step)."""
    calls = []
    real = M.train

    def spy(config, *, resume=False, progress=True, on_step=None):
        def first(step, info):
            if not calls[-1][1]:
                calls[-1][1].append(step)
            if on_step is not None:
                on_step(step, info)

        calls.append((resume, []))
        return real(config, resume=resume, progress=progress, on_step=first)

    monkeypatch.setattr(M, "train", spy)
    return calls


def tiny(run_dir, **overrides):
    return preset_config("digits", **{**TINY, "run_dir": str(run_dir), **overrides})


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# ---------------------------------------------------------------------- current_mode
def test_quick_is_the_default():
    mode = M.current_mode()
    assert (mode.name, mode.dataset, mode.preset, mode.overrides) == ("quick", "digits",
                                                                      "digits", ())  # fmt: skip
    assert mode.quick
    want = resolve_device("auto").type  # CUDA, else MPS, else CPU (tests/test_device.py)
    assert mode.device.type == want
    assert str(mode) == f"quick mode: dataset digits, preset digits, on {want}"


def test_environment_variables(monkeypatch):
    monkeypatch.setenv(M.MODE_ENV, "  Full ")  # case and spaces do not matter
    mode = M.current_mode()
    assert (mode.name, mode.dataset, mode.preset, mode.quick) == ("full", "mnist", "mnist", False)
    for dataset, preset in (("cifar10", "cifar10"), ("fashion-mnist", "mnist"), ("MNIST", "mnist")):
        monkeypatch.setenv(M.DATASET_ENV, dataset)
        mode = M.current_mode()
        assert (mode.dataset, mode.preset) == (dataset.lower(), preset)
    monkeypatch.setenv(M.MODE_ENV, "")  # empty: the default
    assert M.current_mode().name == "quick"
    monkeypatch.setenv(M.MODE_ENV, "quick")
    monkeypatch.setenv(M.DATASET_ENV, "cifar10")  # read in full mode only
    assert M.current_mode().dataset == "digits"


def test_arguments_win_over_the_environment(monkeypatch):
    monkeypatch.setenv(M.MODE_ENV, "full")
    monkeypatch.setenv(M.DATASET_ENV, "cifar10")
    assert M.current_mode().dataset == "cifar10"
    assert M.current_mode("quick").dataset == "digits"
    assert M.current_mode(dataset="mnist").dataset == "mnist"
    monkeypatch.setenv(M.MODE_ENV, "quick")
    mode = M.current_mode("full", "fashion-mnist")
    assert (mode.name, mode.dataset) == ("full", "fashion-mnist")
    assert M.current_mode("quick", "digits").dataset == "digits"


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        ({M.MODE_ENV: "fast"}, (), "DDPM_MODE='fast' is not a mode; set it to 'quick'"),
        ({}, ("slow",), "'slow' is not a mode"),
        ({M.MODE_ENV: "full", M.DATASET_ENV: "imagenet"}, (),
         "'imagenet' is not a full-mode dataset; choose one of mnist, fashion-mnist, cifar10"),
        ({}, ("full", "digits"), "'digits' is not a full-mode dataset"),
        ({}, ("quick", "mnist"), "quick mode uses the digits dataset, not 'mnist'; set "
                                 "DDPM_MODE=full"),
    ],
)  # fmt: skip
def test_bad_values_are_one_clear_line(monkeypatch, env, args, message):
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    with pytest.raises(ValueError) as err:
        M.current_mode(*args)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_train_config_is_the_preset_with_overrides():
    quick = M.current_mode("quick")
    assert quick.train_config() == preset_config("digits")
    short = quick.train_config(steps=10, lr=5e-4)
    assert (short.steps, short.lr) == (10, 5e-4)
    assert replace(short, steps=1400, lr=1e-3) == preset_config("digits")  # nothing else moved
    full = M.current_mode("full")
    assert full.train_config() == preset_config("mnist")
    fashion = M.current_mode("full", "fashion-mnist").train_config()
    assert (fashion.name, fashion.dataset, fashion.model) == ("fashion-mnist", "fashion-mnist",
                                                              "mnist")  # fmt: skip
    renamed = M.current_mode("full", "fashion-mnist").train_config(name="fm2", steps=3)
    assert (renamed.name, renamed.dataset, renamed.steps) == ("fm2", "fashion-mnist", 3)
    assert M.current_mode("full", "cifar10").train_config() == preset_config("cifar10")
    with pytest.raises(ValueError, match=r"unknown TrainConfig fields \['step'\]"):
        quick.train_config(step=10)


# ---------------------------------------------------------------------- trained_model


def test_full_mode_path_on_cpu(tmp_path, monkeypatch, no_network, train_calls):
    """DDPM_MODE=full: the mnist preset, trained 2 steps from idx files, then loaded from cache."""
    monkeypatch.setenv(M.MODE_ENV, "full")
    monkeypatch.setenv("DDPM_DATA_DIR", str(tmp_path))
    write_mnist(tmp_path / "mnist", "MNIST", n_train=6, n_test=2)
    mode = M.current_mode()
    assert (mode.name, mode.dataset, mode.preset) == ("full", "mnist", "mnist")
    config = mode.train_config(steps=2, batch_size=2, log_every=1, sample_every=0)
    model, diffusion, saved = M.trained_model(mode, config=config, progress=False, device="cpu")
    assert len(train_calls) == 1  # trained, from scratch ...
    ckpt = tmp_path / "runs" / "mnist" / "checkpoints" / "ckpt_0000002.pt"
    assert ckpt.is_file()  # ... into the cache folder DDPM_DATA_DIR/runs/mnist
    assert saved == config and (saved.dataset, saved.model) == ("mnist", "mnist")
    assert model.config == UNet.from_preset("mnist").config  # 1 channel, 32x32, ch 64
    assert sum(p.numel() for p in model.parameters()) == 8_949_761
    assert not model.training and diffusion.num_timesteps == 1000
    x = torch.zeros(1, 1, 32, 32)
    assert model(x, torch.tensor([999])).abs().sum() > 0  # trained: no longer the zero output
    assert no_network == []

    stamp = ckpt.stat().st_mtime_ns
    again, _, _ = M.trained_model(mode, config=config, progress=False, device="cpu")
    assert len(train_calls) == 1  # loaded from the cache: no training
    assert ckpt.stat().st_mtime_ns == stamp
    assert_same_weights(again, model)


def test_resumes_an_unfinished_run(tmp_path, train_calls):
    first, _, _ = M.trained_model(config=tiny(tmp_path / "run", steps=2), progress=False)
    assert train_calls == [(True, [1])]
    more, _, saved = M.trained_model(config=tiny(tmp_path / "run", steps=4), progress=False)
    assert train_calls[1] == (True, [3]) and saved.steps == 4  # went on from step 2
    straight, _, _ = M.trained_model(config=tiny(tmp_path / "straight", steps=4), progress=False)
    assert_same_weights(more, straight)  # exact resume: 2 + 2 steps == 4 steps
    M.trained_model(config=tiny(tmp_path / "run", steps=3), progress=False)  # a finished run
    assert len(train_calls) == 3


def test_interrupted_training_says_run_again(tmp_path, monkeypatch, train_calls):
    real = M.train  # the spy

    def interrupt_at_2(config, **kwargs):
        def stop(step, info):
            if step == 2:
                os.kill(os.getpid(), signal.SIGINT)  # as the notebook's stop button does

        return real(config, **kwargs, on_step=stop)

    monkeypatch.setattr(M, "train", interrupt_at_2)
    with pytest.raises(KeyboardInterrupt, match="training stopped at step 2; run again to resume"):
        M.trained_model(config=tiny(tmp_path, steps=4), progress=False)
    monkeypatch.setattr(M, "train", real)
    done, _, saved = M.trained_model(config=tiny(tmp_path, steps=4), progress=False)
    assert saved.steps == 4 and train_calls[-1] == (True, [3])


def test_refuses_a_cached_run_of_another_architecture(tmp_path):
    M.trained_model(config=tiny(tmp_path, steps=2), progress=False)
    wide = tiny(tmp_path, steps=2, model_overrides={"ch": 32})
    with pytest.raises(CheckpointError) as err:  # finished: trained_model's own check
        M.trained_model(config=wide, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path) in msg and "delete that folder" in msg
    assert "model_overrides: {'ch': 16} -> {'ch': 32}" in msg
    with pytest.raises(CheckpointError, match="with another architecture") as err:  # unfinished
        M.trained_model(config=replace(wide, steps=3), progress=False)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("change", "shown"),
    [
        ({"lr": 2e-3}, "lr: 0.001 -> 0.002"),
        ({"batch_size": 8}, "batch_size: 16 -> 8"),
        ({"ema_decay": 0.99}, "ema_decay: 0.9 -> 0.99"),
        ({"seed": 1}, "seed: 0 -> 1"),
    ],
)
def test_refuses_a_cached_run_of_another_recipe(tmp_path, train_calls, change, shown):
    """A run that `ddpm train --lr ...` left in the book's folder is not the book's model:
    neither loaded (finished) nor resumed into a mix of two recipes (unfinished)."""
    M.trained_model(config=tiny(tmp_path, steps=2), progress=False)
    other = tiny(tmp_path, steps=2, **change)
    for steps, state in ((2, "finished"), (3, "unfinished")):
        with pytest.raises(CheckpointError) as err:
            M.trained_model(config=replace(other, steps=steps), progress=False)
        msg = str(err.value)
        assert "\n" not in msg and "with other training settings" in msg and shown in msg, state
        assert str(tmp_path) in msg and "delete that folder" in msg
    assert len(train_calls) == 1  # refused before training, not after
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["ckpt_0000002.pt"]
    # what changes no result is not a different run: the log spacing, the sample grids
    M.trained_model(config=tiny(tmp_path, steps=2, log_every=2, ckpt_every=500), progress=False)


def test_tuple_overrides_match_their_json_lists(tmp_path):
    """ch_mult=(1, 2) is saved as [1, 2] in the checkpoint's JSON config: still the same run."""
    config = tiny(tmp_path, steps=1, model_overrides={"ch": 16, "ch_mult": (1, 2)})
    M.trained_model(config=config, progress=False)
    model, _, _ = M.trained_model(config=config, progress=False)
    assert model.config.ch_mult == (1, 2)


def test_an_interrupted_result_is_not_loaded(tmp_path, monkeypatch):
    def stopped(config, **kwargs):
        return TrainResult(tmp_path, 7, float("nan"), None, tmp_path / "metrics.csv", [], True)

    monkeypatch.setattr(M, "train", stopped)
    with pytest.raises(KeyboardInterrupt, match="step 7"):
        M.trained_model(config=tiny(tmp_path, steps=10), progress=False)
