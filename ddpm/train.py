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
import json
import math
import os
import re
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .data import dataset_info, load_dataset, random_flip
from .device import amp_context, grad_scaler, maybe_compile, resolve_amp, resolve_device
from .diffusion import GaussianDiffusion
from .paths import data_dir
from .schedules import get_beta_schedule, linear_beta_schedule
from .unet import UNet

__all__ = [
    "TrainConfig",
    "TrainResult",
    "CheckpointError",
    "preset_config",
    "train",
    "load_model",
    "latest_checkpoint",
    "checkpoint_step",
    "lr_at",
    "ema_update",
]


@dataclass
class TrainConfig:
    """Everything a run needs, as plain JSON-serialisable fields. Defaults: the paper's CIFAR-10
    recipe (Appendix B), except the dataset/model, which default to the offline digits."""

    name: str = "digits"  # run name: the run folder is data_dir("runs", name) unless run_dir
    dataset: str = "digits"  # a load_dataset name
    image_size: int | None = None  # None: the dataset's native size
    model: str = "digits"  # a UNet preset (ddpm.unet.PRESETS)
    model_overrides: dict = field(default_factory=dict)  # UNetConfig fields, e.g. {"ch": 16}
    timesteps: int = 1000  # T
    schedule: str = "linear"  # "linear" (paper: 1e-4..0.02) or "cosine"
    beta_start: float = 1e-4  # linear schedule: beta_1 for T = 1000 (scaled by 1000/T)
    beta_end: float = 0.02  # linear schedule: beta_T for T = 1000 (scaled by 1000/T)
    model_mean_type: str = "eps"
    model_var_type: str = "fixed_large"
    batch_size: int = 128  # the global batch (all ranks together)
    lr: float = 2e-4
    warmup_steps: int = 5000  # linear LR warmup from 0
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    ema_decay: float = 0.9999
    steps: int = 800_000  # total optimizer steps
    flip: bool | None = None  # random horizontal flips; None: the dataset's default
    amp: str = "auto"  # "auto" | "bf16" | "fp16" | "off"
    compile: bool = False  # torch.compile the training forward
    seed: int = 0
    device: str = "auto"  # "auto": CUDA, else MPS (Apple silicon), else CPU; or "cpu", "cuda:1"...
    log_every: int = 100  # 0: log only at the end
    sample_every: int = 5000  # EMA sample grid every this many steps (and at the end); 0: never
    sample_count: int = 64
    sample_steps: int = 50  # DDIM steps for the periodic grid
    ckpt_every: int = 5000  # 0: only at the end (always also at the end and on SIGINT/SIGTERM)
    keep_last: int = 3  # keep this many checkpoints
    run_dir: str | None = None

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


# Fields that fix the model and the diffusion: a checkpoint only resumes into the same ones.
ARCH_FIELDS = ("dataset", "image_size", "model", "model_overrides", "timesteps", "schedule",
               "beta_start", "beta_end", "model_mean_type", "model_var_type")  # fmt: skip

PRESETS = {
    # Quick mode (CPU: 7-10 steps/s on 2 cores, so about 3 min). EMA 0.995 (a ~200-step
    # horizon) and 200 warmup steps: with the paper's 0.9999 (a ~10k-step horizon, pitfall 8)
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
}  # fmt: skip


def _every(step: int, period: int) -> bool:
    """True every ``period`` steps; never for a period of 0."""
    return period > 0 and step % period == 0


def preset_config(preset: str, /, **overrides) -> TrainConfig:
    """A TrainConfig from ``PRESETS`` ("digits", "mnist", "cifar10"), with fields overridden
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


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not fit the model / config it is loaded into."""


# ---------------------------------------------------------------------- schedules and EMA
def lr_at(step: int, lr: float, warmup_steps: int) -> float:
    """LR of optimizer step ``step`` (1-based): linear warmup lr * step / warmup, then lr."""
    return lr * min(1.0, step / warmup_steps) if warmup_steps > 0 else lr


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, for parameters and float buffers (integer
    buffers are copied). Sampling uses the EMA weights, as in the paper."""
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.lerp_(b, 1.0 - decay) if e.is_floating_point() else e.copy_(b)


# ---------------------------------------------------------------------- building blocks
def build_model(config: TrainConfig) -> UNet:
    info = dataset_info(config.dataset, image_size=config.image_size)
    kw = dict(in_channels=info.channels, image_size=info.image_size)
    return UNet.from_preset(config.model, **{**kw, **config.model_overrides})


def build_diffusion(config: TrainConfig) -> GaussianDiffusion:
    if config.schedule == "linear":
        betas = linear_beta_schedule(config.timesteps, config.beta_start, config.beta_end)
    else:
        betas = get_beta_schedule(config.schedule, config.timesteps)
    return GaussianDiffusion(betas, config.model_mean_type, config.model_var_type)


# ---------------------------------------------------------------------- checkpoints
def checkpoint_step(path: Path) -> int:
    """The step in a checkpoint's file name (``ckpt_0001400.pt`` -> 1400); -1 for other names."""
    m = re.fullmatch(r"ckpt_(\d+)\.pt", path.name)
    return int(m.group(1)) if m else -1


def latest_checkpoint(run_dir) -> Path | None:
    """The checkpoint with the highest step in ``run_dir/checkpoints``, or None."""
    paths = [p for p in Path(run_dir, "checkpoints").glob("ckpt_*.pt") if checkpoint_step(p) >= 0]
    return max(paths, key=checkpoint_step, default=None)


def _atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary file in the same folder, then os.replace: never half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _read_checkpoint(path) -> dict:
    """torch.load(weights_only=True), with one clear error for a missing or damaged file."""
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"no checkpoint in {path / 'checkpoints'}")
        path = found
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except Exception as err:  # truncated zip, bad pickle, ...: all mean "damaged"
        raise CheckpointError(
            f"cannot read checkpoint {path}: the file is corrupt or truncated "
            f"({type(err).__name__}); delete it to resume from an earlier one"
        ) from None
    missing = {"model", "ema", "optimizer", "step", "config", "rng"} - set(ckpt)
    if missing:
        raise CheckpointError(f"{path} is not a ddpm.train checkpoint: missing {sorted(missing)}")
    return ckpt


def _load_weights(module: torch.nn.Module, state: dict, what: str) -> None:
    """load_state_dict, raising a one-line CheckpointError that summarises any mismatch."""
    own = module.state_dict()
    problems = []
    if missing := sorted(set(own) - set(state)):
        problems.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected := sorted(set(state) - set(own)):
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if shapes:
        k = shapes[0]
        problems.append(f"{len(shapes)} shape mismatches (e.g. {k}: checkpoint "
                        f"{tuple(state[k].shape)} vs model {tuple(own[k].shape)})")  # fmt: skip
    if problems:
        raise CheckpointError(f"{what} does not fit this architecture: " + "; ".join(problems))
    module.load_state_dict(state)


def _check_arch(saved: dict, config: TrainConfig, path) -> None:
    now = config.to_dict()
    diff = [f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in ARCH_FIELDS if saved.get(k) != now[k]]
    if diff:
        raise CheckpointError(f"checkpoint {path} is from another architecture: {'; '.join(diff)}")


def load_model(path, *, ema: bool = True, device="cpu"):
    """(model, diffusion, config) from a checkpoint file or a run folder (its latest checkpoint).

    ``ema=True`` loads the EMA weights, the ones the paper samples with. The model is in eval mode.
    """
    ckpt = _read_checkpoint(path)
    config = TrainConfig.from_dict(ckpt["config"])
    model = build_model(config)
    _load_weights(model, ckpt["ema" if ema else "model"], f"checkpoint {path}")
    return model.to(device).eval(), build_diffusion(config), config


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


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int, dict], None] | None = None,
) -> TrainResult:
    """Train with L_simple (eq. 14, Algorithm 1) until ``config.steps`` steps are done.

    ``resume=True`` continues from the run folder's latest checkpoint (if any): its architecture
    fields must match ``config``; the rest (e.g. ``steps``) may change. ``on_step(step, info)``
    is called after every step with ``info = {"loss", "indices"}`` (this rank's dataset indices).
    """
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
    own_group = world > 1 and not dist.is_initialized()
    if own_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by {world} ranks")
    amp = resolve_amp(config.amp, device)
    main = rank == 0

    # --- data, model, diffusion, optimizer
    ds = load_dataset(config.dataset, image_size=config.image_size, flip=config.flip)
    if config.batch_size > len(ds):
        raise ValueError(
            f"batch_size {config.batch_size} is larger than the {config.dataset} training set "
            f"({len(ds)} images); use a batch of at most {len(ds)}"
        )
    torch.manual_seed(config.seed)  # model init: identical on every rank
    model = build_model(config).to(device)
    ema = build_model(config).to(device).eval().requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    diffusion = build_diffusion(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scaler = grad_scaler(amp, device)
    data_gen = torch.Generator().manual_seed(config.seed)  # indices and flips (CPU)
    noise_gen = torch.Generator(device=device).manual_seed(config.seed + 1)  # t and eps
    torch.manual_seed(config.seed + rank)  # dropout: per rank

    run_dir = Path(config.run_dir) if config.run_dir else data_dir("runs", config.name)
    ckpt_dir, sample_dir = run_dir / "checkpoints", run_dir / "samples"
    metrics = run_dir / "metrics.csv"
    step, wall0 = 0, 0.0
    last = latest_checkpoint(run_dir) if resume else None
    if last is not None:
        ckpt = _read_checkpoint(last)
        _check_arch(ckpt["config"], config, last)
        _load_weights(model, ckpt["model"], f"checkpoint {last}")
        _load_weights(ema, ckpt["ema"], f"checkpoint {last} (EMA)")
        optimizer.load_state_dict(ckpt["optimizer"])
        if "scaler" in ckpt and amp == "fp16":
            scaler.load_state_dict(ckpt["scaler"])
        rng = ckpt["rng"]
        r = rank if len(rng["cpu"]) == world else 0  # another world size: rank 0's states
        torch.set_rng_state(rng["cpu"][r])
        if device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"][r], device)
        elif device.type == "mps" and "mps" in rng:
            torch.mps.set_rng_state(rng["mps"][r])
        data_gen.set_state(rng["data"])
        noise_gen.set_state(rng["noise"])
        step, wall0 = int(ckpt["step"]), float(ckpt.get("wall_time", 0.0))
    if main:
        for d in (ckpt_dir, sample_dir):
            d.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        _reset_metrics(metrics, step)

    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if config.compile:
        net = maybe_compile(net)  # eager, with a one-line notice, where compilation fails
    autocast = amp_context(amp, device)

    def save_checkpoint() -> Path:
        rng = {"data": data_gen.get_state(), "noise": noise_gen.get_state()}
        rng.update(_gather_rng(device, world))  # a collective: every rank calls it
        if not main:
            return ckpt_dir / f"ckpt_{step:07d}.pt"
        state = {"model": model.state_dict(), "ema": ema.state_dict(),
                 "optimizer": optimizer.state_dict(), "step": step, "config": config.to_dict(),
                 "rng": rng, "wall_time": wall, "loss": loss_value}  # fmt: skip
        if amp == "fp16":
            state["scaler"] = scaler.state_dict()
        path = ckpt_dir / f"ckpt_{step:07d}.pt"
        _atomic_save(state, path)
        old = sorted(ckpt_dir.glob("ckpt_*.pt"), key=checkpoint_step)
        for p in old[: max(0, len(old) - config.keep_last)]:
            p.unlink()
        return path

    def save_samples() -> Path:
        gen = torch.Generator(device=device).manual_seed(config.seed)  # same x_T every time
        c = ema.config
        shape = (config.sample_count, c.in_channels, c.image_size, c.image_size)
        steps = min(config.sample_steps, config.timesteps)
        x = diffusion.ddim_sample(ema, shape, steps=steps, generator=gen, progress=False)
        return _save_grid(x, sample_dir / f"step_{step:07d}.png", c.image_size)

    # --- Algorithm 1: repeat { x0 ~ q(x0); t ~ U; eps ~ N(0, I); step on |eps - eps_theta|^2 }
    local = config.batch_size // world
    part = slice(rank * local, (rank + 1) * local)
    n_data, shape = len(ds), tuple(ds.data.shape[1:])
    result = TrainResult(run_dir, step, math.nan, last, metrics, [])
    loss_sum, n_sum, loss_value, grad_norm = 0.0, 0, math.nan, math.nan
    start, start_step, wall = time.perf_counter(), step, wall0
    bar = tqdm(total=config.steps, initial=step, desc="train", disable=not (progress and main))
    model.train()
    with _StopFlag() as flag:
        while step < config.steps:
            # the global batch, identical on every rank; this rank keeps slice `part`
            idx = torch.randperm(n_data, generator=data_gen)[: config.batch_size]
            x0 = ds.data[idx]
            if ds.flip:
                x0 = random_flip(x0, generator=data_gen)
            t = torch.randint(0, config.timesteps, (config.batch_size,), generator=noise_gen,
                              device=device)  # fmt: skip
            noise = torch.randn((config.batch_size, *shape), generator=noise_gen, device=device)
            idx, x0, t, noise = idx[part], x0[part].to(device), t[part], noise[part]

            for group in optimizer.param_groups:
                group["lr"] = lr_at(step + 1, config.lr, config.warmup_steps)
            with autocast:
                loss = diffusion.training_losses(net, x0, t=t, noise=noise).mean()
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            max_norm = config.grad_clip if config.grad_clip > 0 else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            scaler.step(optimizer)
            scaler.update()
            ema_update(ema, model, config.ema_decay)
            step += 1
            bar.update(1)

            loss_sum, n_sum = loss_sum + loss.detach().float(), n_sum + 1
            if on_step is not None:
                on_step(step, {"loss": loss.item(), "indices": idx})
            stop = flag.stop
            if world > 1:  # every rank must stop at the same step
                s = torch.tensor([float(stop)], device=device)
                dist.all_reduce(s, op=dist.ReduceOp.MAX)
                stop = bool(s.item())
            done = step == config.steps or stop
            if _every(step, config.log_every) or done:
                mean = torch.as_tensor(loss_sum / n_sum, device=device)
                if world > 1:  # SUM, not AVG: gloo has no AVG
                    dist.all_reduce(mean)
                loss_value, loss_sum, n_sum = float(mean) / world, 0.0, 0
                wall = wall0 + time.perf_counter() - start
                rate = (step - start_step) / max(time.perf_counter() - start, 1e-9)
                if main:
                    row = [step, loss_value, optimizer.param_groups[0]["lr"], float(grad_norm),
                           rate, wall]  # fmt: skip
                    with metrics.open("a", newline="") as f:
                        csv.writer(f).writerow([f"{v:.6g}" if isinstance(v, float) else v
                                                for v in row])  # fmt: skip
                    bar.set_postfix(loss=f"{loss_value:.4f}")
            if config.sample_every > 0 and main and (step % config.sample_every == 0 or done):
                result.samples.append(save_samples())
            if _every(step, config.ckpt_every) or done:
                wall = wall0 + time.perf_counter() - start
                result.checkpoint = save_checkpoint()
            if stop:
                result.interrupted = True
                break
    bar.close()
    result.step, result.loss = step, loss_value
    if own_group:
        dist.destroy_process_group()
    return result


METRICS_HEADER = ["step", "loss", "lr", "grad_norm", "steps_per_s", "wall_time"]


def _reset_metrics(path: Path, step: int) -> None:
    """Start metrics.csv, or keep only its rows up to ``step`` (those after the checkpoint we
    resume from will be logged again)."""
    rows = []
    if step > 0 and path.exists():
        with path.open(newline="") as f:
            rows = [r for r in list(csv.reader(f))[1:] if r and int(r[0]) <= step]
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([METRICS_HEADER, *rows])


def _save_grid(x: torch.Tensor, path: Path, image_size: int) -> Path:
    from .viz import save_image_grid  # matplotlib is imported by viz: only when sampling

    nrow = max(1, int(math.sqrt(len(x))))
    return save_image_grid(x.float().cpu(), path, nrow=nrow, scale=max(1, 32 // image_size))
