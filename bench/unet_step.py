"""Time one DDPM training step and one sampling step of our UNet against peer UNets.

The grid: library x model (``cifar10``: the paper's CIFAR-10 network; ``digits``: the book's
quick-mode network; diffusers' ``UNet2DModel`` configured to the same architecture for both) x
batch size x precision (fp32, bf16 autocast) x compile (off, on: ``torch.compile``, its
compilation time reported separately) x channels_last (off, on), on the same inputs.
``--quick`` runs no compiled rows unless ``--compile`` asks for them, and channels_last in fp32
only. On a CPU that emulates bfloat16 (no AVX512-BF16, no AMX) the bf16 rows are skipped unless
``--force-bf16``: emulated, they are tens of times slower and say nothing about the code.

What is measured, per row, on the model's inputs (cifar10: 32x32x3, the paper's setting):

* ``train``: one L_simple training step -- draw t ~ U{0..999} and eps ~ N(0, I), make
  x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (linear 1e-4..0.02 schedule), forward,
  MSE(eps_pred, eps), backward, Adam step (lr 2e-4). Model in train mode (dropout on).
* ``sample``: one reverse step's network call -- a forward pass under ``torch.inference_mode``
  at a fixed t = 500, model in eval mode. (The posterior update itself is a few elementwise ops
  and is left out: it is the same for every library.)

For every model: parameter count and forward FLOPs of a batch-1 forward, counted with
``torch.utils.flop_counter.FlopCounterMode`` (the same method for all; it counts matmuls,
convolutions and attention -- SDPA forced to its math backend while counting -- not elementwise
ops or norms; 1 multiply-add = 2 FLOPs).

Timing: median and interquartile range (q3 - q1) of wall-clock time over ``--repeats`` steps
after ``--warmup`` untimed steps (CUDA: synchronised before each clock read).

Memory: CPU -- the peak RSS (``ru_maxrss``, the kernel's high-water mark: tracemalloc does not
see torch's allocations) of the worker process, and that peak minus the RSS just before the
first step (imports, model, inputs and optimizer object already there; Adam's
state is created in the first step and so counts). CUDA -- ``torch.cuda.max_memory_allocated``
and that peak minus the memory allocated before the first step.

Each (library, batch size, step) runs in its own subprocess, so peak memory and import state
do not mix; model facts (parameters, FLOPs) come from one more subprocess per library.

Shared machines: every row records the share of the machine's CPU that other processes used
during its timed steps (/proc/stat). On a CPU the driver waits for a quiet machine before each
row and measures a row again while that share was above --max-other-load (see --retries,
--quiet-wait, --time-budget), keeping the least disturbed try and recording all of them.

Run through ``bench/run.sh`` (``make bench``), which builds the bench venv; see bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata as md
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

T_STEPS = 1000  # diffusion steps, the paper's T
T_SAMPLE = 500  # the fixed step at which the sampling forward pass is timed
LR = 2e-4  # the paper's Adam learning rate
PAPER_PARAMS = 35_746_307  # the original release's CIFAR-10 model

# ---------------------------------------------------------------------------------------------
# The models. Each builder returns (model, forward(model, x, t) -> eps_pred, config, notes).
# Peers are only imported and called; their configs are chosen to be as close to the paper's
# CIFAR-10 UNet (ch 128, mult 1,2,2,2, 2 res blocks, attention at 16x16, dropout 0.1) as their
# constructors can express. bench/README.md lists what still differs.
# ---------------------------------------------------------------------------------------------


MODELS = {"cifar10": (3, 32), "digits": (1, 8)}  # model: (channels, image size) of its inputs


def build_ours(name):
    from ddpm.unet import UNet

    model = UNet.from_preset(name)
    config = {"preset": name}
    return model, lambda m, x, t: m(x, t), config, f"ddpm.unet.UNet.from_preset({name!r})"


def _cifar10_only(name):
    if name != "cifar10":
        raise NotImplementedError(f"no {name} configuration for this library")


def build_labml(name):
    _cifar10_only(name)
    from labml_nn.diffusion.ddpm.unet import UNet

    # labml's ch_mults are cumulative (channels_i = channels_{i-1} * ch_mults[i]), so the paper's
    # per-level widths 128, 256, 256, 256 are ch_mults (1, 2, 1, 1), not (1, 2, 2, 2).
    config = {
        "image_channels": 3,
        "n_channels": 128,
        "ch_mults": (1, 2, 1, 1),
        "is_attn": (False, True, False, False),
        "n_blocks": 2,
    }
    model = UNet(**config)  # dropout is fixed at 0.1 inside labml's ResidualBlock
    return model, lambda m, x, t: m(x, t), config, "labml_nn.diffusion.ddpm.unet.UNet"


def build_lucidrains(name):
    _cifar10_only(name)
    from denoising_diffusion_pytorch import Unet

    config = {
        "dim": 128,
        "dim_mults": (1, 2, 2, 2),
        "channels": 3,
        "dropout": 0.1,
        # full (softmax) attention at the 16x16 stage; its other stages always get linear
        # attention, and the middle block always gets full attention.
        "full_attn": (False, True, False, False),
    }
    model = Unet(**config)
    return model, lambda m, x, t: m(x, t), config, "denoising_diffusion_pytorch.Unet"


DIFFUSERS_CONFIG = {
    # google/ddpm-cifar10-32's config (the paper's model converted by the diffusers authors),
    # built from the config: no weights are downloaded. dropout 0.1 is the paper's training
    # setting (that config leaves it at the default 0.0).
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (128, 256, 256, 256),
    "layers_per_block": 2,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": None,
    "act_fn": "silu",
    "center_input_sample": False,
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-6,
    "norm_num_groups": 32,
    "time_embedding_type": "positional",
    "dropout": 0.1,
}


# The book's digits network (ddpm.unet.PRESETS["digits"]) in diffusers' terms: widths 32, 64,
# one res block per level, attention at 4x4 (and in the middle), 8 groups, no dropout. The same
# 701,345 parameters as ours.
DIFFUSERS_DIGITS_CONFIG = {
    **DIFFUSERS_CONFIG,
    "sample_size": 8,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
    "norm_num_groups": 8,
    "dropout": 0.0,
}


def build_diffusers(name):
    from diffusers import UNet2DModel

    config = {"cifar10": DIFFUSERS_CONFIG, "digits": DIFFUSERS_DIGITS_CONFIG}[name]
    model = UNet2DModel(**config)
    return model, lambda m, x, t: m(x, t, return_dict=False)[0], config, "diffusers.UNet2DModel"


LIBS = {
    # name: (builder, distribution whose version is reported)
    "ours": (build_ours, "ddpm"),
    "labml": (build_labml, "labml-nn"),
    "lucidrains": (build_lucidrains, "denoising-diffusion-pytorch"),
    "diffusers": (build_diffusers, "diffusers"),
}

# ---------------------------------------------------------------------------------------------
# Worker: runs inside the subprocess.
# ---------------------------------------------------------------------------------------------


def _rss_now_kib() -> int:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def _peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _cpu_busy_s() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the machine since boot (/proc/stat); None off Linux."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / hz, sum(fields) / hz


def _others_cpu_frac(busy0, busy1, own_cpu_s: float) -> float | None:
    """Share of the machine's CPU time that other processes used between two _cpu_busy_s()."""
    if busy0 is None or busy1 is None or busy1[1] <= busy0[1]:
        return None
    return max(0.0, (busy1[0] - busy0[0]) - own_cpu_s) / (busy1[1] - busy0[1])


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "?"


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def make_step(what: str, model, net, fwd, x0, autocast, memory_format):
    """The step a row times (also profiled by op_share.py), on ``net`` (``model`` itself or
    compiled): ``train``, one L_simple step (``t ~ U{0..T-1}``, ``eps ~ N(0, I)``, MSE, backward,
    Adam; the paper's linear schedule 1e-4..0.02) on the data ``x0``; ``sample``, one forward at
    ``t = T_SAMPLE`` under inference mode. ``autocast``: the precision's context."""
    import torch

    B, device = x0.shape[0], x0.device
    if what == "train":
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=LR)
        betas = torch.linspace(1e-4, 0.02, T_STEPS, dtype=torch.float64)
        abar = torch.cumprod(1 - betas, 0).float().to(device)

        def step():
            t = torch.randint(0, T_STEPS, (B,), device=device)
            eps = torch.randn_like(x0)
            a = abar[t].view(B, 1, 1, 1)
            xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
            with autocast:
                loss = torch.nn.functional.mse_loss(fwd(net, xt, t).float(), eps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss

        return step
    if what == "sample":
        model.eval()
        xt = torch.randn(x0.shape, device=device).contiguous(memory_format=memory_format)
        t = torch.full((B,), T_SAMPLE, dtype=torch.long, device=device)

        def step():
            with torch.inference_mode(), autocast:
                return fwd(net, xt, t)

        return step
    raise ValueError(what)


def worker(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch.cuda.is_available() is False")
    torch.manual_seed(0)

    builder, dist = LIBS[args.lib]
    model, fwd, config, where = builder(args.model)
    model = model.to(device)
    out = {"lib": args.lib, "model": args.model, "dist": dist, "version": _version(dist),
           "class": where}  # fmt: skip
    C, S = MODELS[args.model]

    if args.what == "info":
        from torch.utils.flop_counter import FlopCounterMode

        model.eval()
        x = torch.randn(1, C, S, S, device=device)
        t = torch.full((1,), T_SAMPLE, dtype=torch.long, device=device)
        # Fused CPU attention kernels (e.g. SDPA's flash-for-CPU) are invisible to
        # FlopCounterMode; the math backend decomposes attention into counted bmm's, so every
        # model's attention is counted, whichever way it calls it.
        from torch.nn.attention import SDPBackend, sdpa_kernel

        counter = FlopCounterMode(display=False)
        with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]), counter:
            y = fwd(model, x, t)
        flops_by_op = {str(k): int(v) for k, v in counter.get_flop_counts()["Global"].items()}
        assert y.shape == x.shape, f"{args.lib}: output {tuple(y.shape)} != input {tuple(x.shape)}"
        out.update(
            params=sum(p.numel() for p in model.parameters()),
            fwd_flops_b1=int(counter.get_total_flops()),
            fwd_flops_b1_by_op=flops_by_op,
            config=_jsonable(config),
            torch=torch.__version__,
            threads=torch.get_num_threads(),
        )
        return out

    B = args.batch
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    net = torch.compile(model) if args.compile else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")
    gen = torch.Generator(device="cpu").manual_seed(0)
    x0 = (torch.rand(B, C, S, S, generator=gen) * 2 - 1).to(device)  # data in [-1, 1]
    x0 = x0.contiguous(memory_format=memory_format)
    step = make_step(args.what, model, net, fwd, x0, autocast, memory_format)

    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        base_mem = torch.cuda.memory_allocated(device)
    else:
        base_mem = _rss_now_kib() * 1024
        base_peak = _peak_rss_kib() * 1024

    # The first step compiles (with --compile): its time, less a step's, is the compile time.
    first = time.perf_counter()
    step()
    sync()
    first_step_s = time.perf_counter() - first
    for _ in range(args.warmup - 1):
        step()
    sync()
    times = []
    load_before = os.getloadavg()[0]
    busy0 = _cpu_busy_s()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        r = step()
        sync()
        times.append(time.perf_counter() - t0)
    # CPU seconds this process got per wall second per thread: ~1 when it had its cores to
    # itself, lower when other processes took them (a sign that the timings are inflated).
    own_cpu_s = time.process_time() - cpu0
    cpu_util = own_cpu_s / (time.perf_counter() - wall0) / args.threads
    # Share of all cores that *other* processes used meanwhile: the direct measure of how
    # noisy the machine was for this row (0 on an otherwise idle machine).
    others = _others_cpu_frac(busy0, _cpu_busy_s(), own_cpu_s)
    load_after = os.getloadavg()[0]
    assert torch.isfinite(r).all(), f"{args.lib}: non-finite output"

    if cuda:
        peak = torch.cuda.max_memory_allocated(device)
        mem = {"mem_kind": "cuda_max_memory_allocated", "peak_bytes": peak}
    else:
        peak = _peak_rss_kib() * 1024
        mem = {"mem_kind": "peak_rss", "peak_bytes": peak, "peak_before_steps_bytes": base_peak}
    mem["base_bytes"] = base_mem
    mem["delta_bytes"] = peak - base_mem

    q1, med, q3 = statistics.quantiles(times, n=4, method="inclusive")
    out.update(
        batch=B,
        step=args.what,
        precision=args.precision,
        compile=args.compile,
        channels_last=args.channels_last,
        first_step_s=first_step_s,
        compile_s=first_step_s - med if args.compile else 0.0,
        warmup=args.warmup,
        repeats=args.repeats,
        times_s=times,
        median_s=med,
        iqr_s=q3 - q1,
        threads=torch.get_num_threads(),
        cpu_util=cpu_util,
        others_cpu_frac=others,
        loadavg_1m=(load_before, load_after),
        **mem,
    )
    return out


# ---------------------------------------------------------------------------------------------
# Driver: one subprocess per (library, batch size, step), then the tables.
# ---------------------------------------------------------------------------------------------


def run_worker(args, lib: str, what: str, batch: int = 0, cfg: dict | None = None) -> dict:
    """Run one worker subprocess; a failed row comes back as ``{"error": ...}`` (say, a compile
    that fails on this machine), so that the rest of the grid still runs."""
    cfg = cfg or {"model": "cifar10", "precision": "fp32", "compile": False, "channels_last": False}
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        cmd = [
            sys.executable, __file__, "--_worker", what, "--_lib", lib, "--_batch", str(batch),
            "--_result", str(result), "--device", args.device, "--threads", str(args.threads),
            "--warmup", str(args.warmup), "--repeats", str(args.repeats),
            "--_model", cfg["model"], "--_precision", cfg["precision"],
            "--_compile", str(int(cfg["compile"])),
            "--_channels_last", str(int(cfg["channels_last"])),
        ]  # fmt: skip
        env = dict(os.environ)
        n = str(args.threads)
        env.update(OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, HF_HUB_OFFLINE="1")
        env.setdefault("DIFFUSERS_NO_ADVISORY_WARNINGS", "1")
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0 or not result.exists():
            last = (proc.stderr or "").strip().splitlines()[-1:] or ["?"]
            print(f"[bench]   worker failed (exit {proc.returncode}): {last[0]}", file=sys.stderr)
            return {"lib": lib, "step": what, "batch": batch, **cfg, "error": last[0]}
        out = json.loads(result.read_text())
        out["worker_wall_s"] = time.perf_counter() - t0
        return out


def wait_quiet(threshold: float, max_wait: float) -> tuple[float, float | None]:
    """Wait (at most ``max_wait`` s) until other processes use less than ``threshold`` of the
    machine's CPU over a 2 s window. Returns (seconds waited, last measured share)."""
    t0 = time.perf_counter()
    while True:
        b0 = _cpu_busy_s()
        time.sleep(2.0)
        frac = _others_cpu_frac(b0, _cpu_busy_s(), 0.0)  # the driver itself is idle meanwhile
        if frac is None or frac < threshold or time.perf_counter() - t0 >= max_wait:
            return time.perf_counter() - t0, frac


def measure(args, lib: str, what: str, batch: int, cfg: dict) -> dict:
    """One timed row. On a CPU, wait for a quiet machine first, and measure again (at most
    ``--retries`` times) while other processes took more than ``--max-other-load`` of the CPU
    during the timed steps; keep the least disturbed attempt and record all of them."""
    attempts = []
    for _ in range(1 + args.retries):
        # the gate is for CPU timings, and only while the run is within --time-budget
        gate = args.device == "cpu" and time.perf_counter() - args.t_start < args.time_budget
        if attempts and not gate:
            break
        if attempts:
            print("[bench]   other processes were busy: measuring again", file=sys.stderr)
        quiet = gate and args.quiet_wait > 0  # --quiet-wait 0: not even the 2 s load sample
        waited, before = wait_quiet(args.max_other_load, args.quiet_wait) if quiet else (0.0, None)
        r = run_worker(args, lib, what, batch, cfg)
        if "error" in r:
            return r
        r.update(quiet_waited_s=waited, others_cpu_frac_before=before)
        attempts.append(r)
        others = r["others_cpu_frac"]
        print(
            f"[bench]   median {fmt_ms(r['median_s'])} ms, IQR {fmt_ms(r['iqr_s'])} ms, peak "
            f"{fmt_mib(r['peak_bytes'])} MiB, others' CPU {fmt_pct(others)}, CPU util "
            f"{r['cpu_util']:.0%} (waited {waited:.0f} s, ran {r['worker_wall_s']:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
        if not gate or others is None or others <= args.max_other_load:
            break
    best = min(attempts, key=lambda a: a["others_cpu_frac"] or 0.0)
    best["attempts"] = [
        {k: a[k] for k in ("median_s", "iqr_s", "others_cpu_frac", "cpu_util", "quiet_waited_s")}
        for a in attempts
    ]
    return best


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def fmt_ms(s: float) -> str:
    return f"{s * 1e3:.1f}"


def fmt_pct(x: float | None) -> str:
    return "?" if x is None else f"{x:.0%}"


def fmt_mib(b: float) -> str:
    return f"{b / 2**20:.0f}"


def _setting(r: dict) -> str:
    return (f"{r['precision']}{' compiled' if r['compile'] else ''}"
            f"{' CL' if r['channels_last'] else ''}")  # fmt: skip


def markdown(report: dict) -> str:
    meta, models, results = report["meta"], report["models"], report["results"]
    lines = [
        f"device {meta['device']} ({meta['device_name']}), torch {meta['torch']}, "
        f"{meta['threads']} torch threads, warmup {meta['warmup']}, repeats {meta['repeats']}, "
        f"native bf16 {meta['native_bf16']}",
        "",
        "*setting*: precision (fp32, or bf16 autocast), *compiled* (torch.compile), *CL* "
        "(channels_last); *compile s*: the first step's time less a step's. *others' CPU*: share "
        "of the machine's CPU time that other processes used during the row's timed steps; "
        "*tries*: how often the row was measured (on a CPU, again while "
        f"others' CPU > {meta['max_other_load']:.0%}, at most {meta['retries']} more times; "
        "the least disturbed try is shown).",
        "",
        "| library | model | version | params | fwd GFLOPs (batch 1) |",
        "|---|---|---|---:|---:|",
    ]
    for m in models:
        if "error" in m:
            lines.append(f"| {m['lib']} | {m['model']} | failed: {m['error']} | | |")
            continue
        lines.append(
            f"| {m['lib']} | {m['model']} | {m['dist']} {m['version']} | {m['params']:,} | "
            f"{m['fwd_flops_b1'] / 1e9:.2f} |"
        )
    cuda = meta["device"].startswith("cuda")
    peak_h = "peak CUDA alloc MiB" if cuda else "peak RSS MiB"
    delta_h = "alloc delta MiB" if cuda else "peak RSS delta MiB"
    lines += [
        "",
        f"| library | model | batch | step | setting | median ms | IQR ms | img/s | compile s "
        f"| {peak_h} | {delta_h} | others' CPU | tries |",
        "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        head = f"| {r['lib']} | {r['model']} | {r['batch']} | {r['step']} | {_setting(r)} |"
        if "error" in r or "skipped" in r:
            lines.append(f"{head} {r.get('error') or r['skipped']} |||||||")
            continue
        lines.append(
            f"{head} {fmt_ms(r['median_s'])} | {fmt_ms(r['iqr_s'])} | "
            f"{r['batch'] / r['median_s']:.1f} | {r['compile_s']:.0f} | "
            f"{fmt_mib(r['peak_bytes'])} | {fmt_mib(r['delta_bytes'])} | "
            f"{fmt_pct(r['others_cpu_frac'])} | {len(r['attempts'])} |"
        )
    lines += ["", *ratio_tables(results)]
    return "\n".join(lines)


def ratio_tables(results: list[dict]) -> list[str]:
    """Ours against diffusers: in each setting of the grid, and each in its best setting."""
    ok = [r for r in results if "median_s" in r]
    key = lambda r: (r["model"], r["batch"], r["step"], _setting(r))  # noqa: E731
    theirs = {key(r): r for r in ok if r["lib"] == "diffusers"}
    pairs = [(r, theirs[key(r)]) for r in ok if r["lib"] == "ours" and key(r) in theirs]
    if not pairs:
        return []
    lines = [
        "Ours / diffusers, images per second (> 1: ours faster), same setting:",
        "",
        "| model | batch | step | setting | ours img/s | diffusers img/s | ratio |",
        "|---|---:|---|---|---:|---:|---:|",
    ]
    for o, d in pairs:
        lines.append(
            f"| {o['model']} | {o['batch']} | {o['step']} | {_setting(o)} | "
            f"{o['batch'] / o['median_s']:.1f} | {d['batch'] / d['median_s']:.1f} | "
            f"{d['median_s'] / o['median_s']:.2f}x |"
        )
    lines += [
        "",
        "Each library in its best setting:",
        "",
        "| model | batch | step | ours best | img/s | diffusers best | img/s | ratio |",
        "|---|---:|---|---|---:|---|---:|---:|",
    ]
    groups = sorted({k[:3] for k in map(key, ok)})
    for g in groups:
        best = {}
        for lib in ("ours", "diffusers"):
            rows = [r for r in ok if r["lib"] == lib and key(r)[:3] == g]
            if rows:
                best[lib] = min(rows, key=lambda r: r["median_s"])
        if len(best) == 2:
            o, d = best["ours"], best["diffusers"]
            lines.append(
                f"| {g[0]} | {g[1]} | {g[2]} | {_setting(o)} | {g[1] / o['median_s']:.1f} | "
                f"{_setting(d)} | {g[1] / d['median_s']:.1f} | "
                f"{d['median_s'] / o['median_s']:.2f}x |"
            )
    return lines


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), as torch detects it."""
    import torch

    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def grid(args) -> list[dict]:
    """The settings to run: model x batch x precision x compile x channels_last x step."""
    split = lambda v: [s.strip() for s in v.split(",") if s.strip()]  # noqa: E731
    onoff = {"off": False, "on": True}
    rows = []
    for model in split(args.models):
        for batch in (int(b) for b in split(args.batch_sizes)):
            for precision in split(args.precisions):
                for comp in (onoff[v] for v in split(args.compile)):
                    for cl in (onoff[v] for v in split(args.channels_last)):
                        if args.quick and precision == "bf16" and cl:
                            continue  # --quick: channels_last in fp32 only
                        for step in ("train", "sample"):
                            cfg = {"model": model, "precision": precision, "compile": comp,
                                   "channels_last": cl}  # fmt: skip
                            rows.append({"batch": batch, "step": step, "cfg": cfg})
    return rows


def driver(args) -> int:
    import torch  # only for facts about the machine; the measuring happens in the workers

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            print("--device cuda asked for, but no CUDA device is available", file=sys.stderr)
            return 2
        device_name = torch.cuda.get_device_name(torch.device(args.device))
        bf16_native = torch.cuda.is_bf16_supported()
    else:
        device_name = cpu_model()
        bf16_native = native_bf16()
    libs = [s.strip() for s in args.libs.split(",") if s.strip()]
    unknown = [lib for lib in libs if lib not in LIBS]
    unknown_models = [m for m in args.models.split(",") if m.strip() not in MODELS]
    if unknown or unknown_models:
        print(f"unknown --libs {unknown} or --models {unknown_models}; known: {list(LIBS)}, "
              f"{list(MODELS)}", file=sys.stderr)  # fmt: skip
        return 2
    out_path = Path(args.out or Path(__file__).parent / f"results-{args.device.split(':')[0]}.json")

    meta = {
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "device": args.device,
        "device_name": device_name,
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": bf16_native,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": args.threads,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "quick": args.quick,
        "max_other_load": args.max_other_load,
        "retries": args.retries,
        "quiet_wait_s": args.quiet_wait,
        "time_budget_s": args.time_budget,
        "loadavg_before": os.getloadavg(),
    }
    t_start = args.t_start = time.perf_counter()
    models, results = [], []
    for lib in libs:
        for model in [m.strip() for m in args.models.split(",") if m.strip()]:
            print(f"[bench] {lib} {model}: model facts", file=sys.stderr, flush=True)
            cfg = {"model": model, "precision": "fp32", "compile": False, "channels_last": False}
            info = run_worker(args, lib, "info", 0, cfg)
            info.setdefault("model", model)
            models.append(info)
            for row in grid(args):
                cfg, b, what = row["cfg"], row["batch"], row["step"]
                if cfg["model"] != model:
                    continue
                label = f"{lib} {model}: {what} batch {b} {_setting(cfg)}"
                if "error" in info:
                    r = {"lib": lib, "step": what, "batch": b, **cfg, "skipped": "no model"}
                elif cfg["precision"] == "bf16" and not bf16_native and not args.force_bf16:
                    r = {"lib": lib, "step": what, "batch": b, **cfg,
                         "skipped": "emulated bf16 (--force-bf16 runs it)"}  # fmt: skip
                else:
                    print(f"[bench] {label}", file=sys.stderr, flush=True)
                    r = measure(args, lib, what, b, cfg)
                results.append(r)
    meta["loadavg_after"] = os.getloadavg()
    meta["total_wall_s"] = time.perf_counter() - t_start
    report = {"meta": meta, "models": models, "results": results}

    table = markdown(report)
    print(table)
    print(
        f"\nload average before {meta['loadavg_before']}, after {meta['loadavg_after']}; "
        f"total {meta['total_wall_s']:.0f} s; results in {out_path}"
    )
    for m in models:
        if m["lib"] in ("ours", "diffusers") and m.get("model") == "cifar10":
            if m.get("params") != PAPER_PARAMS:
                print(f"note: {m['lib']} has {m.get('params')} params, paper {PAPER_PARAMS:,}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=1) + "\n")
    return 0


def cpu_flags() -> list[str]:
    """The CPU flags that matter for these kernels (AVX-512 family, AMX, AVX2, FMA)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                keep = ("avx512", "amx", "avx2", "fma", "avx_vnni")
                return sorted(f for f in line.split(":", 1)[1].split() if f.startswith(keep))
    except OSError:
        pass
    return []


def parse_args(argv=None) -> argparse.Namespace:
    """The command line, with --quick's and --compile's defaults applied."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="cpu, cuda[:N] or auto (cuda if present)")
    p.add_argument("--batch-sizes", default="8", help="comma-separated (default 8)")
    p.add_argument("--repeats", type=int, default=10, help="timed steps (default 10)")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed steps first (default 2; at least 1 is always run)")  # fmt: skip
    p.add_argument("--libs", default="ours,diffusers",
                   help=f"comma-separated from {list(LIBS)} (default ours,diffusers)")  # fmt: skip
    p.add_argument(
        "--models",
        default="cifar10,digits",
        help=f"comma-separated from {list(MODELS)} (labml and lucidrains: cifar10)",
    )
    p.add_argument("--precisions", default="fp32,bf16", help="fp32, bf16 (default both)")
    p.add_argument("--compile", help="off, on (default both; with --quick: off)")
    p.add_argument("--channels-last", default="off,on", help="off, on (default both)")
    p.add_argument("--force-bf16", action="store_true",
                   help="run bf16 rows also on a CPU that emulates bfloat16")  # fmt: skip
    p.add_argument(
        "--quick",
        action="store_true",
        help="no compiled rows unless --compile asks for them (on 2 cores each compiles for "
        "30-190 s), channels_last in fp32 only, 3 repeats, 1 warmup, no waiting or retries for "
        "a quiet machine: under 5 minutes on 2 cores",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="torch intra-op threads (default: the CPUs this process may use)",
    )
    p.add_argument(
        "--max-other-load",
        type=float,
        default=0.1,
        help="CPU only: share of the machine's CPU that other processes may use during a row's "
        "timed steps before it is measured again (default 0.1)",
    )
    p.add_argument("--retries", type=int, default=2, help="CPU only: see --max-other-load")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=60,
        help="CPU only: before each row, wait at most this many seconds for other processes to "
        "use less than --max-other-load of the CPU (default 60; 0: do not wait)",
    )
    p.add_argument(
        "--time-budget",
        type=float,
        default=900,
        help="seconds after which rows are no longer waited for nor measured again (default 900)",
    )
    p.add_argument("--out", help="JSON results file (default bench/results-<device>.json)")
    for name in ("--_worker", "--_lib", "--_result", "--_model", "--_precision"):
        p.add_argument(name, help=argparse.SUPPRESS)
    for name in ("--_batch", "--_compile", "--_channels_last"):
        p.add_argument(name, type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.compile is None:
        args.compile = "off" if args.quick else "off,on"
    if args.quick:
        args.repeats, args.warmup, args.retries, args.quiet_wait = 3, 1, 0, 0
    if args.repeats < 2 or args.warmup < 0:
        p.error("--repeats must be >= 2 (median and IQR) and --warmup >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args._worker:
        args.what, args.lib, args.batch = args._worker, args._lib, args._batch
        args.model, args.precision = args._model, args._precision
        args.compile, args.channels_last = bool(args._compile), bool(args._channels_last)
        out = worker(args)
        Path(args._result).write_text(json.dumps(out))
        return 0
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
