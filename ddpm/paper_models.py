"""The paper's released models in the book: the section "The paper's own models" of the sampling
and interpolation chapters.

``book_model(name)`` returns a ``BookModel`` (the network, its diffusion, and how to sample it on
this machine) only when the book is built with ``DDPM_PRETRAINED=1`` and ``ddpm download NAME``
has put the weights in the cache. Otherwise it prints a one-line note with those two steps and
returns None, and the section's cells do nothing else. So a build without the weights (offline,
or in CI) shows the note, never an error.

A stand-in cache (random weights in the hub layout, written by the tests; its manifest says so)
must never reach the rendered book: ``book_model`` refuses it with ``PretrainedError`` unless
``DDPM_PRETRAINED_STANDIN=1``, and then every caption starts with "STAND-IN (random weights)".

How the figures are sampled depends on the machine (``plan_for``). On a GPU the 32x32 model runs
Algorithm 2 itself (1000 steps). On a CPU, 1000 calls of the 35.7M-parameter UNet per image do
not fit in a book build, so the figures use DDIM (Song et al. 2021) with 50 steps for a whole
chain and proportionally fewer for a chain that starts at step t; the 256x256 models use DDIM
with 100 steps, and only on a GPU. Every caption names the sampler.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from . import pretrained
from .device import resolve_device
from .diffusion import GaussianDiffusion

__all__ = [
    "ENV",
    "STANDIN_ENV",
    "STANDIN_LABEL",
    "BookModel",
    "Plan",
    "book_model",
    "chain_from",
    "image_rows",
    "plan_for",
]

ENV = "DDPM_PRETRAINED"  # "1": the section runs (the Pages workflow sets it after the download)
STANDIN_ENV = "DDPM_PRETRAINED_STANDIN"  # "1": a stand-in cache is accepted (tests only)
STANDIN_LABEL = "STAND-IN (random weights)"


@dataclass(frozen=True)
class Plan:
    """How the section samples on this machine.

    ``ddim_steps`` None means Algorithm 2 with all T steps (ancestral); else DDIM with that many
    steps for a whole chain, and ``steps_from(t)`` for a chain that starts at code step t.
    ``n_grid`` samples in the grid, ``n_branch`` continuations per shared latent (Fig. 7),
    ``lambdas`` interpolation weights per row (Figs. 8 and 9).
    """

    ddim_steps: int | None
    n_grid: int
    n_branch: int
    lambdas: int

    def steps_from(self, t: int, T: int = 1000) -> int:
        """DDIM steps for a chain from code step t: the full chain's share, at least 2."""
        return max(2, min(t + 1, round(self.ddim_steps * (t + 1) / T)))

    @property
    def sampler(self) -> str:
        """The sampler of a whole chain, for captions."""
        if self.ddim_steps is None:
            return "Algorithm 2, 1000 steps"
        return f"DDIM, eta = 0, {self.ddim_steps} steps, not the paper's 1000-step Algorithm 2"

    def sampler_from_t(self, eta: float = 0.0) -> str:
        """The sampler of a chain that starts at step t, for captions."""
        if self.ddim_steps is None:
            return "Algorithm 2 from step t"
        kind = "stochastic DDIM, eta = 1" if eta else "DDIM, eta = 0"
        return f"{kind}, {self.ddim_steps} steps per 1000 from step t, not Algorithm 2"


CPU_PLAN = Plan(ddim_steps=50, n_grid=16, n_branch=3, lambdas=7)
GPU_PLAN = Plan(ddim_steps=None, n_grid=36, n_branch=4, lambdas=9)
GPU_PLAN_256 = Plan(ddim_steps=100, n_grid=4, n_branch=3, lambdas=7)


def plan_for(device: torch.device, image_size: int) -> Plan:
    """``GPU_PLAN`` for the 32x32 model on CUDA, ``GPU_PLAN_256`` for a 256x256 one, else
    ``CPU_PLAN``."""
    if device.type == "cuda":
        return GPU_PLAN if image_size <= 64 else GPU_PLAN_256
    return CPU_PLAN


def chain_from(diffusion: GaussianDiffusion, t: int) -> GaussianDiffusion:
    """The diffusion cut after code step t: the same betas 0..t, so its last step is t and its
    samplers (DDIM included) run the reverse chain from x_t down to x_0."""
    betas = diffusion.betas[: t + 1]
    return GaussianDiffusion(betas, diffusion.model_mean_type, diffusion.model_var_type)


@dataclass
class BookModel:
    """A released model, ready for the book: ``model`` (our UNet), ``diffusion``, ``info`` (from
    ``ddpm.pretrained.load_pretrained``), ``device``, ``plan``, ``standin``."""

    name: str
    model: torch.nn.Module
    diffusion: GaussianDiffusion
    info: dict
    device: torch.device
    plan: Plan
    standin: bool = False

    def __repr__(self) -> str:
        size = self.info["image_size"]
        stand = f"{STANDIN_LABEL} " if self.standin else ""
        return (f"{stand}{self.name}: {self.info['repo']}, {self.info['num_params']:,} "
                f"parameters, {size}x{size}, {self.diffusion.model_var_type} variance, "
                f"on {self.device}; {self.plan.sampler}")  # fmt: skip

    def caption(self, text: str, sampler: str | None = None) -> str:
        """A figure title: ``text`` and the sampler (the plan's unless given); a stand-in's
        starts with STAND-IN (random weights)."""
        line = f"{text}\n({sampler or self.plan.sampler})"
        return f"{STANDIN_LABEL}: {line}" if self.standin else line

    def _generator(self, seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)  # on the CPU: the same images everywhere

    @property
    def shape(self) -> tuple[int, int, int]:
        c = self.model.config
        return (c.in_channels, c.image_size, c.image_size)

    def sample(self, n: int, seed: int = 0) -> tuple[torch.Tensor, dict]:
        """``n`` samples [n, C, H, W] in [-1, 1] (on the CPU) and the trajectory (``t``, ``xt``,
        ``pred_x0``), with the plan's sampler."""
        g, shape = self._generator(seed), (n, *self.shape)
        clip = self.info["clip_sample"]
        if self.plan.ddim_steps is None:
            x, traj = self.diffusion.sample(self.model, shape, generator=g, clip_denoised=clip,
                                            progress=False, return_trajectory=True,
                                            trajectory_every=100)  # fmt: skip
        else:
            x, traj = self.diffusion.ddim_sample(
                self.model, shape, steps=self.plan.ddim_steps, generator=g, clip_denoised=clip,
                progress=False, return_trajectory=True,
            )  # fmt: skip
        return x.cpu(), {k: v.cpu() if torch.is_tensor(v) else v for k, v in traj.items()}

    def decode_from(self, xt: torch.Tensor, t: int, seed: int = 0, eta: float = 0.0):
        """The reverse chain from x_t at code step t down to x_0: Algorithm 2 from t, or DDIM
        (``eta`` 0: deterministic; 1: stochastic) on ``plan.steps_from(t)`` steps."""
        g, xt = self._generator(seed), xt.to(self.device)
        clip = self.info["clip_sample"]
        if self.plan.ddim_steps is None:
            x = self.diffusion.sample(self.model, xt.shape, x_start=xt, t_start=t, generator=g,
                                      clip_denoised=clip, progress=False)  # fmt: skip
        else:
            x = chain_from(self.diffusion, t).ddim_sample(
                self.model, xt.shape, x_start=xt, steps=self.plan.steps_from(t), eta=eta,
                generator=g, clip_denoised=clip, progress=False,
            )  # fmt: skip
        return x.cpu()

    def continuations(self, xt: torch.Tensor, t: int, n: int, seed: int = 0) -> torch.Tensor:
        """``n`` independent continuations [n, C, H, W] of one x_t [C, H, W] at code step t (the
        paper's Fig. 7): Algorithm 2 from t, or stochastic DDIM (eta = 1)."""
        return self.decode_from(xt.expand(n, *xt.shape).clone(), t, seed=seed, eta=1.0)

    def interpolate(self, x1, x2, lambdas, t: int, seed: int = 0) -> torch.Tensor:
        """Section 4.4: encode x1 and x2 [C, H, W] to step t with independent noises (fixed across
        lambda), mix linearly, decode. Returns [L, C, H, W]."""
        g = self._generator(seed)
        lam = torch.as_tensor(lambdas, dtype=torch.float32).reshape(-1, 1, 1, 1)
        e1, e2 = torch.randn((2, 1, *x1.shape), generator=g)
        x1t = self.diffusion.q_sample(x1[None].float(), t, e1)
        x2t = self.diffusion.q_sample(x2[None].float(), t, e2)
        return self.decode_from((1 - lam) * x1t + lam * x2t, t, seed=seed + 1)

    def endpoints(self, n: int, seed: int = 0) -> tuple[torch.Tensor, str]:
        """``n`` images to interpolate between: CIFAR-10 test images when they are in the cache
        (not downloaded here), else the model's own samples. Returns (images, what they are)."""
        if self.info.get("dataset") == "CIFAR-10":
            from .data import DatasetUnavailableError, load_dataset

            try:
                test = load_dataset("cifar10", "test", download=False)
            except (DatasetUnavailableError, ImportError):
                pass
            else:
                return test.data[:n].clone(), "CIFAR-10 test images"
        return self.sample(n, seed=seed)[0], "the model's own samples"


def image_rows(rows, row_labels, col_labels, *, title: str | None = None,
               image_size: float = 0.8):  # fmt: skip
    """A table of images, one row per entry of ``rows`` (each [K, C, H, W] in [-1, 1]), with
    row and column labels. Returns the figure."""
    from .viz import _bare, _image_table, _imshow, make_grid

    fig, axes = _image_table(len(rows), len(col_labels), image_size, title)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            _imshow(axes[r, c], make_grid(image, padding=0))
            _bare(axes[r, c])
            if r == 0:
                axes[r, c].set_title(col_labels[c], fontsize=8)
        axes[r, 0].set_ylabel(row_labels[r], fontsize=9)
    return fig


def _note(name: str, why: str = "") -> None:
    print(f"{why}To run this section: `ddpm download {name}`, then build the book with "
          f"{ENV}=1.")  # fmt: skip


def _cpu_threads() -> int:
    """OMP_NUM_THREADS when set (a shared machine), else the cores this process may use."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        pass
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def book_model(name: str, *, needs_gpu: bool = False) -> BookModel | None:
    """The released model ``name`` for the book, or None (after a one-line note) when the book
    is not built with ``DDPM_PRETRAINED=1``, the weights are not in the cache, or ``needs_gpu``
    and there is no CUDA device. Never downloads. A stand-in cache raises ``PretrainedError``
    unless ``DDPM_PRETRAINED_STANDIN=1``.

    On a CPU it lets PyTorch use every core, or ``OMP_NUM_THREADS`` when set (the chapters set
    one thread for their small models; the paper's UNet is large enough to gain from more).
    """
    entry = pretrained.REGISTRY.get(name)
    if entry is None:
        raise pretrained.PretrainedError(f"unknown pretrained model {name!r}")
    if os.environ.get(ENV, "") != "1":
        _note(name, f"The paper's {entry.dataset} model is not loaded in this build. ")
        return None
    device = resolve_device("auto")
    if needs_gpu and device.type != "cuda":
        _note(name, f"The {entry.dataset} model runs here only with a GPU (none found). ")
        return None
    if not pretrained.is_downloaded(name):
        _note(name, f"The {entry.dataset} model is not in the cache. ")
        return None
    standin = pretrained.is_standin(name)
    if standin and os.environ.get(STANDIN_ENV, "") != "1":
        raise pretrained.PretrainedError(
            f"the cached {name} ({pretrained.local_dir(name)}) is a stand-in with random weights, "
            f"written by the tests; it must not reach the book: delete that folder and run "
            f"`ddpm download {name}` (or set {STANDIN_ENV}=1, for tests only)"
        )
    model, diffusion, info = pretrained.load_pretrained(name, device=device, download=False)
    if device.type == "cpu":
        torch.set_num_threads(_cpu_threads())
    plan = plan_for(device, info["image_size"])
    return BookModel(name, model, diffusion, info, device, plan, standin)
