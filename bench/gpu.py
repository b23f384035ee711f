"""The GPU profile of the paper's CIFAR-10 run, in one command: ``bash bench/gpu.sh``.

Sections, each written to the JSON file (``--out``) as soon as it is done:

1. ``device``: the GPU, torch, and the GPU's peak dense bf16 rate from PEAK_TFLOPS.
2. ``flops``: FLOPs of one training step per image (forward + backward, counted with
   ``torch.utils.flop_counter.FlopCounterMode``, attention through its math backend so that it
   is counted) and of one forward.
3. ``train``: steps/s of the cifar10 preset at batch 128 (L_simple via
   ``GaussianDiffusion.training_losses``, backward, clip 1.0, Adam, EMA), in bf16 autocast and in
   fp16 autocast with GradScaler, eager and ``torch.compile``d; peak memory
   (``torch.cuda.max_memory_allocated``); model FLOP utilisation (MFU) = achieved FLOP/s over
   the peak bf16 rate.
4. ``sample``: seconds for 256 images with 1000 ancestral steps and with DDIM-50 (bf16 autocast,
   eager).
5. ``projection``: wall time of the paper's 800k steps at the best steps/s, against the paper's
   TPU v3-8 (21 steps/s, 10.6 h) and the goal (56 steps/s, 4 h).
6. ``mnist200``: 200 real steps of full mode through the public API (``ddpm.train.train`` with
   ``preset_config("mnist")``) on MNIST, or on a synthetic MNIST-format file (the offline 8x8
   digits scaled to 28x28) when MNIST is not in the cache; checks that the loss falls.

``--small`` runs every section at CPU size (a tiny UNet, batch 4, 20 diffusion steps), so that
the script is tested end to end on machines without a GPU (tests/test_bench.py).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import resource
import struct
import sys
import tempfile
import time
from pathlib import Path

import torch

# Peak dense (no sparsity) bf16 tensor-core rate per GPU, TFLOP/s, from the vendors' data
# sheets; first match wins, on the name torch.cuda.get_device_name reports. T4 and V100 have no
# bf16: their fp16 rate is listed. A GPU not listed gets no MFU.
PEAK_TFLOPS = [
    (("H100", "PCIe"), 756.0),
    (("H100", "NVL"), 835.0),
    (("H100",), 989.0),  # SXM5 (reported as "H100 80GB HBM3")
    (("GH200",), 989.0),
    (("H200",), 989.0),
    (("B200",), 2250.0),
    (("A100",), 312.0),
    (("L40S",), 362.0),
    (("L4",), 121.0),
    (("A10",), 125.0),
    (("T4",), 65.0),  # fp16
    (("V100",), 125.0),  # fp16
]
PAPER_STEPS, PAPER_STEPS_PER_S, GOAL_STEPS_PER_S = 800_000, 21.0, 56.0


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu"


def peak_tflops(name: str) -> float | None:
    for keys, value in PEAK_TFLOPS:
        if all(k in name for k in keys):
            return value
    return None


class Report:
    """The results so far, written atomically to ``path`` after every section."""

    def __init__(self, path: Path):
        self.path, self.data = path, {}

    def add(self, section: str, value) -> None:
        self.data[section] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        tmp.replace(self.path)
        print(f"[gpu] {section}: {json.dumps(value, default=str)}", flush=True)


def sizes(small: bool) -> dict:
    if small:
        unet = dict(image_size=8, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                    num_groups=8)  # fmt: skip
        return dict(unet=unet, image=8, batch=4, warmup=1, timed=2, n_sample=4, T=50, ddim=5,
                    mnist_steps=30, mnist_batch=8)  # fmt: skip
    return dict(unet={}, image=32, batch=128, warmup=10, timed=30, n_sample=256, T=1000,
                ddim=50, mnist_steps=200, mnist_batch=128)  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"peak_alloc_bytes": torch.cuda.max_memory_allocated(device)}
    # CPU: the process's RSS high-water mark (all sections so far, not this one alone)
    return {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def count_flops(model, diffusion, x0) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    t = torch.full((x0.shape[0],), 500, device=x0.device)
    fwd = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]), fwd:
        model(x0, t)
    step = FlopCounterMode(display=False)
    with sdpa_kernel([SDPBackend.MATH]), step:
        diffusion.training_losses(model, x0, t=t).mean().backward()
    model.zero_grad(set_to_none=True)
    return {"fwd_flops_per_image": fwd.get_total_flops() / x0.shape[0],
            "train_flops_per_image": step.get_total_flops() / x0.shape[0]}  # fmt: skip


def time_training(args, s, device, precision: str, compiled: bool, flops_per_image, peak):
    """Steps/s of the training step (the body of ddpm.train's loop) at batch s['batch']."""
    from ddpm import GaussianDiffusion, UNet, linear_beta_schedule
    from ddpm.train import ema_update

    torch.manual_seed(0)
    model = UNet.from_preset("cifar10", **s["unet"]).to(device).train()
    ema = UNet.from_preset("cifar10", **s["unet"]).to(device).eval().requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    diffusion = GaussianDiffusion(linear_beta_schedule(1000))
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    net = torch.compile(model) if compiled else model
    B = s["batch"]
    x0 = torch.rand(B, 3, s["image"], s["image"], device=device) * 2 - 1

    def step():
        t = torch.randint(0, 1000, (B,), device=device)
        noise = torch.randn_like(x0)
        with torch.autocast(device.type, dtype=dtype):
            loss = diffusion.training_losses(net, x0, t=t, noise=noise).mean()
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)  # fp16: reads found_inf back (GradScaler's one sync per step)
        scaler.update()
        ema_update(ema, model, 0.9999)
        return loss

    reset_peak(device)
    t0 = time.perf_counter()
    step()
    sync(device)
    first = time.perf_counter() - t0
    for _ in range(s["warmup"] - 1):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(s["timed"]):
        loss = step()
    sync(device)
    per_s = s["timed"] / (time.perf_counter() - t0)
    achieved = per_s * B * flops_per_image
    return {
        "precision": precision + (" + GradScaler" if precision == "fp16" else ""),
        "compiled": compiled,
        "batch": B,
        "steps_per_s": per_s,
        "images_per_s": per_s * B,
        "first_step_s": first,  # includes compilation when compiled
        "achieved_tflops": achieved / 1e12,
        "mfu": achieved / (peak * 1e12) if peak else None,
        "loss_finite": bool(torch.isfinite(loss)),
        **peak_bytes(device),
    }


def time_sampling(s, device) -> dict:
    from ddpm import GaussianDiffusion, UNet, linear_beta_schedule

    torch.manual_seed(0)
    model = UNet.from_preset("cifar10", **s["unet"]).to(device).eval()
    diffusion = GaussianDiffusion(linear_beta_schedule(s["T"]))
    shape = (s["n_sample"], 3, s["image"], s["image"])
    out = {"images": s["n_sample"], "precision": "bf16 autocast", "compiled": False}
    for name, run in (
        (f"ancestral_{s['T']}", lambda: diffusion.sample(model, shape, progress=False)),
        (f"ddim_{s['ddim']}", lambda: diffusion.ddim_sample(model, shape, steps=s["ddim"],
                                                             progress=False)),
    ):  # fmt: skip
        with torch.autocast(device.type, dtype=torch.bfloat16):
            diffusion.ddim_sample(model, shape, steps=2, progress=False)  # warm-up
            sync(device)
            t0 = time.perf_counter()
            x = run()
            sync(device)
        out[f"{name}_s"] = time.perf_counter() - t0
        out[f"{name}_finite"] = bool(torch.isfinite(x).all())
    return out


def write_idx(path: Path, array) -> None:
    """An MNIST idx file: magic (0, 0, 0x08 = uint8, number of dims), big-endian dims, bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    path.write_bytes(header + array.tobytes())


def synthetic_mnist(root: Path) -> None:
    """MNIST-format files under ``root/mnist/MNIST/raw``: scikit-learn's 8x8 digits (offline)
    scaled to 28x28, 1797 training and 100 test images."""
    import numpy as np
    from sklearn.datasets import load_digits

    bunch = load_digits()
    v = torch.from_numpy(bunch.images).float()[:, None] / 16.0
    v = torch.nn.functional.interpolate(v, size=(20, 20), mode="bilinear", align_corners=False)
    v = torch.nn.functional.pad(v, (4, 4, 4, 4))  # MNIST: a 20x20 digit in a 28x28 field
    images = (v[:, 0] * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    labels = bunch.target.astype(np.uint8)
    raw = root / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, sl in (("train", slice(None)), ("t10k", slice(0, 100))):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", np.ascontiguousarray(images[sl]))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.ascontiguousarray(labels[sl]))


def mnist_200(s, device, work: Path) -> dict:
    """Real training steps of full mode through the public API; the loss must fall."""
    from ddpm.data import DatasetUnavailableError, load_dataset
    from ddpm.train import preset_config, train

    try:
        load_dataset("mnist", download=False)
        source, env = "MNIST (cache)", {}
    except DatasetUnavailableError:
        synthetic_mnist(work / "data")
        source, env = (
            "synthetic MNIST-format file (8x8 digits scaled to 28x28)",
            {"DDPM_DATA_DIR": str(work / "data")},
        )
    # The preset's recipe, except 50 warmup steps (its 1000 would keep the LR below 1e-5 for
    # the first 50 of 200 steps) and no sample grids; at --small, a tiny UNet.
    amp = "bf16" if device.type == "cuda" else "off"
    overrides = dict(steps=s["mnist_steps"], batch_size=s["mnist_batch"], warmup_steps=50,
                     sample_every=0, ckpt_every=0, log_every=10, run_dir=str(work / "run"),
                     device=str(device), amp=amp)  # fmt: skip
    if s["unet"]:  # the MNIST data at 8x8, a tiny UNet
        unet = {k: v for k, v in s["unet"].items() if k != "image_size"}
        overrides.update(image_size=8, model_overrides=unet, warmup_steps=5, lr=1e-3)
    losses = []
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        t0 = time.perf_counter()
        result = train(preset_config("mnist", **overrides), progress=False,
                       on_step=lambda step, info: losses.append(info["loss"]))  # fmt: skip
        wall = time.perf_counter() - t0
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    k = max(1, len(losses) // 5)
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    return {"data": source, "steps": result.step, "wall_s": wall, "loss_first": first,
            "loss_last": last, "loss_falls": last < 0.8 * first}  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    p.add_argument("--small", action="store_true", help="CPU size: every section, tiny")
    p.add_argument("--no-compile", action="store_true", help="leave out the compiled rows")
    p.add_argument("--out", default=None, help="JSON file (default bench/results-gpu.json)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here; bench/gpu.py --small --device cpu runs it at CPU size",
              file=sys.stderr)  # fmt: skip
        return 2
    s = sizes(args.small)
    default = "results-gpu-small.json" if args.small else "results-gpu.json"
    report = Report(Path(args.out or Path(__file__).parent / default))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    peak = peak_tflops(name) if device.type == "cuda" else None
    report.add("device", {
        "name": name, "peak_bf16_tflops": peak, "torch": torch.__version__,
        "cuda": torch.version.cuda, "small": args.small, "sizes": s,
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    })  # fmt: skip
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    from ddpm import GaussianDiffusion, UNet, linear_beta_schedule

    model = UNet.from_preset("cifar10", **s["unet"]).to(device)
    x = torch.rand(2, 3, s["image"], s["image"], device=device) * 2 - 1
    flops = count_flops(model, GaussianDiffusion(linear_beta_schedule(1000)), x)
    report.add("flops", flops)
    del model

    rows = []
    for precision in ("bf16", "fp16"):
        for compiled in (False, True) if not args.no_compile else (False,):
            try:
                row = time_training(args, s, device, precision, compiled,
                                    flops["train_flops_per_image"], peak)  # fmt: skip
            except Exception as err:  # a compile failure must not lose the other rows
                row = {
                    "precision": precision,
                    "compiled": compiled,
                    "error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}",
                }
            rows.append(row)
            report.add("train", rows)
            if device.type == "cuda":
                torch.cuda.empty_cache()

    report.add("sample", time_sampling(s, device))

    best = max((r["steps_per_s"] for r in rows if "steps_per_s" in r), default=None)
    report.add("projection", {
        "best_steps_per_s": best,
        "hours_800k": PAPER_STEPS / best / 3600 if best else None,
        "paper_tpu_v3_8_hours": PAPER_STEPS / PAPER_STEPS_PER_S / 3600,
        "goal_steps_per_s": GOAL_STEPS_PER_S,
        "meets_goal": best is not None and best >= GOAL_STEPS_PER_S,
    })  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        report.add("mnist200", mnist_200(s, device, Path(tmp)))
    ok = report.data["mnist200"]["loss_falls"]
    print(summary(report.data))
    return 0 if ok else 1


def summary(d: dict) -> str:
    dev, lines = d["device"], []
    lines.append(f"{dev['name']} (peak bf16 {dev['peak_bf16_tflops'] or '?'} TFLOP/s), "
                 f"torch {dev['torch']}")  # fmt: skip
    f = d["flops"]
    lines.append(f"train step {f['train_flops_per_image'] / 1e9:.2f} GFLOP/image, forward "
                 f"{f['fwd_flops_per_image'] / 1e9:.2f} GFLOP/image")  # fmt: skip
    lines += ["", "| precision | compiled | steps/s | img/s | MFU | peak MiB | first step s |",
              "|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in d["train"]:
        if "error" in r:
            lines.append(f"| {r['precision']} | {r['compiled']} | {r['error']} |||||")
            continue
        mem = r.get("peak_alloc_bytes", r.get("peak_rss_bytes", 0)) / 2**20
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        lines.append(
            f"| {r['precision']} | {r['compiled']} | {r['steps_per_s']:.2f} | "
            f"{r['images_per_s']:.0f} | {mfu} | {mem:.0f} | {r['first_step_s']:.1f} |"
        )
    sm = d["sample"]
    lines.append("")
    lines.append(
        "sampling "
        + ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in sm.items() if k.endswith("_s"))
        + f" for {sm['images']} images"
    )
    pr = d["projection"]
    if pr["hours_800k"]:
        lines.append(
            f"800k steps: {pr['hours_800k']:.1f} h at {pr['best_steps_per_s']:.1f} "
            f"steps/s (paper's TPU v3-8: {pr['paper_tpu_v3_8_hours']:.1f} h; goal "
            f">= {GOAL_STEPS_PER_S:.0f} steps/s: "
            f"{'met' if pr['meets_goal'] else 'not met'})"
        )
    m = d["mnist200"]
    lines.append(
        f"mnist {m['steps']} steps on {m['data']}: loss {m['loss_first']:.3f} -> "
        f"{m['loss_last']:.3f} ({'falls' if m['loss_falls'] else 'DOES NOT FALL'}), "
        f"{m['wall_s']:.0f} s"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
