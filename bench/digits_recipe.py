"""Quick mode's training recipe: wall time against sample quality (digits FID), and how the
digits UNet's forward pass scales with threads. See bench/README.md, "The quick-mode dividend".

    python bench/digits_recipe.py recipe                  # the digits preset as it is
    python bench/digits_recipe.py recipe --name b64 batch_size=64 steps=700 lr=2e-3
    python bench/digits_recipe.py threads   # forward ms at batch 8..400, on 1 and 2 threads

``recipe`` trains into ``DDPM_DATA_DIR`` (set it to a scratch folder), then scores the EMA
model with the digits FID against the 297 test images: DDIM-50 for three seeds, and the
1000-step ancestral sampler (Algorithm 2) for one, next to the real-data floor. One JSON line
per run is appended to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ddpm.data import load_dataset
from ddpm.metrics import digits_fid, digits_fid_floor, load_digits_classifier
from ddpm.train import TrainConfig, load_model, preset_config, train
from ddpm.unet import UNet


def parse_value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def recipe(args) -> dict:
    overrides = dict(kv.split("=", 1) for kv in args.overrides)
    unknown = set(overrides) - set(TrainConfig().to_dict())
    if unknown:
        raise SystemExit(f"unknown TrainConfig fields: {sorted(unknown)}")
    overrides = {k: parse_value(v) for k, v in overrides.items()}
    config = preset_config(args.preset, name=args.name, sample_every=0, ckpt_every=0,
                           **overrides)  # fmt: skip
    tick = time.perf_counter()
    result = train(config, overwrite=True, progress=False)
    train_s = time.perf_counter() - tick
    model, diffusion, _ = load_model(result.checkpoint)
    test = load_dataset("digits", "test").data
    clf = load_digits_classifier()
    shape = (len(test), *test.shape[1:])
    floor = digits_fid_floor(len(test), reference=test, classifier=clf,
                             generator=torch.Generator().manual_seed(0))  # fmt: skip
    ddim = []
    for seed in range(args.seeds):
        x = diffusion.ddim_sample(model, shape, steps=50, progress=False,
                                  generator=torch.Generator().manual_seed(seed))  # fmt: skip
        ddim.append(digits_fid(x, test, classifier=clf))
    row = dict(name=args.name, preset=args.preset, overrides=overrides, steps=config.steps,
               batch_size=config.batch_size, threads=torch.get_num_threads(),
               train_s=round(train_s, 1), final_loss=round(result.loss, 4),
               fid_ddim50=[round(f, 2) for f in ddim],
               fid_ddim50_mean=round(sum(ddim) / len(ddim), 2),
               fid_floor=round(floor, 2))  # fmt: skip
    if not args.no_ancestral:
        x = diffusion.sample(
            model, shape, progress=False, generator=torch.Generator().manual_seed(0)
        )
        row["fid_ancestral1000"] = round(digits_fid(x, test, classifier=clf), 2)
    return row


def threads(args) -> dict:
    torch.manual_seed(0)
    model = UNet.from_preset("digits").eval()
    row = {}
    for n in (1, 2):
        torch.set_num_threads(n)
        for batch in (8, 64, 297, 400):
            x, t = torch.randn(batch, 1, 8, 8), torch.randint(0, 1000, (batch,))
            with torch.inference_mode():
                for _ in range(3):
                    model(x, t)
                reps = 40 if batch < 100 else 10
                tick = time.perf_counter()
                for _ in range(reps):
                    model(x, t)
            row[f"forward_ms_threads{n}_batch{batch}"] = round(
                1e3 * (time.perf_counter() - tick) / reps, 1
            )
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    r = sub.add_parser("recipe", help="train a digits recipe, then score it")
    r.add_argument("overrides", nargs="*", help="TrainConfig fields, e.g. batch_size=64 steps=700")
    r.add_argument("--preset", default="digits")
    r.add_argument("--name", default="recipe")
    r.add_argument("--seeds", type=int, default=3)
    r.add_argument("--no-ancestral", action="store_true")
    sub.add_parser("threads", help="forward-pass time of the digits UNet, 1 and 2 threads")
    p.add_argument("--out", default="bench/results-digits-recipe.jsonl")
    args = p.parse_args()
    row = recipe(args) if args.what == "recipe" else threads(args)
    row = {"what": args.what, "cpu_capability": torch.backends.cpu.get_cpu_capability(), **row}
    print(json.dumps(row))
    with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
