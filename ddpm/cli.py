"""The `ddpm` command line: `ddpm train | sample | interpolate | evaluate | download` (or
`python -m ddpm`).

``ddpm train`` alone trains the quick ``digits`` preset (``--device auto``: on CUDA, else MPS, else
the CPU); ``sample``, ``interpolate`` and ``evaluate`` read a checkpoint that training wrote, or,
with ``--pretrained NAME``, one of the paper's released models that ``ddpm download NAME`` put in
the cache (they never download it themselves). Bad arguments end with a one-line message and a
non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from types import SimpleNamespace

__all__ = ["main"]


def _checked(convert, ok, rule: str):
    """An argparse type: ``convert`` the text, then require ``ok(value)``; else say ``rule``."""

    def parse(text: str):
        try:
            value = convert(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"{rule}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{rule}, got {value}")
        return value

    return parse


_positive_int = _checked(int, lambda v: v >= 1, "expected a positive integer")
_finite_nonnegative = _checked(
    float, lambda v: math.isfinite(v) and v >= 0, "expected a finite number >= 0"
)
_seed = _checked(int, lambda v: 0 <= v <= 2**63 - 1, f"expected a seed in 0..{2**63 - 1}")


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


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr (no usage block), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _json_dict(text: str) -> dict:
    import json

    try:
        value = json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


# Flag names and choices that the TrainConfig fields do not say themselves.
_TRAIN_ALIASES = {"timesteps": ["-T"]}
_TRAIN_CHOICES = {
    "schedule": ["linear", "cosine"],
    "amp": ["auto", "bf16", "fp16", "off"],
    "model_mean_type": ["eps", "x0", "mean"],
    "model_var_type": ["fixed_large", "fixed_small"],
}


def _train_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (``batch_size`` -> ``--batch-size``), with the field's
    help text and check; default None: the preset's value."""
    import typing
    from dataclasses import fields

    from .train import TrainConfig
    from .unet import PRESETS

    choices = {**_TRAIN_CHOICES, "model": sorted(PRESETS)}
    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        base = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
        kw: dict = {"help": f.metadata["help"], "default": None, "dest": f.name}
        if base is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif base is dict:
            kw["type"] = _json_dict
        else:
            check = f.metadata.get("check")
            ok, rule = check if check else ((lambda v: True), "")
            if base is int:
                kw["type"] = _checked(int, ok, rule or "expected an integer")
            elif base is float:
                kw["type"] = _checked(float, ok, rule or "expected a number")
            else:
                kw["type"] = _checked(str, ok, rule) if check else str
        if f.name in choices:
            kw["choices"] = choices[f.name]
        p.add_argument(flag, *_TRAIN_ALIASES.get(f.name, []), **kw)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ddpm",
        description="Denoising Diffusion Probabilistic Models (Ho, Jain & Abbeel 2020): train a "
        "model, sample from it, interpolate between images, evaluate it.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=_Parser)  # fmt: skip

    p = sub.add_parser("train", help="train a model (default: the quick digits preset, on CPU)",
                       description="Train a model. Every flag but --preset, --resume and "
                       "--overwrite overrides one field of the preset's TrainConfig.")  # fmt: skip
    p.add_argument("--preset", default="digits", help="training preset: digits, mnist, "
                   "cifar10, or digits-cond (class-conditional digits with label dropout, for "
                   "classifier-free guidance)")  # fmt: skip
    _train_flags(p)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in the run folder from its last checkpoint",
    )
    mode.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the run already in the run folder, then train afresh",
    )

    p = sub.add_parser("sample", help="draw samples from a checkpoint into a PNG grid")
    _model_args(p)
    p.add_argument("--num", type=_positive_int, help="number of samples (64; with --class, 8 "
                   "per label)")  # fmt: skip
    p.add_argument("--class", dest="classes", type=_int_list, metavar="LABELS",
                   help="a class-conditional model (e.g. --preset digits-cond): the labels to "
                   "sample, e.g. 3 or 0,1,2 (one grid row per label, --num split evenly); "
                   "default: unconditional samples")  # fmt: skip
    p.add_argument("--guidance", type=_finite_nonnegative, default=0.0, metavar="W",
                   help="classifier-free guidance scale w, with --class (0: the conditional "
                   "model; larger: truer to the class, less diverse)")  # fmt: skip
    p.add_argument("--sampler", choices=["ancestral", "ddim"], default="ancestral")
    p.add_argument("--ddim-steps", type=_positive_int, default=50, help="DDIM steps (50)")
    p.add_argument("--eta", type=_finite_nonnegative, default=0.0, help="DDIM eta (0)")
    p.add_argument("--no-clip", action="store_true", help="do not clip the predicted x0")
    p.add_argument("--out", type=Path, default=Path("samples.png"), help="PNG grid (samples.png)")
    p.add_argument("--raw", type=Path, help="also save the samples in [-1, 1] (.npz or .pt)")

    p = sub.add_parser("interpolate", help="interpolate between two test images (paper's 4.4)")
    _model_args(p)
    _dataset_arg(p, "to take the two test images from")
    p.add_argument("--pair", type=_int_list, default=[0, 1], help="test-set indices (0,1)")
    p.add_argument("--t", type=_int_list, help="diffusion steps, paper numbering (e.g. 100,500)")
    p.add_argument("--lambdas", type=_positive_int, default=9, help="values of lambda (9)")
    p.add_argument("--out", type=Path, default=Path("interpolation.png"), help="PNG figure")
    p.add_argument("--gif", type=Path, help="also write the last row as an animated GIF")

    p = sub.add_parser("evaluate", help="bits/dim and FID of a checkpoint (the paper's Table 1)")
    _model_args(p)
    _dataset_arg(p, "whose test split gives bits/dim and the FID reference")
    p.add_argument("--num", type=_positive_int, help="samples for FID (default: test set size)")
    p.add_argument("--ddim-steps", type=_positive_int, default=50, help="DDIM steps (50)")
    p.add_argument("--bpd-images", type=_positive_int, default=32, help="test images for bits/dim")
    p.add_argument("--bpd-estimate", type=_positive_int, metavar="K",
                   help="estimate the bound from K importance-sampled steps per image "
                   "(unbiased, with its standard error; 1 + K model calls per image, not "
                   "T)")  # fmt: skip
    p.add_argument("--fid", choices=["auto", "digits", "inception", "none"], default="auto",
                   help="auto: digits FID for a digits model, else Inception; none: bits/dim "
                   "only")  # fmt: skip
    p.add_argument("--fid-reference", choices=["train", "test"],
                   help="the real images FID compares with: train (the paper's; the default for "
                   "Inception FID) or test (the default for digits FID, whose real-data floor "
                   "draws train images)")  # fmt: skip

    p = sub.add_parser("download", help="download one of the paper's released models",
                       description="Download one of the paper's released models from the Hugging "
                       "Face hub into the cache (resumable, every file checked against the hub's "
                       "hash); --pretrained NAME then uses it.")  # fmt: skip
    p.add_argument("name", metavar="NAME", help=f"the model: {_pretrained_names()}")
    p.add_argument("--force", action="store_true", help="download again even if cached")
    return parser


def _pretrained_names() -> str:
    from .pretrained import REGISTRY

    return ", ".join(REGISTRY)


def _model_args(p: argparse.ArgumentParser) -> None:
    """The model a command reads (a checkpoint, or --pretrained NAME), its seed and device."""
    p.add_argument("checkpoint", type=Path, nargs="?",
                   help="a checkpoint file or a run folder (or give --pretrained)")  # fmt: skip
    p.add_argument("--pretrained", metavar="NAME",
                   help="one of the paper's released models, from the cache (run `ddpm download "
                   f"NAME` first): {_pretrained_names()}")  # fmt: skip
    p.add_argument("--seed", type=_seed, default=0, help="random seed (0)")
    p.add_argument("--device", default="auto",
                   help="auto (CUDA, else MPS, else CPU; the default), cpu, cuda, cuda:1, "
                   "mps")  # fmt: skip
    p.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA")


def _dataset_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--dataset", help=f"the dataset {what} (default: the model's; e.g. "
                   "folder:PATH)")  # fmt: skip


# ---------------------------------------------------------------------- the commands
def cmd_train(args) -> int:
    from dataclasses import fields

    from .train import TrainConfig, preset_config, train

    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "name" not in overrides and args.dataset is not None:  # e.g. --dataset fashion-mnist
        folder = args.dataset.removeprefix("folder:")
        name = args.dataset if folder == args.dataset else f"folder-{Path(folder).name}"
        overrides["name"] = name
    config = preset_config(args.preset, **overrides).validate()
    _check_linear_schedule(config)
    _check_device(config.device)
    progress = sys.stderr.isatty()  # a progress bar only where someone watches it
    result = train(config, resume=args.resume, overwrite=args.overwrite, progress=progress)
    state = "interrupted at" if result.interrupted else "finished at"
    print(f"{state} step {result.step}, loss {result.loss:.4f}")
    print(f"run folder: {result.run_dir}")
    if result.checkpoint is not None:
        print(f"checkpoint: {result.checkpoint}")
    if result.samples:
        print(f"samples:    {result.samples[-1]}")
    return 130 if result.interrupted else 0


def _check_linear_schedule(config) -> None:
    """The schedule's own error names its Python arguments; say it in flags."""
    if config.schedule != "linear":
        return
    scale = 1000 / config.timesteps
    start, end = config.beta_start * scale, config.beta_end * scale
    if not 0 < start <= end < 1:
        raise ValueError(
            f"the linear schedule scales --beta-start/--beta-end by 1000/T = {scale:g}, giving "
            f"{start:g}..{end:g} outside (0, 1); use a larger --timesteps (-T), a smaller "
            f"--beta-end, or --schedule cosine"
        )


def _load(args):
    """``(model, diffusion, source, generator)`` from the checkpoint or the ``--pretrained`` model.

    ``source`` says what the model was trained on: ``dataset`` (a ``load_dataset`` name, or None
    when ddpm has no loader for it), ``image_size``, ``label``, and ``clip`` (whether sampling
    clips the predicted x0 by default).
    """
    import torch

    from .train import load_model

    if (args.checkpoint is None) == (args.pretrained is None):
        both = args.checkpoint is not None
        raise ValueError("give a checkpoint or --pretrained NAME, not both" if both else
                         "give a checkpoint file or run folder, or --pretrained NAME")  # fmt: skip
    if args.pretrained is not None:
        device = _check_device(args.device)
        model, diffusion, source = _load_pretrained(args.pretrained, args.no_ema, device)
    else:
        if not args.checkpoint.exists():
            raise FileNotFoundError(f"no checkpoint or run folder at {args.checkpoint}")
        device = _check_device(args.device)
        model, diffusion, config = load_model(args.checkpoint, ema=not args.no_ema, device=device)
        source = SimpleNamespace(dataset=config.dataset, image_size=config.image_size,
                                 label=f"the {config.dataset} data", clip=True)  # fmt: skip
    model.eval()
    generator = torch.Generator(device=device).manual_seed(args.seed)
    return model, diffusion, source, generator


# the released models' datasets that ddpm.data loads (the others need --dataset folder:PATH)
_PRETRAINED_DATASETS = {"CIFAR-10": "cifar10"}


def _load_pretrained(name: str, no_ema: bool, device):
    """A released model from the cache only: a missing one is an error naming the command."""
    from .pretrained import load_pretrained

    if no_ema:
        raise ValueError("--no-ema chooses between a checkpoint's weights; a released model has "
                         "one set (the ema-* names are the EMA releases)")  # fmt: skip
    model, diffusion, info = load_pretrained(name, device=device, download=False)
    if info["standin"]:
        print(f"ddpm: note: the cached {name} is a STAND-IN with random weights (a test cache), "
              "not the paper's model", file=sys.stderr)  # fmt: skip
    source = SimpleNamespace(dataset=_PRETRAINED_DATASETS.get(info["dataset"]),
                             image_size=info["image_size"], label=info["dataset"],
                             clip=info["clip_sample"])  # fmt: skip
    return model, diffusion, source


def _check_images(images, model, dataset: str) -> None:
    """A dataset whose images the model cannot take is a one-line error, not a shape error."""
    want = _image_shape(model, 1)[1:]
    if tuple(images.shape[1:]) != want:
        raise ValueError(f"the {dataset} images are {tuple(images.shape[1:])}, the model takes "
                         f"{want} (C, H, W); choose another --dataset")  # fmt: skip


def _dataset_name(args, source) -> str:
    name = args.dataset or source.dataset
    if name is None:
        raise ValueError(f"ddpm has no loader for {source.label}: give its images with "
                         "--dataset folder:PATH")  # fmt: skip
    return name


def _write(path, save) -> None:
    """Call ``save()``, which writes ``path``; an OSError becomes one line naming the file."""
    from .checkpoint import os_error_message

    try:
        save()
    except OSError as err:
        raise ValueError(os_error_message(err, f"write {path}")) from None


def _check_device(name: str):
    """``resolve_device``, its one-line error naming the ``--device`` option."""
    from .device import resolve_device

    try:
        return resolve_device(name)
    except ValueError as err:
        raise ValueError(f"--device: {err}") from None


def _check_sampling_memory(model, num: int, option: str) -> None:
    from .memory import check_fits, sampling_bytes

    device = next(model.parameters()).device
    need = sampling_bytes(model.config, num)
    check_fits(need, device, f"{option} {num}", f"use a smaller {option}")


def _image_shape(model, num: int) -> tuple[int, ...]:
    c = model.config
    return (num, c.in_channels, c.image_size, c.image_size)


def _upscale(image_size: int) -> int:
    """Integer upscaling so that small images (8x8 digits) are visible in a PNG."""
    return max(1, 64 // image_size)


def cmd_sample(args) -> int:
    import numpy as np
    import torch

    from .checkpoint import atomic_write, check_output_path
    from .viz import save_image_grid

    if args.raw is not None and args.raw.suffix not in (".npz", ".pt"):
        raise ValueError(f"--raw must end in .npz or .pt, got {args.raw.name}")
    check_output_path(args.out, "--out")  # before the work, not after it
    if args.raw is not None:
        check_output_path(args.raw, "--raw")
    model, diffusion, source, generator = _load(args)
    if args.sampler == "ddim" and args.ddim_steps > diffusion.num_timesteps:
        raise ValueError(f"--ddim-steps must be at most T = {diffusion.num_timesteps}")
    net, per_row = _class_model(args, model)
    _check_sampling_memory(model, args.num * (2 if args.guidance else 1), "--num")
    shape = _image_shape(model, args.num)
    clip = source.clip and not args.no_clip
    if args.sampler == "ddim":
        x = diffusion.ddim_sample(
            net,
            shape,
            steps=args.ddim_steps,
            eta=args.eta,
            generator=generator,
            clip_denoised=clip,
            progress=sys.stderr.isatty(),
        )
    else:
        x = diffusion.sample(
            net, shape, generator=generator, clip_denoised=clip, progress=sys.stderr.isatty()
        )
    x = x.cpu()
    if args.raw is not None:  # the raw samples first: they cost the sampling, the PNG does not
        if args.raw.suffix == ".npz":
            npz = lambda f: np.savez_compressed(f, samples=x.numpy())  # noqa: E731
            _write(args.raw, lambda: atomic_write(args.raw, npz))
        else:
            _write(args.raw, lambda: atomic_write(args.raw, lambda f: torch.save(x, f)))
        print(f"raw samples in [-1, 1], shape {tuple(x.shape)} -> {args.raw}")
    _write(args.out, lambda: save_image_grid(x, args.out, nrow=per_row, scale=_upscale(shape[-1])))
    what = "samples"
    if args.classes is not None:
        what += f" of classes {','.join(map(str, args.classes))} (guidance w = {args.guidance:g})"
    print(f"{args.num} {what} -> {args.out}")
    return 0


def _class_model(args, model):
    """``(model, images per grid row)``: the model itself (unconditional samples), or with
    ``--class`` the classifier-free guided model (ddpm.guidance) of those labels, each label
    repeated over one row. Sets ``args.num`` when it was not given."""
    import torch

    from .guidance import guided

    if args.classes is None:
        if args.guidance:
            raise ValueError("--guidance needs --class: the labels to guide the samples toward")
        args.num = args.num or 64
        return model, None
    k = getattr(getattr(model, "config", None), "num_classes", 0)
    if not k:
        raise ValueError("--class needs a class-conditional model (trained with "
                         "--conditional, e.g. ddpm train --preset digits-cond); this one has "
                         "no labels")  # fmt: skip
    bad = [c for c in args.classes if not 0 <= c < k]
    if bad:
        raise ValueError(f"--class takes this model's labels 0..{k - 1}, got {bad}")
    per_row = (args.num or 8 * len(args.classes)) // len(args.classes)
    if args.num is not None and args.num % len(args.classes):
        raise ValueError(f"--num {args.num} is not a multiple of the {len(args.classes)} "
                         f"--class labels (one grid row per label)")  # fmt: skip
    args.num = per_row * len(args.classes)
    device = next(model.parameters()).device
    y = torch.tensor(args.classes, device=device).repeat_interleave(per_row)
    return guided(model, y, args.guidance), per_row


def cmd_interpolate(args) -> int:
    import torch

    from .checkpoint import check_output_path
    from .data import load_dataset
    from .viz import interpolation_figure, save_figure, save_gif

    check_output_path(args.out, "--out")
    if args.gif is not None:
        check_output_path(args.gif, "--gif")
    model, diffusion, source, generator = _load(args)
    T = diffusion.num_timesteps
    steps = args.t or sorted({max(1, T // 10), T // 4, T // 2})
    bad = [t for t in steps if not 1 <= t <= T]
    if bad:
        raise ValueError(f"--t takes the paper's steps 1..{T}, got {bad}")
    if len(args.pair) != 2:
        raise ValueError(f"--pair takes two test-set indices, got {args.pair}")
    if args.lambdas < 2:
        raise ValueError("--lambdas must be at least 2 (lambda = 0 and 1)")
    dataset = _dataset_name(args, source)
    data = load_dataset(dataset, "test", image_size=source.image_size)
    _check_images(data.data, model, dataset)
    if max(args.pair) >= len(data) or min(args.pair) < 0:
        raise ValueError(f"--pair indices must lie in 0..{len(data) - 1}, got {args.pair}")
    device = next(model.parameters()).device
    x1, x2 = (data.data[i : i + 1].to(device) for i in args.pair)
    lambdas = torch.linspace(0, 1, args.lambdas)
    rows = []
    for t in steps:  # the paper's step t is code index t - 1 (zero-based)
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
    _write(args.out, lambda: save_figure(fig, args.out))
    print(f"interpolations at t = {steps} (paper's steps) -> {args.out}")
    if args.gif is not None:
        _write(args.gif, lambda: save_gif(rows[-1], args.gif, scale=_upscale(x1.shape[-1])))
        print(f"t = {steps[-1]}, lambda 0..1 as a GIF -> {args.gif}")
    return 0


def cmd_evaluate(args) -> int:
    from .data import load_dataset

    model, diffusion, source, generator = _load(args)
    T = diffusion.num_timesteps
    if args.fid != "none":
        if args.num is not None:
            _check_sampling_memory(model, args.num, "--num")
        if args.ddim_steps > T:
            raise ValueError(f"--ddim-steps must be at most T = {T}")
    dataset = _dataset_name(args, source)
    kind = args.fid if args.fid != "auto" else ("digits" if dataset == "digits" else "inception")
    split = args.fid_reference or ("test" if kind == "digits" else "train")
    if kind == "digits" and split == "train":
        raise ValueError("--fid digits compares with the test split (its real-data floor draws "
                         "train images); drop --fid-reference train")  # fmt: skip
    test = load_dataset(dataset, "test", image_size=source.image_size)
    _check_images(test.data, model, dataset)
    _report_bits_per_dim(args, diffusion, model, test, generator)
    if args.fid == "none":
        return 0
    train_set = load_dataset(dataset, "train", image_size=source.image_size, flip=False)
    num = args.num or len(test)
    samples = diffusion.ddim_sample(
        model, _image_shape(model, num), steps=args.ddim_steps, generator=generator,
        progress=sys.stderr.isatty(),
    ).cpu()  # fmt: skip
    reference = (train_set if split == "train" else test).data[:num]
    if kind == "digits":
        _report_digits_fid(args, source, samples, reference)
    else:
        from .metrics import inception_fid

        fid = inception_fid(reference, samples)
        print(f"Inception FID (DDIM {args.ddim_steps} steps, N = {num}, against {len(reference)} "
              f"{split} images): {fid:.2f}")  # fmt: skip
    _report_nearest_neighbours(samples, reference, train_set.data)
    return 0


def _report_bits_per_dim(args, diffusion, model, test, generator) -> None:
    """The bound of Table 1's "NLL Test": the full sum over T steps per image, or the
    importance-sampled estimate of it (--bpd-estimate K)."""
    from .metrics import bits_per_dim, bits_per_dim_estimate

    progress = sys.stderr.isatty()
    if args.bpd_estimate is None:
        bpd = bits_per_dim(diffusion, model, test.data, max_images=args.bpd_images,
                           progress=progress)  # fmt: skip
        how = "bound"
    else:
        bpd = bits_per_dim_estimate(
            diffusion, model, test.data, steps_per_image=args.bpd_estimate,
            max_images=args.bpd_images, pilot_images=min(16, args.bpd_images),
            generator=generator, progress=progress,
        )  # fmt: skip
        how = f"bound estimated from {args.bpd_estimate} sampled steps per image"
    print(
        f"bits/dim ({how}, first {bpd['num_images']} test images): "
        f"{bpd['bpd']:.3f} +- {bpd['bpd_stderr']:.3f} (L_T {bpd['prior_bpd']:.2e})"
    )


def _report_digits_fid(args, source, samples, reference) -> None:
    import torch

    from .metrics import digits_fid, digits_fid_floor

    if source.dataset != "digits" or samples.shape[-1] != 8:
        raise ValueError("--fid digits needs a model of the 8x8 digits; use --fid inception")
    fid = digits_fid(samples, reference)
    floors = torch.tensor([
        digits_fid_floor(len(reference), reference=reference,
                         generator=torch.Generator().manual_seed(seed))
        for seed in range(5)
    ])  # fmt: skip
    print(
        f"digits FID (DDIM {args.ddim_steps} steps, N = {len(samples)}): {fid:.2f}; real train "
        f"vs test at the same N (5 draws): {floors.mean():.2f} +- {floors.std():.2f}"
    )


def _report_nearest_neighbours(samples, reference, train_images) -> None:
    from .metrics import nearest_neighbour_distance

    nn_samples = nearest_neighbour_distance(samples, train_images).mean().item()
    nn_real = nearest_neighbour_distance(reference, train_images).mean().item()
    print(
        f"nearest-neighbour distance to the train set: samples {nn_samples:.3f}, "
        f"test images {nn_real:.3f} (much smaller for samples would mean memorisation)"
    )


def cmd_download(args) -> int:
    from .pretrained import REGISTRY, download, is_downloaded, is_standin, local_dir

    if args.name not in REGISTRY:
        raise ValueError(f"unknown pretrained model {args.name!r}; known: {_pretrained_names()}")
    entry = REGISTRY[args.name]
    standin = is_standin(args.name)  # a test's random weights: replace them with the real ones
    if is_downloaded(args.name) and not (args.force or standin):
        print(f"{args.name} is already downloaded: {local_dir(args.name)} (--force to fetch "
              "it again)")  # fmt: skip
        return 0
    if standin:
        import shutil

        print(f"ddpm: note: deleting the stand-in (random weights) cached for {args.name}",
              file=sys.stderr)  # fmt: skip
        shutil.rmtree(local_dir(args.name))
    folder = download(args.name, force=args.force)
    print(f"{args.name} ({entry.repo}, {entry.dataset}) -> {folder}")
    print(f"model card and licence: {entry.url}")
    return 0


def _user_errors() -> tuple[type[BaseException], ...]:
    """What ends a command with one line: bad values, files, the OS, the device, memory, a
    released model that is not downloaded or cannot be read."""
    import torch

    from .data import DatasetUnavailableError
    from .metrics import MetricUnavailableError
    from .pretrained import PretrainedError
    from .train import DivergedError

    return (ValueError, OSError, DatasetUnavailableError, MetricUnavailableError, DivergedError,
            PretrainedError, MemoryError, torch.OutOfMemoryError)  # fmt: skip


# Hints that the Python API gives in its own argument names, said in this command line's flags.
_CLI_HINTS = {
    'use split="train"': "interpolate takes its two images from the test split; add images "
    "to the folder",
}


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and not str(err).startswith("cannot") and err.strerror:
        target = f": {err.filename}" if err.filename else ""
        message = f"{err.strerror}{target}"
    elif isinstance(err, (MemoryError,)) or type(err).__name__ == "OutOfMemoryError":
        first = (str(err).splitlines() or [""])[0]
        message = f"out of memory ({first}); ask for less (a smaller --num or --batch-size)"
    else:
        message = str(err)
    for api, cli in _CLI_HINTS.items():
        message = message.replace(api, cli)
    return " ".join(message.split())


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ddpm`` console script; returns the exit status. Every expected
    failure (bad values, files, the OS, the device, memory) is one line on stderr and exit
    status 2; an interrupt is exit status 130."""
    args = build_parser().parse_args(argv)
    command = {
        "train": cmd_train,
        "sample": cmd_sample,
        "interpolate": cmd_interpolate,
        "evaluate": cmd_evaluate,
        "download": cmd_download,
    }[args.command]
    try:
        return command(args)
    except KeyboardInterrupt:
        print(f"ddpm {args.command}: interrupted", file=sys.stderr)
        return 130
    except _user_errors() as err:
        print(f"ddpm {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
