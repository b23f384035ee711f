"""Where a UNet step's CPU time goes: the share spent in convolutions, per library.

    bench/.venv/bin/python bench/op_share.py                 # ours and diffusers, cifar10, batch 8
    bench/.venv/bin/python bench/op_share.py --models cifar10,digits --precisions fp32,bf16

Runs the same training step (L_simple, backward, Adam) and sampling step (one forward under
inference mode) as ``unet_step.py``, eager, in fp32 or under bf16 autocast, contiguous or
channels_last, under ``torch.profiler``, and splits the self CPU time of the profiled steps into
convolution (``aten::*convolution*``, forward and backward, whichever kernel runs it) and
everything else (GroupNorm, SiLU, attention, adds, copies, Adam). Both libraries run the same
convolutions (the same network, the same FLOPs), so the convolution share bounds what any
rewrite outside them can gain (Amdahl): ``1 / conv_share``. One JSON line per (library, model,
precision, layout, step) is appended to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from unet_step import LIBS, MODELS, cpu_model, make_step  # noqa: E402


def profile_step(lib: str, model_name: str, what: str, batch: int, steps: int, precision: str,
                 channels_last: bool) -> dict:  # fmt: skip
    torch.manual_seed(0)
    model, fwd, _, _ = LIBS[lib][0](model_name)
    C, S = MODELS[model_name]
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    x0 = (torch.rand(batch, C, S, S) * 2 - 1).contiguous(memory_format=layout)
    step = make_step(what, model, model, fwd, x0, autocast, layout)
    for _ in range(2):  # warm-up: oneDNN primitive caches, Adam's state
        step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(e.self_cpu_time_total for e in events if "convolution" in e.key)
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]
    return {"lib": lib, "model": model_name, "step": what, "batch": batch, "precision": precision,
            "channels_last": channels_last,
            "threads": torch.get_num_threads(), "steps_profiled": steps,
            "self_cpu_ms_per_step": round(total / 1e3 / steps, 1),
            "conv_share": round(conv / total, 3), "amdahl_bound": round(total / conv, 2),
            "top_ops": {e.key: round(e.self_cpu_time_total / total, 3) for e in top}}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--libs", default="ours,diffusers")
    p.add_argument("--models", default="cifar10")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--precisions", default="fp32", help="fp32, bf16 (autocast)")
    p.add_argument("--channels-last", default="off", help="off, on")
    p.add_argument("--steps", type=int, default=3, help="profiled steps per row (default 3)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--out", default="bench/results-op-share.jsonl")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    meta = {"cpu_model": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__}  # fmt: skip
    settings = [(model_name, precision, cl == "on") for model_name in args.models.split(",")
                for precision in args.precisions.split(",")
                for cl in args.channels_last.split(",")]  # fmt: skip
    for model_name, precision, cl in settings:
        for lib in args.libs.split(","):
            for what in ("train", "sample"):
                row = {**meta, **profile_step(lib, model_name, what, args.batch, args.steps,
                                              precision, cl)}  # fmt: skip
                print(
                    f"{lib:9} {model_name:7} {precision}{' CL' if cl else '   '} {what:6} "
                    f"{row['self_cpu_ms_per_step']:8.1f} ms/step  convolution "
                    f"{row['conv_share']:.0%}  bound {row['amdahl_bound']}x",
                    flush=True,
                )
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
