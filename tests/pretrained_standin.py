"""A stand-in cache of the paper's released models, for tests that must not touch the network.

``write_standin(name)`` puts a randomly initialised model into ``ddpm.pretrained.local_dir(name)``
(so under ``DDPM_DATA_DIR``, which the tests point at a temporary folder) in the layout the hub
repository has, with the manifest a download writes, marked ``"standin": true``: the command
line then says it is a stand-in, and the book's ``ddpm.paper_models.book_model`` refuses it
unless ``DDPM_PRETRAINED_STANDIN=1``.

The default configuration is the real one of the model's preset (cifar10: the paper's
35,746,307 parameters); ``small=True`` gives the same layout at a fraction of the cost
(channels 32, one residual block per level), for tests that run many model calls on a CPU.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from ddpm import GaussianDiffusion, linear_beta_schedule
from ddpm.pretrained import MANIFEST, REGISTRY, STANDIN_KEY, _plan, export, local_dir
from ddpm.unet import PRESETS, UNet


def small_config(name: str):
    """The preset of ``name`` with 32 channels and one residual block per level."""
    preset = PRESETS[REGISTRY[name].preset]
    return dataclasses.replace(preset, ch=32, num_res_blocks=1, dropout=0.0)


def write_standin(name: str, *, small: bool = False, variance: str = "fixed_large",
                  seed: int = 0) -> Path:  # fmt: skip
    """Write the stand-in of released model ``name`` into the cache; returns its folder."""
    entry = REGISTRY[name]
    config = small_config(name) if small else PRESETS[entry.preset]
    torch.manual_seed(seed)
    model = UNet(config)
    with torch.no_grad():  # the output layer starts at zero: give every tensor some weight
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)
    diffusion = GaussianDiffusion(linear_beta_schedule(1000), "eps", variance)
    folder = local_dir(name)
    export(model, diffusion, folder, layout=entry.layout)
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    plan = _plan(files, entry.layout)
    manifest = {"name": name, "repo": entry.repo, "revision": entry.revision,
                "commit": "stand-in", "plan": plan, "files": {}, STANDIN_KEY: True}  # fmt: skip
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return folder


def write_cifar10(root: Path, n_train: int = 2, n_test: int = 4) -> None:
    """A tiny CIFAR-10 in torchvision's python-batch format under ``root/cifar10`` (random
    images); load it with ``skip_cifar_md5`` active (its files are not the real ones)."""
    from test_data import write_cifar

    write_cifar(root / "cifar10", per_batch=n_train, n_test=n_test)


def skip_cifar_md5(monkeypatch) -> None:
    """Bypass only the md5 comparison of torchvision's CIFAR integrity check."""
    import torchvision.datasets.cifar as tv_cifar

    real = tv_cifar.check_integrity
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: real(fpath))
