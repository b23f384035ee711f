"""Quick and full mode: the one switch every chapter of the book reads.

Two environment variables, read by :func:`current_mode`:

``DDPM_MODE``
    ``quick`` (the default, also on a GPU): the bundled offline ``digits`` dataset and the small
    ``digits`` UNet, minutes on a laptop CPU. This is what CI and the static book execute.
    ``full``: MNIST, Fashion-MNIST or CIFAR-10 with the paper's UNet, on a GPU, hours.
``DDPM_DATASET``
    full mode only: ``mnist`` (the default), ``fashion-mnist`` or ``cifar10``.

Both modes run the same code; only the numbers differ. A chapter that needs a trained model calls
:func:`trained_model`, which loads the run that the training chapter left in the checkpoint cache
(``data_dir("runs", ...)``) and trains it first only when it is missing or unfinished::

    from ddpm.mode import current_mode, trained_model
    mode = current_mode()                  # Mode(name="quick", dataset="digits", ...)
    model, diffusion, config = trained_model(mode)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .device import resolve_device
from .paths import data_dir
from .train import (
    ARCH_FIELDS,
    CheckpointError,
    TrainConfig,
    checkpoint_step,
    config_differences,
    latest_checkpoint,
    load_model,
    preset_config,
    read_checkpoint,
    train,
)

__all__ = ["DATASET_ENV", "FULL_DATASETS", "MODE_ENV", "Mode", "current_mode", "trained_model"]

MODE_ENV = "DDPM_MODE"
DATASET_ENV = "DDPM_DATASET"

# full-mode dataset -> the training preset it uses (ddpm.train.PRESETS) and its overrides
FULL_DATASETS = {
    "mnist": ("mnist", {}),
    "fashion-mnist": ("mnist", {"name": "fashion-mnist", "dataset": "fashion-mnist"}),
    "cifar10": ("cifar10", {}),
}


@dataclass(frozen=True)
class Mode:
    """What a chapter runs on: ``name`` is "quick" or "full"; ``dataset`` a load_dataset name;
    ``preset`` the training preset (ddpm.train.PRESETS) with ``overrides``; ``device`` the torch
    device to use (CUDA when available, else MPS on Apple silicon, else CPU)."""

    name: str
    dataset: str
    preset: str
    overrides: tuple = ()
    device: torch.device = torch.device("cpu")

    @property
    def quick(self) -> bool:
        return self.name == "quick"

    def train_config(self, **overrides) -> TrainConfig:
        """The training configuration of this mode (the preset), with fields overridden."""
        return preset_config(self.preset, **{**dict(self.overrides), **overrides})

    def __str__(self) -> str:
        return f"{self.name} mode: dataset {self.dataset}, preset {self.preset}, on {self.device}"


def _env(var: str, default: str) -> str:
    return os.environ.get(var, "").strip().lower() or default


def current_mode(name: str | None = None, dataset: str | None = None) -> Mode:
    """The mode chosen by ``DDPM_MODE`` / ``DDPM_DATASET`` (or by the arguments, which win)."""
    name = (name or _env(MODE_ENV, "quick")).lower()
    if name not in ("quick", "full"):
        raise ValueError(
            f"{MODE_ENV}={name!r} is not a mode; set it to 'quick' (the default) or 'full'"
        )
    device = resolve_device("auto")
    if name == "quick":
        if dataset not in (None, "digits"):
            raise ValueError(f"quick mode uses the digits dataset, not {dataset!r}; "
                             f"set {MODE_ENV}=full to train on {dataset}")  # fmt: skip
        return Mode("quick", "digits", "digits", (), device)
    dataset = (dataset or _env(DATASET_ENV, "mnist")).lower()
    if dataset not in FULL_DATASETS:
        raise ValueError(
            f"{DATASET_ENV}={dataset!r} is not a full-mode dataset; "
            f"choose one of {', '.join(FULL_DATASETS)}"
        )
    preset, overrides = FULL_DATASETS[dataset]
    return Mode("full", dataset, preset, tuple(sorted(overrides.items())), device)


# What makes a cached run the one a config asks for, besides its length (``steps``): the
# architecture and the training recipe. Bookkeeping (logging, sample grids, checkpoint
# spacing), the device and compilation change no result beyond rounding.
RECIPE_FIELDS = ("batch_size", "lr", "warmup_steps", "grad_clip", "ema_decay", "label_dropout",
                 "flip", "amp", "seed")  # fmt: skip


def _check_cached_run(saved: dict, config: TrainConfig, run_dir) -> None:
    """Refuse, in one line, a cached run trained with other settings than ``config``'s: the
    book's numbers would silently come from another model (say, one that ``ddpm train --lr
    ...`` left in the same folder)."""
    arch = config_differences(saved, config, ARCH_FIELDS)
    recipe = config_differences(saved, config, RECIPE_FIELDS)
    if arch or recipe:
        what = "another architecture" if arch else "other training settings"
        raise CheckpointError(
            f"the cached run {run_dir} was trained with {what} ({'; '.join(arch + recipe)}); "
            f"delete that folder (or give the config another name) to train afresh"
        )


def _run_dir(config: TrainConfig):
    return config.run_dir or data_dir("runs", config.name)


def trained_model(mode: Mode | None = None, *, config: TrainConfig | None = None,
                  progress: bool = True, device=None):  # fmt: skip
    """(model, diffusion, config): the EMA model of ``mode``'s training run, in eval mode.

    Loads the run folder's latest checkpoint when it has reached ``config.steps``; otherwise
    trains (resuming an interrupted run) and then loads it. A cached run of another
    architecture or recipe (``ARCH_FIELDS``, ``RECIPE_FIELDS``) is refused with a one-line
    CheckpointError, neither loaded nor resumed. ``config`` defaults to
    ``mode.train_config()``; the model is moved to ``device`` (default: the mode's device).
    """
    mode = mode or current_mode()
    config = config or mode.train_config()
    run_dir = _run_dir(config)
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None or checkpoint_step(ckpt) < config.steps:
        if ckpt is not None:  # resume only the same run, not a mix of two recipes
            _check_cached_run(read_checkpoint(ckpt)["config"], config, run_dir)
        result = train(config, resume=True, progress=progress)
        if result.interrupted:
            raise KeyboardInterrupt(f"training stopped at step {result.step}; run again to resume")
        ckpt = result.checkpoint
    model, diffusion, saved = load_model(ckpt, device=device or mode.device)
    _check_cached_run(saved.to_dict(), config, run_dir)
    return model, diffusion, saved
