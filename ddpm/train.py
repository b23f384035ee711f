"""Training a DDPM: Algorithm 1 of Ho, Jain & Abbeel (2020), with the paper's recipe (section 4,
Appendix B): Adam, linear LR warmup, gradient clipping, an EMA of the weights for sampling, and
random flips. Read it top to bottom: config and presets, model building, checkpoints, the loop.
In short::

    from ddpm.train import preset_config, train, load_model
    result = train(preset_config("digits", steps=2000))
    model, diffusion, config = load_model(result.checkpoint)  # EMA weights

Run folder (``config.run_dir``, default ``data_dir("runs", config.name)``)::

    config.json                       the TrainConfig as JSON
    metrics.csv                       step, loss (mean since the last row, all ranks), lr,
                                      grad_norm, steps_per_s (since this call began), wall_time
    samples/step_0002000.png          EMA samples (DDIM, ``sample_steps`` steps: a quick look,
                                      not the paper's 1000-step ancestral sampler)
    checkpoints/ckpt_0002000.pt       the last ``keep_last`` checkpoints; the highest step is
                                      the one ``resume=True`` and ``load_model(run_dir)`` use
    train.lock                        while a training runs: its pid and host (ddpm.checkpoint)

A run folder holds one run. ``train`` locks it for the whole call (a second training into it
fails at once, naming the holder); a folder with a checkpoint is refused unless ``resume=True``
continues it or ``overwrite=True`` deletes it first (``--resume`` / ``--overwrite``).
Checkpoints are written atomically and rotated only after the new one is safely on disk; the
partial files a ``kill -9`` during a save leaves are removed by the next start.

Non-finite values: a step whose loss or gradient norm is nan or inf is skipped on the device
(fused Adam's ``found_inf`` flag, as GradScaler uses it, and an EMA update of weight 0), so the
loop takes no host sync per step. At every log, sample grid and checkpoint one flag is read
first; a skipped step or a non-finite weight stops the run with a one-line ``DivergedError``
naming the step, and nothing is written.

Exact resume: a checkpoint holds the model, the EMA, Adam (and GradScaler) state, the step and
every RNG state the loop uses (the torch CPU / CUDA / MPS RNGs, which only dropout draws from;
the data generator; the noise generator), so training N steps and resuming to 2N gives the
weights of 2N uninterrupted steps. Checkpoints load with ``torch.load(weights_only=True)``.

Distributed: under ``torchrun`` (WORLD_SIZE > 1) every rank draws the *same* global batch of
indices, flips, steps t and noise eps from identically seeded generators and keeps its slice
``rank`` of it, so 2 ranks x B/2 compute the gradient of 1 process x B. ``batch_size`` is the
global batch. Only the global torch RNG (dropout) is seeded per rank (seed + rank). Rank 0
alone writes files.

SIGINT / SIGTERM during ``train`` finish the current step, write a checkpoint and make ``train``
return normally with ``result.interrupted = True`` (no exception: a notebook cell just ends).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.distributed as dist

from .checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    RunFolderError,
    RunLock,
    atomic_save,
    atomic_write,
    check_output_path,
    checkpoint_path,
    checkpoint_step,
    latest_checkpoint,
    load_weights,
    os_error_message,
    read_checkpoint,
    remove_orphans,
    rotate,
)
from .data import dataset_info, load_dataset, random_flip
from .device import amp_context, grad_scaler, maybe_compile, resolve_amp, resolve_device
from .diffusion import GaussianDiffusion
from .memory import FLOAT, check_fits, parameter_count, training_bytes
from .paths import data_dir
from .progress import progress_bar
from .schedules import get_beta_schedule, linear_beta_schedule
from .unet import UNet

__all__ = [
    "TrainConfig",
    "TrainResult",
    "CheckpointError",
    "DivergedError",
    "RunFolderError",
    "preset_config",
    "train",
    "load_model",
    "latest_checkpoint",
    "checkpoint_step",
    "lr_at",
    "ema_update",
]


def _field(default, help: str, check=None, *, factory=None):
    """A TrainConfig field: ``help`` (also the ``ddpm train`` flag's help) and an optional
    ``check = (predicate, rule)`` that :meth:`TrainConfig.validate` and the CLI both apply."""
    meta = {"help": help, "check": check}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


_POSITIVE = (lambda v: v >= 1, "expected a positive integer")
_NONNEGATIVE_INT = (lambda v: v >= 0, "expected an integer >= 0")
_FINITE_NONNEGATIVE = (lambda v: math.isfinite(v) and v >= 0, "expected a finite number >= 0")
_BETA = (lambda v: 0.0 < v < 1.0, "betas must lie in (0, 1)")
_DECAY = (lambda v: 0.0 <= v < 1.0, "expected a decay in [0, 1)")
_PROBABILITY = (lambda v: 0.0 <= v <= 1.0, "expected a probability in [0, 1]")
SEED_MAX = 2**63 - 1
_SEED = (lambda v: 0 <= v <= SEED_MAX, f"expected a seed in 0..{SEED_MAX}")
_NAME = (
    lambda v: v not in ("", ".", "..") and "/" not in v and "\\" not in v and "\0" not in v,
    "a run name must be a plain folder name (not empty, '.' or '..', no '/' or '\\')",
)


@dataclass
class TrainConfig:
    """Everything a run needs, as plain JSON-serialisable fields. Defaults: the paper's CIFAR-10
    recipe (Appendix B), except the dataset/model, which default to the offline digits. Each
    field's help text (``fields(TrainConfig)[i].metadata["help"]``) is also its ``ddpm train``
    flag's, and :meth:`validate` checks the values."""

    name: str = _field("digits", "run name: the run folder is data_dir('runs', NAME) unless "
                       "run_dir is given", _NAME)  # fmt: skip
    dataset: str = _field("digits", "dataset: digits, mnist, fashion-mnist, cifar10, folder:PATH")
    image_size: int | None = _field(None, "resize images to this size (default: the dataset's)",
                                    _POSITIVE)  # fmt: skip
    model: str = _field("digits", "UNet preset: digits, mnist, cifar10")
    model_overrides: dict = _field(None, "UNetConfig fields as JSON, e.g. '{\"ch\": 16}'",
                                   factory=dict)  # fmt: skip
    timesteps: int = _field(1000, "diffusion steps T", _POSITIVE)
    schedule: str = _field("linear", "beta schedule: linear (the paper's 1e-4..0.02) or cosine")
    beta_start: float = _field(1e-4, "linear schedule: beta_1 for T = 1000 (scaled by 1000/T)",
                               _BETA)  # fmt: skip
    beta_end: float = _field(0.02, "linear schedule: beta_T for T = 1000 (scaled by 1000/T)",
                             _BETA)  # fmt: skip
    model_mean_type: str = _field("eps", "what the model predicts: eps, x0 or mean")
    model_var_type: str = _field("fixed_large", "reverse variance: fixed_large or fixed_small")
    batch_size: int = _field(128, "global batch size (all ranks together)", _POSITIVE)
    lr: float = _field(2e-4, "peak learning rate (Adam)", _FINITE_NONNEGATIVE)
    warmup_steps: int = _field(5000, "linear learning-rate warmup from 0 over this many steps",
                               _NONNEGATIVE_INT)  # fmt: skip
    grad_clip: float = _field(1.0, "max global gradient norm; 0 disables clipping",
                              _FINITE_NONNEGATIVE)  # fmt: skip
    ema_decay: float = _field(0.9999, "EMA decay of the weights used for sampling", _DECAY)
    steps: int = _field(800_000, "total optimizer steps", _POSITIVE)
    conditional: bool = _field(False, "class-conditional model (UNet num_classes = the "
                               "dataset's classes), for classifier-free guidance: see "
                               "ddpm.guidance and the digits-cond preset")  # fmt: skip
    label_dropout: float = _field(0.1, "conditional: replace each label by the null class "
                                  "with this probability (trains the unconditional model too)",
                                  _PROBABILITY)  # fmt: skip
    flip: bool | None = _field(None, "random horizontal flips (default: the dataset's)")
    amp: str = _field("auto", "mixed precision: auto, bf16, fp16, off")
    compile: bool = _field(False, "torch.compile the training forward")
    seed: int = _field(0, "random seed", _SEED)
    device: str = _field("auto", "auto (CUDA, else MPS on Apple silicon, else CPU), cpu, cuda, "
                         "cuda:1, mps")  # fmt: skip
    log_every: int = _field(100, "log a metrics row every this many steps; 0: only at the end",
                            _NONNEGATIVE_INT)  # fmt: skip
    sample_every: int = _field(5000, "EMA sample grid every this many steps (and at the end); "
                               "0: never", _NONNEGATIVE_INT)  # fmt: skip
    sample_count: int = _field(64, "images in each sample grid", _POSITIVE)
    sample_steps: int = _field(50, "DDIM steps for the sample grids", _POSITIVE)
    ckpt_every: int = _field(5000, "checkpoint every this many steps; 0: only at the end "
                             "(always also at the end and on SIGINT/SIGTERM)",
                             _NONNEGATIVE_INT)  # fmt: skip
    keep_last: int = _field(3, "keep this many checkpoints", _POSITIVE)
    run_dir: str | None = _field(None, "the run folder (default: data_dir('runs', NAME))")

    def to_dict(self) -> dict:
        """A plain dict (tuples become lists), the same after a JSON round trip."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; see ddpm.train.TrainConfig")
        return cls(**d)

    def validate(self) -> TrainConfig:
        """Raise a one-line ValueError naming the first field whose value breaks its rule."""
        for f in fields(self):
            value, check = getattr(self, f.name), f.metadata.get("check")
            if check is None or value is None:
                continue
            try:
                ok = check[0](value)
            except TypeError:
                ok = False
            if not ok:
                raise ValueError(f"TrainConfig.{f.name}: {check[1]}, got {value!r}")
        return self


# Fields that fix the model and the diffusion: a checkpoint only resumes into the same ones.
ARCH_FIELDS = ("dataset", "image_size", "model", "model_overrides", "timesteps", "schedule",
               "beta_start", "beta_end", "model_mean_type", "model_var_type",
               "conditional")  # fmt: skip

PRESETS = {
    # Quick mode (CPU: 7-10 steps/s on 2 cores, so about 3 min). EMA 0.995 (a ~200-step
    # horizon) and 200 warmup steps: with the paper's 0.9999 (a ~10k-step horizon)
    # the EMA of a 1400-step run would still be mostly the random initialisation. A small model
    # on 8x8 images takes a larger LR than the paper's 2e-4.
    "digits": dict(name="digits", dataset="digits", model="digits", batch_size=128, lr=1e-3,
                   warmup_steps=200, ema_decay=0.995, steps=1400, log_every=50,
                   sample_every=500, ckpt_every=500),
    # MNIST padded to 32x32, the CIFAR-10 architecture at half width, paper-like recipe. EMA
    # 0.9995 (~2k-step horizon) with 1000 warmup steps suits a run of tens of thousands of steps.
    "mnist": dict(name="mnist", dataset="mnist", model="mnist", batch_size=128, lr=2e-4,
                  warmup_steps=1000, ema_decay=0.9995, steps=50_000, sample_every=5000,
                  ckpt_every=5000),
    # The paper's CIFAR-10 run exactly (section 4, Appendix B): T = 1000 linear, the 35.7M UNet
    # (dropout 0.1), Adam 2e-4, batch 128, 5000 warmup steps, clip 1.0, EMA 0.9999 (over 800k
    # steps its ~10k-step horizon is short), random flips, 800k steps.
    "cifar10": dict(name="cifar10", dataset="cifar10", model="cifar10", timesteps=1000,
                    schedule="linear", batch_size=128, lr=2e-4, warmup_steps=5000, grad_clip=1.0,
                    ema_decay=0.9999, flip=True, steps=800_000),
    # Class-conditional digits for classifier-free guidance (Ho & Salimans 2022: label dropout
    # 0.1): the digits recipe, shorter (about a minute on a CPU) so that the guidance chapter
    # trains it within its budget. Short on purpose: unguided, its samples are the requested
    # digit only about 3 times in 4, which leaves guidance something to improve.
    "digits-cond": dict(name="digits-cond", dataset="digits", model="digits", batch_size=128,
                        lr=1e-3, warmup_steps=100, ema_decay=0.99, steps=300,
                        conditional=True, label_dropout=0.1, log_every=50, sample_every=0,
                        ckpt_every=0),
}  # fmt: skip


def _every(step: int, period: int) -> bool:
    """True every ``period`` steps; never for a period of 0."""
    return period > 0 and step % period == 0


def preset_config(preset: str, /, **overrides) -> TrainConfig:
    """A TrainConfig from ``PRESETS`` ("digits", "mnist", "cifar10", "digits-cond"), with fields
    overridden
    (any field, the run ``name`` included; an unknown field is a one-line ValueError)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown training preset {preset!r}; known presets: {sorted(PRESETS)}")
    return TrainConfig.from_dict({**PRESETS[preset], **overrides})


@dataclass
class TrainResult:
    """What ``train`` returns: the run folder, the step reached, the mean loss of the last
    logging window, the last checkpoint written, the metrics CSV, the sample grids written, and
    whether SIGINT / SIGTERM stopped the run early."""

    run_dir: Path
    step: int
    loss: float  # mean L_simple over the last logging window
    checkpoint: Path | None  # the last checkpoint written
    metrics: Path
    samples: list[Path]
    interrupted: bool = False


class DivergedError(RuntimeError):
    """Training produced a non-finite loss, gradient or weight; no checkpoint was written."""


# ---------------------------------------------------------------------- schedules and EMA
def lr_at(step: int, lr: float, warmup_steps: int) -> float:
    """LR of optimizer step ``step`` (1-based): linear warmup lr * step / warmup, then lr."""
    return lr * min(1.0, step / warmup_steps) if warmup_steps > 0 else lr


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float,
               apply: torch.Tensor | None = None) -> None:  # fmt: skip
    """ema <- decay * ema + (1 - decay) * model, for parameters and float buffers (integer
    buffers are copied). Sampling uses the EMA weights, as in the paper. ``apply``, a bool
    tensor, makes the update a no-op where False, without a host sync (a skipped step)."""
    w = 1.0 - decay
    if apply is not None:
        w = apply.to(torch.float32) * w
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), w)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        if e.is_floating_point():
            e.lerp_(b, w)
        else:
            e.copy_(b if apply is None else torch.where(apply, b, e))


# ---------------------------------------------------------------------- building blocks
def build_model(config: TrainConfig) -> UNet:
    info = dataset_info(config.dataset, image_size=config.image_size)
    kw = dict(in_channels=info.channels, image_size=info.image_size)
    if config.conditional:
        if info.num_classes < 1:
            raise ValueError(f"conditional training needs class labels, and {config.dataset} "
                             f"has none; use a labelled dataset or conditional=False")  # fmt: skip
        kw["num_classes"] = info.num_classes
    return UNet.from_preset(config.model, **{**kw, **config.model_overrides})


def build_diffusion(config: TrainConfig) -> GaussianDiffusion:
    if config.schedule == "linear":
        betas = linear_beta_schedule(config.timesteps, config.beta_start, config.beta_end)
    else:
        betas = get_beta_schedule(config.schedule, config.timesteps)
    return GaussianDiffusion(betas, config.model_mean_type, config.model_var_type)


# ---------------------------------------------------------------------- checkpoints
def config_differences(saved: dict, config: TrainConfig, fields) -> list[str]:
    """``"field: saved -> now"`` for each of ``fields`` where a checkpoint's saved config (a
    JSON-like dict: a tuple is a list there, as in ``to_dict()``) differs from ``config``."""
    was = {**TrainConfig().to_dict(), **saved}  # a field added since has its default
    now = config.to_dict()
    return [f"{k}: {was[k]!r} -> {now[k]!r}" for k in fields if was[k] != now[k]]


def _check_arch(saved: dict, config: TrainConfig, path) -> None:
    diff = config_differences(saved, config, ARCH_FIELDS)
    if diff:
        raise CheckpointError(f"checkpoint {path} is from another architecture: {'; '.join(diff)}")


def _meta_model(config: TrainConfig) -> UNet:
    """The model of ``config`` on PyTorch's meta device: its config and size, no memory."""
    with torch.device("meta"):
        return build_model(config)


def load_model(path, *, ema: bool = True, device="cpu"):
    """(model, diffusion, config) from a checkpoint file or a run folder (its latest checkpoint).

    ``ema=True`` loads the EMA weights, the ones the paper samples with. The model is in eval
    mode. A config whose model cannot fit in memory is refused before anything is allocated.
    """
    ckpt = read_checkpoint(path)
    config = TrainConfig.from_dict(ckpt["config"])
    need = FLOAT * parameter_count(_meta_model(config).config)
    for where in dict.fromkeys(["cpu", str(device)]):
        check_fits(need, where, f"the model of checkpoint {path}",
                   "it cannot be loaded on this machine")  # fmt: skip
    model = build_model(config)
    load_weights(model, ckpt["ema" if ema else "model"], f"checkpoint {path}")
    return model.to(device).eval(), build_diffusion(config), config


# ---------------------------------------------------------------------- the run folder
def _notice(message: str) -> None:
    print(f"ddpm: {message}", file=sys.stderr, flush=True)


def _clear_run(run_dir: Path) -> None:
    """Delete a run's files (not the lock, nor anything else in the folder): its checkpoints,
    sample grids, config and metrics."""
    for folder, pattern in (("checkpoints", "ckpt_*.pt"), ("samples", "step_*.png")):
        for p in (run_dir / folder).glob(pattern):
            p.unlink(missing_ok=True)
    for name in ("config.json", "metrics.csv"):
        (run_dir / name).unlink(missing_ok=True)


def _open_run(run_dir: Path, resume: bool, overwrite: bool) -> RunLock:
    """Lock the run folder, then refuse an existing run (one with a checkpoint) unless
    ``resume`` or ``overwrite`` (which deletes the old run whole), and remove what an
    interrupted save left. Files of an attempt that never reached a checkpoint are cleared."""
    check_output_path(run_dir / "config.json", "run folder")
    lock = RunLock(run_dir).acquire()
    try:
        if lock.notice:
            _notice(lock.notice)
        last = latest_checkpoint(run_dir)
        if last is not None and not resume:
            if not overwrite:
                raise RunFolderError(
                    f"{run_dir} already holds a run (checkpoint at step {checkpoint_step(last)})"
                    f"; continue it with --resume (resume=True) or replace it with --overwrite "
                    f"(overwrite=True)"
                )
            _clear_run(run_dir)
            _notice(f"--overwrite: deleted the old run in {run_dir} (it had reached step "
                    f"{checkpoint_step(last)})")  # fmt: skip
        elif last is None:
            _clear_run(run_dir)  # no checkpoint: nothing to continue, nothing to mix with
        orphans = remove_orphans(run_dir / "checkpoints")
        if orphans:
            mb = sum(size for _, size in orphans) / 1e6
            _notice(f"removed {len(orphans)} unfinished checkpoint file(s) ({mb:.1f} MB) left by "
                    f"an interrupted save: {', '.join(p.name for p, _ in orphans)}")  # fmt: skip
    except BaseException:
        lock.release()
        raise
    return lock


def _on_rank0(world: int, rank: int, fn):
    """Run ``fn`` on rank 0 only; other ranks raise what it raised (as RunFolderError), so an
    error there stops every rank instead of leaving them waiting. Returns fn's result on 0."""
    result, message = None, None
    if rank == 0:
        try:
            result = fn()
        except Exception as err:
            if world == 1:
                raise
            message = str(err)
            failure = err
    if world > 1:
        box = [message]
        dist.broadcast_object_list(box, src=0)
        if box[0] is not None:
            if rank == 0:
                raise failure
            raise RunFolderError(box[0])
    return result


# ---------------------------------------------------------------------- the loop
def _gather_rng(device: torch.device, world: int) -> dict[str, torch.Tensor]:
    """Every rank's torch RNG state(s), stacked [world, n] (dropout draws differ per rank)."""
    states = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    elif device.type == "mps":
        states["mps"] = torch.mps.get_rng_state()
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, states)
        return {k: torch.stack([g[k] for g in gathered]) for k in states}
    return {k: v[None] for k, v in states.items()}


class _StopFlag:
    """Sets ``.stop`` on SIGINT / SIGTERM while active; restores the old handlers on exit."""

    def __init__(self):
        self.stop = False
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal() needs the main one
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.stop = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


@dataclass
class _Run:
    """Everything the loop changes, in one place. The counters are device tensors, read only
    at logs and checkpoints, so the loop takes no host sync per step."""

    config: TrainConfig
    device: torch.device
    world: int
    rank: int
    amp: str
    model: torch.nn.Module
    ema: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    data_gen: torch.Generator
    noise_gen: torch.Generator
    run_dir: Path
    step: int = 0
    wall0: float = 0.0  # wall time of the steps before this call (from the checkpoint)
    start: float = 0.0  # perf_counter at the first step of this call
    start_step: int = 0
    loss_value: float = math.nan  # the mean loss of the last logging window
    last_checkpoint: Path | None = None
    counters: dict = field(default_factory=dict)  # loss_sum, n, skipped, first_bad, grad_norm

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wall(self) -> float:
        return self.wall0 + time.perf_counter() - self.start

    def reset_window(self) -> None:
        z = dict(device=self.device)
        self.counters = {"loss_sum": torch.zeros((), **z), "n": 0,
                         "skipped": torch.zeros((), dtype=torch.long, **z),
                         "first_bad": torch.full((), -1, dtype=torch.long, **z),
                         "grad_norm": torch.zeros((), **z)}  # fmt: skip


def _build(config: TrainConfig, device, world, rank, amp, run_dir) -> _Run:
    torch.manual_seed(config.seed)  # model init: identical on every rank
    model = build_model(config).to(device)
    ema = build_model(config).to(device).eval().requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    # fused Adam takes GradScaler's found_inf flag: a skipped step leaves weights and moments
    fused = device.type in ("cpu", "cuda")
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=fused)
    scaler = grad_scaler(amp, device)
    data_gen = torch.Generator().manual_seed(config.seed)  # indices and flips (CPU)
    noise_gen = torch.Generator(device=device).manual_seed(config.seed + 1)  # t and eps
    torch.manual_seed(config.seed + rank)  # dropout: per rank
    return _Run(config, device, world, rank, amp, model, ema, optimizer, scaler, data_gen,
                noise_gen, run_dir)  # fmt: skip


def _restore(run: _Run, path: Path) -> None:
    """Load a checkpoint into ``run``: weights, EMA, Adam (and GradScaler), step, RNG states."""
    ckpt = read_checkpoint(path)
    _check_arch(ckpt["config"], run.config, path)
    load_weights(run.model, ckpt["model"], f"checkpoint {path}")
    load_weights(run.ema, ckpt["ema"], f"checkpoint {path} (EMA)")
    run.optimizer.load_state_dict(ckpt["optimizer"])
    if "scaler" in ckpt and run.amp == "fp16":
        run.scaler.load_state_dict(ckpt["scaler"])
    rng = ckpt["rng"]
    r = run.rank if len(rng["cpu"]) == run.world else 0  # another world size: rank 0's states
    torch.set_rng_state(rng["cpu"][r])
    if run.device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"][r], run.device)
    elif run.device.type == "mps" and "mps" in rng:
        torch.mps.set_rng_state(rng["mps"][r])
    run.data_gen.set_state(rng["data"])
    run.noise_gen.set_state(rng["noise"])
    run.step, run.wall0 = int(ckpt["step"]), float(ckpt.get("wall_time", 0.0))
    run.last_checkpoint = path


def _with_labels(run: _Run, net, ds, idx, part):
    """The conditional model as a ``model(x_t, t)`` for this batch: the labels of the images
    ``idx`` (this rank's slice), each replaced by the null class with probability
    ``label_dropout`` (drawn for the global batch, so every rank draws alike), so that one
    network learns eps(x, t, y) and the unconditional eps(x, t, null) together."""
    drop = torch.rand(run.config.batch_size, generator=run.data_gen)[part]
    null = run.model.config.num_classes
    y = torch.where(drop < run.config.label_dropout, null, ds.targets[idx]).to(run.device)
    return lambda xt, t: net(xt, t, y)


def _train_step(run: _Run, net, diffusion, ds, autocast, part) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of Algorithm 1 on this rank's slice of the global batch. A step whose loss or
    gradient norm is not finite changes nothing (weights, Adam, EMA) and is counted instead."""
    c = run.config
    # the global batch, identical on every rank; this rank keeps slice `part`
    idx = torch.randperm(len(ds), generator=run.data_gen)[: c.batch_size]
    x0 = ds.data[idx]
    if ds.flip:
        x0 = random_flip(x0, generator=run.data_gen)
    t = torch.randint(0, c.timesteps, (c.batch_size,), generator=run.noise_gen, device=run.device)
    shape = (c.batch_size, *ds.data.shape[1:])
    noise = torch.randn(shape, generator=run.noise_gen, device=run.device)
    idx, x0, t, noise = idx[part], x0[part].to(run.device), t[part], noise[part]
    model = _with_labels(run, net, ds, idx, part) if c.conditional else net

    for group in run.optimizer.param_groups:
        group["lr"] = lr_at(run.step + 1, c.lr, c.warmup_steps)
    with autocast:
        loss = diffusion.training_losses(model, x0, t=t, noise=noise).mean()
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.unscale_(run.optimizer)
    max_norm = c.grad_clip if c.grad_clip > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), max_norm)
    loss = loss.detach().float()
    finite = torch.isfinite(loss) & torch.isfinite(grad_norm)
    if run.scaler.is_enabled():  # fp16: GradScaler skips steps with inf/nan gradients itself
        run.scaler.step(run.optimizer)
        run.scaler.update()
        bad = ~torch.isfinite(loss)  # an overflowing scaled gradient is routine; a loss is not
    else:
        if run.optimizer.defaults.get("fused"):
            run.optimizer.grad_scale, run.optimizer.found_inf = None, (~finite).float()
            run.optimizer.step()
        elif finite.item():  # a device without fused Adam (e.g. MPS): one sync per step
            run.optimizer.step()
        bad = ~finite
    ema_update(run.ema, run.model, c.ema_decay, apply=finite)
    run.step += 1

    k = run.counters
    k["loss_sum"] += loss
    k["n"] += 1
    k["skipped"] += bad
    k["first_bad"] = torch.where(bad & (k["first_bad"] < 0), run.step, k["first_bad"])
    k["grad_norm"] = grad_norm.detach().float()
    return loss, idx


def _check_health(run: _Run) -> None:
    """Read the window's finiteness flags (one host sync) and stop with a one-line
    DivergedError if any step was skipped or any weight is not finite. Called before every
    log row, sample grid and checkpoint, so nothing non-finite is ever written."""
    k = run.counters
    weights = [p for m in (run.model, run.ema) for p in m.parameters()]
    ok = torch.stack([torch.isfinite(p).all() for p in weights]).all()
    flags = torch.stack([k["skipped"].float(), k["first_bad"].float(), (~ok).float()])
    if run.world > 1:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    skipped, first_bad, bad_weights = flags.tolist()
    if skipped == 0 and bad_weights == 0:
        return
    where = f"at step {int(first_bad)}" if first_bad >= 0 else f"by step {run.step}"
    kept = (f"the last good checkpoint {run.last_checkpoint} is kept" if run.last_checkpoint
            else "no checkpoint was written")  # fmt: skip
    raise DivergedError(
        f"training diverged {where}: the loss, a gradient or a weight is not finite (nan or "
        f"inf); the learning rate is likely too high (lr = {run.config.lr:g}: lower it); {kept}"
    )


def _log(run: _Run, metrics: Path, bar) -> None:
    k = run.counters
    mean = k["loss_sum"] / max(k["n"], 1)
    if run.world > 1:  # SUM, not AVG: gloo has no AVG
        dist.all_reduce(mean)
    run.loss_value = float(mean) / run.world
    rate = (run.step - run.start_step) / max(time.perf_counter() - run.start, 1e-9)
    if run.main:
        row = [run.step, run.loss_value, run.optimizer.param_groups[0]["lr"],
               float(k["grad_norm"]), rate, run.wall()]  # fmt: skip
        with metrics.open("a", newline="") as f:
            csv.writer(f).writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])
        bar.set_postfix(loss=f"{run.loss_value:.4f}")


def _save_checkpoint(run: _Run) -> Path:
    """Write ``ckpt_STEP.pt`` atomically (rank 0), then rotate; every rank must call it (the RNG
    states are gathered). A failed write keeps the previous checkpoint and says so."""
    rng = {"data": run.data_gen.get_state(), "noise": run.noise_gen.get_state()}
    rng.update(_gather_rng(run.device, run.world))  # a collective: every rank calls it
    path = checkpoint_path(run.run_dir, run.step)
    if not run.main:
        return path
    state = {"format_version": FORMAT_VERSION, "model": run.model.state_dict(),
             "ema": run.ema.state_dict(), "optimizer": run.optimizer.state_dict(),
             "step": run.step, "config": run.config.to_dict(), "rng": rng,
             "wall_time": run.wall(), "loss": run.loss_value}  # fmt: skip
    if run.amp == "fp16":
        state["scaler"] = run.scaler.state_dict()
    try:
        atomic_save(state, path)
    except OSError as err:
        kept = (f"the previous checkpoint {run.last_checkpoint.name} is kept"
                if run.last_checkpoint else "no earlier checkpoint exists")  # fmt: skip
        raise CheckpointError(os_error_message(err, f"write checkpoint {path}") + f"; {kept}"
                              ) from None  # fmt: skip
    rotate(path.parent, run.config.keep_last, keep=path)
    run.last_checkpoint = path
    return path


def _save_samples(run: _Run, diffusion) -> Path:
    c, cfg = run.ema.config, run.config
    gen = torch.Generator(device=run.device).manual_seed(cfg.seed)  # same x_T every time
    shape = (cfg.sample_count, c.in_channels, c.image_size, c.image_size)
    x = diffusion.ddim_sample(run.ema, shape, steps=min(cfg.sample_steps, cfg.timesteps),
                              generator=gen, progress=False)  # fmt: skip
    return _save_grid(x, run.run_dir / "samples" / f"step_{run.step:07d}.png", c.image_size)


def _check_memory(config: TrainConfig, device: torch.device, world: int) -> None:
    """Refuse, before loading data or building the model, a run that cannot fit in memory."""
    unet = _meta_model(config).config
    need = training_bytes(unet, config.batch_size // world)
    check_fits(need, device, f"training {config.model} at image size {unet.image_size} with "
               f"batch {config.batch_size}", "use a smaller batch_size (--batch-size), "
               "image_size (--image-size) or model")  # fmt: skip


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    on_step: Callable[[int, dict], None] | None = None,
) -> TrainResult:
    """Train with L_simple (eq. 14, Algorithm 1) until ``config.steps`` steps are done.

    The run folder is locked for the whole call (a second training into it fails at once).
    An existing run there is refused unless ``resume=True``, which continues from its latest
    checkpoint (if any; its architecture fields must match ``config``, the rest, e.g. ``steps``,
    may change), or ``overwrite=True``, which deletes the old run first. ``on_step(step, info)``
    is called after every step with ``info = {"loss", "indices"}`` (this rank's dataset
    indices). A non-finite loss, gradient or weight stops the run with a one-line
    ``DivergedError`` at the next log or checkpoint, before anything is written.
    """
    config.validate()
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: continue the run or replace it")
    # --- distributed setup: torchrun sets WORLD_SIZE, RANK, LOCAL_RANK
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = resolve_device(config.device)
    if world > 1 and device.type == "mps":
        raise ValueError("torchrun: DDP has no MPS backend; on Apple silicon train in one process "
                         "(without torchrun)")  # fmt: skip
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by {world} ranks")
    amp = resolve_amp(config.amp, device)
    _check_memory(config, device, world)
    own_group = world > 1 and not dist.is_initialized()
    if own_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    run_dir = Path(config.run_dir) if config.run_dir else data_dir("runs") / config.name
    created = not run_dir.exists()
    lock = _on_rank0(world, rank, lambda: _open_run(run_dir, resume, overwrite))
    try:
        return _train(config, resume, progress, on_step, world, rank, device, amp, run_dir)
    finally:
        if lock is not None:
            lock.release()
            if created:  # a run that failed before writing anything leaves no empty folder
                with suppress(OSError):
                    run_dir.rmdir()
        if own_group:
            dist.destroy_process_group()


def _train(config, resume, progress, on_step, world, rank, device, amp, run_dir) -> TrainResult:
    # --- data, model, diffusion, optimizer; the state of a checkpoint when resuming
    ds = load_dataset(config.dataset, image_size=config.image_size, flip=config.flip)
    if config.batch_size > len(ds):
        raise ValueError(
            f"batch_size {config.batch_size} is larger than the {config.dataset} training set "
            f"({len(ds)} images); use a batch of at most {len(ds)}"
        )
    run = _build(config, device, world, rank, amp, run_dir)
    diffusion = build_diffusion(config)
    last = latest_checkpoint(run_dir) if resume else None
    if last is not None:
        _restore(run, last)
    metrics = run_dir / "metrics.csv"
    if run.main:
        for d in ("checkpoints", "samples"):
            (run_dir / d).mkdir(parents=True, exist_ok=True)
        atomic_write(
            run_dir / "config.json",
            lambda f: f.write((json.dumps(config.to_dict(), indent=2) + "\n").encode()),
        )
        _reset_metrics(metrics, run.step)

    net = run.model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            run.model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if config.compile:
        net = maybe_compile(net)  # eager, with a one-line notice, where compilation fails
    autocast = amp_context(amp, device)

    # --- Algorithm 1: repeat { x0 ~ q(x0); t ~ U; eps ~ N(0, I); step on |eps - eps_theta|^2 }
    local = config.batch_size // world
    part = slice(rank * local, (rank + 1) * local)
    result = TrainResult(run_dir, run.step, math.nan, last, metrics, [])
    run.start, run.start_step = time.perf_counter(), run.step
    run.reset_window()
    bar = progress_bar(
        total=config.steps, initial=run.step, desc="train", disable=not (progress and run.main)
    )
    run.model.train()
    with _StopFlag() as flag:
        while run.step < config.steps:
            loss, idx = _train_step(run, net, diffusion, ds, autocast, part)
            bar.update(1)
            if on_step is not None:
                on_step(run.step, {"loss": loss.item(), "indices": idx})
            stop = flag.stop
            if world > 1:  # every rank must stop at the same step
                s = torch.tensor([float(stop)], device=device)
                dist.all_reduce(s, op=dist.ReduceOp.MAX)
                stop = bool(s.item())
            done = run.step == config.steps or stop
            log = _every(run.step, config.log_every) or done
            sample = config.sample_every > 0 and (run.step % config.sample_every == 0 or done)
            ckpt = _every(run.step, config.ckpt_every) or done
            if log or sample or ckpt:
                _check_health(run)  # before anything is written
            if log:
                _log(run, metrics, bar)
                run.reset_window()
            if sample and run.main:
                result.samples.append(_save_samples(run, diffusion))
            if ckpt:
                result.checkpoint = _save_checkpoint(run)
            if stop:
                result.interrupted = True
                break
    bar.close()
    result.step, result.loss = run.step, run.loss_value
    return result


METRICS_HEADER = ["step", "loss", "lr", "grad_norm", "steps_per_s", "wall_time"]


def _reset_metrics(path: Path, step: int) -> None:
    """Start metrics.csv, or keep only its rows up to ``step`` (those after the checkpoint we
    resume from will be logged again)."""
    rows = []
    if step > 0 and path.exists():
        with path.open(newline="") as f:
            rows = [r for r in list(csv.reader(f))[1:] if r and int(r[0]) <= step]

    def write(f) -> None:
        text = io.StringIO()
        csv.writer(text).writerows([METRICS_HEADER, *rows])
        f.write(text.getvalue().encode())

    atomic_write(path, write)


def _save_grid(x: torch.Tensor, path: Path, image_size: int) -> Path:
    from .viz import save_image_grid  # matplotlib is imported by viz: only when sampling

    nrow = max(1, int(math.sqrt(len(x))))
    return save_image_grid(x.float().cpu(), path, nrow=nrow, scale=max(1, 32 // image_size))
