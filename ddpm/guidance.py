"""Classifier-free guidance (Ho & Salimans 2022) as a model wrapper, so the samplers stay as they
are.

A class-conditional UNet (``UNetConfig.num_classes``) trained with label dropout (the label
replaced by the null class with probability p) is two models in one: eps(x, t, y), the
conditional one, and eps(x, t, null), the unconditional one. Guidance with scale w samples with

    eps_w(x, t) = (1 + w) eps(x, t, y) - w eps(x, t, null)
                = eps(x, t, y) + w (eps(x, t, y) - eps(x, t, null)),

which, since eps = -sqrt(1 - alpha-bar_t) * score, is the score of p(x_t | y) p(y | x_t)^w: the
conditional score plus w times the gradient of an implicit classifier's log p(y | x_t) (Bayes:
grad log p(y | x) = grad log p(x | y) - grad log p(x)). w = 0 is the plain conditional model,
w = -1 the unconditional one; w > 0 trades diversity for class fidelity.

``guided(unet, y, w)`` is itself a ``model(x_t, t)``: pass it to ``GaussianDiffusion.sample``
or ``ddim_sample``. Each call runs the UNet *once*, on the batch [x; x] with labels [y; null],
so a guided step costs one network call on twice the batch, not two calls::

    from ddpm.guidance import guided
    y = torch.arange(10).repeat_interleave(8)           # 8 samples of each class
    x = diffusion.ddim_sample(guided(model, y, 2.0), (80, 1, 8, 8), steps=50)
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["GuidedModel", "guided"]


class GuidedModel(nn.Module):
    """eps_w(x_t, t) = (1 + w) eps(x_t, t, y) - w eps(x_t, t, null), one UNet call per step.

    Build it with :func:`guided`. ``labels`` holds [y; null] (a buffer: ``.to(device)`` moves it
    with the UNet). At ``scale == 0`` only the conditional half is computed.
    """

    def __init__(self, unet: nn.Module, y: torch.Tensor, scale: float):
        super().__init__()
        self.unet = unet
        self.scale = float(scale)
        self.num_classes = unet.config.num_classes
        null = torch.full_like(y, self.num_classes)
        self.register_buffer("labels", torch.cat([y, null]), persistent=False)

    @property
    def y(self) -> torch.Tensor:
        return self.labels[: len(self.labels) // 2]

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        n = len(self.labels) // 2
        if x.ndim == 0 or x.shape[0] != n:
            got = tuple(x.shape[:1]) if x.ndim else "a scalar"
            raise ValueError(f"guided model: x has batch {got}, but the labels y given to "
                             f"guided() are {n}; pass one label per image")  # fmt: skip
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(n)
        if self.scale == 0.0:  # the conditional model itself: no unconditional half needed
            return self.unet(x, t, self.labels[:n])
        eps = self.unet(torch.cat([x, x]), torch.cat([t, t]), self.labels)
        cond, uncond = eps[:n], eps[n:]
        return cond + self.scale * (cond - uncond)  # = (1 + w) cond - w uncond

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}, batch={len(self.labels) // 2}"


def guided(unet: nn.Module, y, scale: float) -> GuidedModel:
    """A ``model(x_t, t)`` that samples class ``y`` with classifier-free guidance of scale w.

    ``unet`` is a class-conditional UNet (``num_classes`` set, trained with label dropout);
    ``y`` the labels, a [B] integer tensor (or a list) in 0..num_classes-1, one per image of the
    batch the sampler will draw; ``scale`` the guidance weight w (0: the conditional model, -1:
    the unconditional one, larger: more class fidelity, less diversity). The labels are checked
    here, once; the returned model reads nothing back from the device per step.
    """
    k = getattr(getattr(unet, "config", None), "num_classes", None)
    if k is None:
        raise ValueError("guided() needs a class-conditional UNet (UNetConfig.num_classes set, "
                         "trained with label dropout); this model takes no labels")  # fmt: skip
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"guidance scale must be a finite number (e.g. 0, 1, 3), got {scale!r}")
    y = torch.as_tensor(y)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"labels y must be integer class indices, got dtype {y.dtype}")
    if y.ndim != 1 or len(y) == 0:
        raise ValueError(f"labels y must be a 1-D tensor with one label per image [B], got shape "
                         f"{tuple(y.shape)}")  # fmt: skip
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= k:
        raise ValueError(f"labels y must lie in 0..{k - 1} (the model's classes; {k} is the null "
                         f"class, which guidance subtracts), got values in {lo}..{hi}")  # fmt: skip
    device = next((p.device for p in unet.parameters()), torch.device("cpu"))
    return GuidedModel(unet, y.long().to(device), scale)
