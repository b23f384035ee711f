"""The `ddpm` command line: `ddpm train | sample | interpolate | evaluate` (or `python -m ddpm`).

``ddpm train`` alone trains the quick ``digits`` preset (``--device auto``: on CUDA, else MPS, else
the CPU); the other commands read a checkpoint that training wrote. Bad arguments end with a
one-line message and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main"]


def _checked(convert, ok, rule: str):
    """An argparse type: ``convert`` the text, then require ``ok(value)``; else say ``rule``."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{rule}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{rule}, got {value}")
        return value

    return parse


_positive_int = _checked(int, lambda v: v >= 1, "expected a positive integer")
_nonnegative_float = _checked(float, lambda v: v >= 0, "expected a number >= 0")
_beta = _checked(float, lambda v: 0.0 < v < 1.0, "betas must lie in (0, 1)")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddpm",
        description="Denoising Diffusion Probabilistic Models (Ho, Jain & Abbeel 2020): train a "
        "model, sample from it, interpolate between images, evaluate it.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("train", help="train a model (default: the quick digits preset)")
    p.add_argument("--preset", default="digits", help="training preset: digits, mnist, cifar10")
    p.add_argument("--dataset", help="dataset (digits, mnist, fashion-mnist, cifar10, folder:PATH)")
    p.add_argument("--name", help="run name: the run folder is data/runs/NAME (default: the "
                   "preset's name, or the dataset's when --dataset is given)")  # fmt: skip
    p.add_argument("--image-size", type=_positive_int, help="resize images to this size")
    p.add_argument("--steps", type=_positive_int, help="total training steps")
    p.add_argument("--batch-size", type=_positive_int, help="global batch size")
    p.add_argument("--lr", type=_nonnegative_float, help="peak learning rate (Adam)")
    p.add_argument("--timesteps", "-T", type=_positive_int, help="diffusion steps T")
    p.add_argument("--schedule", choices=["linear", "cosine"], help="beta schedule")
    p.add_argument("--beta-start", type=_beta, help="linear schedule: beta_1 (for T = 1000)")
    p.add_argument("--beta-end", type=_beta, help="linear schedule: beta_T (for T = 1000)")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--device", help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:1, mps")
    p.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], help="mixed precision")
    p.add_argument("--compile", action="store_true", default=None, help="use torch.compile")
    p.add_argument("--run-dir", type=Path, help="where to write checkpoints, logs and samples")
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")

    p = sub.add_parser("sample", help="draw samples from a checkpoint into a PNG grid")
    _checkpoint_args(p)
    p.add_argument("--num", type=_positive_int, default=64, help="number of samples (64)")
    p.add_argument("--sampler", choices=["ancestral", "ddim"], default="ancestral")
    p.add_argument("--ddim-steps", type=_positive_int, default=50, help="DDIM steps (50)")
    p.add_argument("--eta", type=_nonnegative_float, default=0.0, help="DDIM eta (0)")
    p.add_argument("--no-clip", action="store_true", help="do not clip the predicted x0")
    p.add_argument("--out", type=Path, default=Path("samples.png"), help="PNG grid (samples.png)")
    p.add_argument("--raw", type=Path, help="also save the samples in [-1, 1] (.npz or .pt)")

    p = sub.add_parser("interpolate", help="interpolate between two test images (paper's 4.4)")
    _checkpoint_args(p)
    p.add_argument("--dataset", help="dataset to take the two images from (the model's)")
    p.add_argument("--pair", type=_int_list, default=[0, 1], help="test-set indices (0,1)")
    p.add_argument("--t", type=_int_list, help="diffusion steps, paper numbering (e.g. 100,500)")
    p.add_argument("--lambdas", type=_positive_int, default=9, help="values of lambda (9)")
    p.add_argument("--out", type=Path, default=Path("interpolation.png"), help="PNG figure")
    p.add_argument("--gif", type=Path, help="also write the last row as an animated GIF")

    p = sub.add_parser("evaluate", help="bits/dim and FID of a checkpoint")
    _checkpoint_args(p)
    p.add_argument("--num", type=_positive_int, help="samples for FID (default: test set size)")
    p.add_argument("--ddim-steps", type=_positive_int, default=50, help="DDIM steps (50)")
    p.add_argument("--bpd-images", type=_positive_int, default=32, help="test images for bits/dim")
    p.add_argument("--fid", choices=["auto", "digits", "inception"], default="auto")
    return parser


def _checkpoint_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path, help="a checkpoint file or a run folder")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument("--device", default="auto",
                   help="auto (CUDA, else MPS, else CPU; the default), cpu, cuda, cuda:1, "
                   "mps")  # fmt: skip
    p.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA")


# ---------------------------------------------------------------------- the commands
def cmd_train(args) -> int:
    from .train import preset_config, train

    name = args.name
    if name is None and args.dataset is not None:  # e.g. --preset mnist --dataset fashion-mnist
        folder = args.dataset.removeprefix("folder:")
        name = args.dataset if folder == args.dataset else f"folder-{Path(folder).name}"
    overrides = {
        key: value
        for key, value in {
            "name": name,
            "dataset": args.dataset,
            "image_size": args.image_size,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "timesteps": args.timesteps,
            "schedule": args.schedule,
            "beta_start": args.beta_start,
            "beta_end": args.beta_end,
            "seed": args.seed,
            "device": args.device,
            "amp": args.amp,
            "compile": args.compile,
            "run_dir": str(args.run_dir) if args.run_dir else None,
        }.items()
        if value is not None
    }
    result = train(preset_config(args.preset, **overrides), resume=args.resume)
    state = "interrupted at" if result.interrupted else "finished at"
    print(f"{state} step {result.step}, loss {result.loss:.4f}")
    print(f"run folder: {result.run_dir}")
    if result.checkpoint is not None:
        print(f"checkpoint: {result.checkpoint}")
    if result.samples:
        print(f"samples:    {result.samples[-1]}")
    return 130 if result.interrupted else 0


def _load(args):
    import torch

    from .device import resolve_device
    from .train import load_model

    if not args.checkpoint.exists():
        raise FileNotFoundError(f"no checkpoint or run folder at {args.checkpoint}")
    device = resolve_device(args.device)
    model, diffusion, config = load_model(args.checkpoint, ema=not args.no_ema, device=device)
    model.eval()
    generator = torch.Generator(device=device).manual_seed(args.seed)
    return model, diffusion, config, generator


def _image_shape(model, num: int) -> tuple[int, ...]:
    c = model.config
    return (num, c.in_channels, c.image_size, c.image_size)


def _upscale(image_size: int) -> int:
    """Integer upscaling so that small images (8x8 digits) are visible in a PNG."""
    return max(1, 64 // image_size)


def cmd_sample(args) -> int:
    import numpy as np
    import torch

    from .viz import save_image_grid

    if args.raw is not None and args.raw.suffix not in (".npz", ".pt"):
        raise ValueError(f"--raw must end in .npz or .pt, got {args.raw.name}")
    model, diffusion, _, generator = _load(args)
    shape = _image_shape(model, args.num)
    clip = not args.no_clip
    if args.sampler == "ddim":
        if args.ddim_steps > diffusion.num_timesteps:
            raise ValueError(f"--ddim-steps must be at most T = {diffusion.num_timesteps}")
        x = diffusion.ddim_sample(
            model,
            shape,
            steps=args.ddim_steps,
            eta=args.eta,
            generator=generator,
            clip_denoised=clip,
        )
    else:
        x = diffusion.sample(model, shape, generator=generator, clip_denoised=clip)
    x = x.cpu()
    save_image_grid(x, args.out, scale=_upscale(shape[-1]))
    print(f"{args.num} samples -> {args.out}")
    if args.raw is not None:
        args.raw.parent.mkdir(parents=True, exist_ok=True)
        if args.raw.suffix == ".npz":
            np.savez_compressed(args.raw, samples=x.numpy())
        else:
            torch.save(x, args.raw)
        print(f"raw samples in [-1, 1], shape {tuple(x.shape)} -> {args.raw}")
    return 0


def cmd_interpolate(args) -> int:
    import torch

    from .data import load_dataset
    from .viz import interpolation_figure, save_figure, save_gif

    model, diffusion, config, generator = _load(args)
    T = diffusion.num_timesteps
    steps = args.t or sorted({max(1, T // 10), T // 4, T // 2})
    bad = [t for t in steps if not 1 <= t <= T]
    if bad:
        raise ValueError(f"--t takes the paper's steps 1..{T}, got {bad}")
    if len(args.pair) != 2:
        raise ValueError(f"--pair takes two test-set indices, got {args.pair}")
    if args.lambdas < 2:
        raise ValueError("--lambdas must be at least 2 (lambda = 0 and 1)")
    data = load_dataset(args.dataset or config.dataset, "test", image_size=config.image_size)
    if max(args.pair) >= len(data) or min(args.pair) < 0:
        raise ValueError(f"--pair indices must lie in 0..{len(data) - 1}, got {args.pair}")
    device = next(model.parameters()).device
    x1, x2 = (data.data[i : i + 1].to(device) for i in args.pair)
    lambdas = torch.linspace(0, 1, args.lambdas)
    rows = []
    for t in steps:  # the paper's step t is code index t - 1 (pitfall 12)
        rows.append(
            diffusion.interpolate(
                model, x1, x2, lambdas.to(device), t - 1, generator=generator
            ).cpu()
        )
    fig = interpolation_figure(
        torch.stack(rows),
        lambdas.tolist(),
        row_labels=[f"t = {t}" for t in steps],
        sources=(x1[0].cpu(), x2[0].cpu()),
    )
    save_figure(fig, args.out)
    print(f"interpolations at t = {steps} (paper's steps) -> {args.out}")
    if args.gif is not None:
        save_gif(rows[-1], args.gif, scale=_upscale(x1.shape[-1]))
        print(f"t = {steps[-1]}, lambda 0..1 as a GIF -> {args.gif}")
    return 0


def cmd_evaluate(args) -> int:
    import torch

    from .data import load_dataset
    from .metrics import (
        bits_per_dim,
        digits_fid,
        digits_fid_floor,
        inception_fid,
        nearest_neighbour_distance,
    )

    model, diffusion, config, generator = _load(args)
    test = load_dataset(config.dataset, "test", image_size=config.image_size)
    train_set = load_dataset(config.dataset, "train", image_size=config.image_size)
    bpd = bits_per_dim(diffusion, model, test.data, max_images=args.bpd_images)
    print(
        f"bits/dim (bound, first {bpd['num_images']} test images): "
        f"{bpd['bpd']:.3f} +- {bpd['bpd_stderr']:.3f} (L_T {bpd['prior_bpd']:.2e})"
    )
    num = args.num or len(test)
    if args.ddim_steps > diffusion.num_timesteps:
        raise ValueError(f"--ddim-steps must be at most T = {diffusion.num_timesteps}")
    samples = diffusion.ddim_sample(
        model, _image_shape(model, num), steps=args.ddim_steps, generator=generator
    ).cpu()
    kind = (
        args.fid
        if args.fid != "auto"
        else ("digits" if config.dataset == "digits" else "inception")
    )
    reference = test.data[:num]
    if kind == "digits":
        if config.dataset != "digits" or samples.shape[-1] != 8:
            raise ValueError("--fid digits needs a model of the 8x8 digits; use --fid inception")
        fid = digits_fid(samples, reference)
        floors = torch.tensor([
            digits_fid_floor(len(reference), reference=reference,
                             generator=torch.Generator().manual_seed(seed))
            for seed in range(5)
        ])  # fmt: skip
        print(
            f"digits FID (DDIM {args.ddim_steps} steps, N = {num}): {fid:.2f}; real train vs "
            f"test at the same N (5 draws): {floors.mean():.2f} +- {floors.std():.2f}"
        )
    else:
        fid = inception_fid(reference, samples)
        print(f"Inception FID (DDIM {args.ddim_steps} steps, N = {num}): {fid:.2f}")
    nn_samples = nearest_neighbour_distance(samples, train_set.data).mean().item()
    nn_test = nearest_neighbour_distance(reference, train_set.data).mean().item()
    print(
        f"nearest-neighbour distance to the train set: samples {nn_samples:.3f}, "
        f"test images {nn_test:.3f} (much smaller for samples would mean memorisation)"
    )
    return 0


def _user_errors() -> tuple[type[BaseException], ...]:
    from .data import DatasetUnavailableError
    from .metrics import MetricUnavailableError

    return (ValueError, FileNotFoundError, DatasetUnavailableError, MetricUnavailableError)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ddpm`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    command = {
        "train": cmd_train,
        "sample": cmd_sample,
        "interpolate": cmd_interpolate,
        "evaluate": cmd_evaluate,
    }[args.command]
    try:
        return command(args)
    except KeyboardInterrupt:
        print(f"ddpm {args.command}: interrupted", file=sys.stderr)
        return 130
    except _user_errors() as err:
        message = " ".join(str(err).split())
        print(f"ddpm {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
