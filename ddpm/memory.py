"""Memory estimates, checked before anything large is allocated.

A request that cannot fit (``--num 100000000`` samples, ``--image-size 100000``, a checkpoint
whose config asks for 4096 channels) should fail at once with one line, not after minutes of
swapping or with an allocator's traceback. The estimates are deliberately simple, float32, and
meant to be *below* the true need, so a refusal is always justified:

* parameters: counted on PyTorch's ``meta`` device (nothing is allocated); training holds five
  copies (weights, EMA, gradients, Adam's two moments);
* activations of one image, :func:`activation_elements`: the feature maps of the U-Net's levels
  (every residual block's output at its resolution, ``ch * ch_mult[level] * res**2``) and the
  ``res**4`` attention matrix of each attention block. Sampling (no gradients) keeps the skip
  connections and one attention matrix; training keeps about six maps per block for the
  backward pass.

Available memory: on the CPU, ``MemAvailable`` from ``/proc/meminfo`` (else ``os.sysconf``); on
CUDA, the free memory ``torch.cuda.mem_get_info`` reports; other devices are not checked.
"""

from __future__ import annotations

import os

import torch

from .unet import UNet, UNetConfig

__all__ = ["available_bytes", "parameter_count", "activation_elements", "sampling_bytes",
           "training_bytes", "check_fits", "format_bytes"]  # fmt: skip

FLOAT = 4  # bytes per float32 element
TRAIN_MAPS_PER_BLOCK = 6  # norm, SiLU, conv, norm, SiLU, conv inputs kept for the backward pass


def available_bytes(device) -> int | None:
    """Memory free for new tensors on ``device``; None where it cannot be told."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def parameter_count(config: UNetConfig) -> int:
    """Parameters of ``UNet(config)``, counted on the meta device (no memory allocated)."""
    with torch.device("meta"):
        return sum(p.numel() for p in UNet(config).parameters())


def activation_elements(config: UNetConfig, training: bool) -> int:
    """Feature-map elements of one image (see the module docstring)."""
    c = config
    blocks, skips, attn = 0, 0, []
    for mult, res in zip(c.ch_mult, c.resolutions, strict=True):
        maps = c.ch * mult * res * res
        n_blocks = 2 * c.num_res_blocks + 1  # down blocks and the up path's num_res_blocks + 1
        blocks += n_blocks * maps
        skips += (c.num_res_blocks + 1) * maps
        if res in c.attn_resolutions:
            attn += [res**4] * n_blocks
    low = c.resolutions[-1]
    blocks += 2 * c.ch * c.ch_mult[-1] * low * low
    attn.append(low**4)  # the middle attention block
    if training:
        return TRAIN_MAPS_PER_BLOCK * blocks + 2 * sum(attn)
    return skips + max(attn)


def sampling_bytes(config: UNetConfig, num: int) -> int:
    """A lower estimate of what sampling ``num`` images at once needs."""
    image = config.in_channels * config.image_size**2  # x_t, the noise and x_{t-1}: 3 of them
    per_image = activation_elements(config, False) + 3 * image
    return FLOAT * (parameter_count(config) + num * per_image)


def training_bytes(config: UNetConfig, batch: int) -> int:
    """A lower estimate of what one training step on ``batch`` images needs."""
    return FLOAT * (5 * parameter_count(config) + batch * activation_elements(config, True))


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1000
    raise AssertionError  # pragma: no cover


def check_fits(need: int, device, what: str, hint: str) -> None:
    """A one-line MemoryError-free refusal: ValueError when ``need`` bytes exceed what
    ``device`` has available. ``what`` names the request, ``hint`` what to change."""
    have = available_bytes(device)
    if have is not None and need > have:
        raise ValueError(
            f"{what} needs at least {format_bytes(need)} of memory but {torch.device(device)} "
            f"has {format_bytes(have)} available; {hint}"
        )
