"""Download a released model and check that our UNet computes what diffusers computes with it.

    python tools/verify_pretrained.py [NAME ...]      (default: cifar10)

For each NAME of ``ddpm.pretrained.REGISTRY``: ``download(NAME)`` (pinned revision, hashes
checked), ``load_pretrained(NAME)`` (every tensor mapped, no missing or unexpected key), then
diffusers' ``UNet2DModel`` loads the same downloaded files, and both run on a fixed input at
several steps. Exits 1 when the relative difference exceeds float32 rounding (2e-4; a wrong
padding or key mapping gives ~0.1-1). The Pages workflow runs it before building the book, so
a changed upload or a broken converter stops the deployment. Needs the network and diffusers.
"""

from __future__ import annotations

import sys

import torch

RTOL = 2e-4  # see tests/test_pretrained.py for the float32 error analysis


def verify(name: str) -> float:
    """The relative L2 difference between our output and diffusers' for model ``name``."""
    from diffusers import UNet2DModel

    from ddpm import pretrained

    folder = pretrained.download(name)
    model, _, info = pretrained.load_pretrained(name, download=False)
    unet_dir = folder / "unet" if info["layout"] == "pipeline" else folder
    theirs = UNet2DModel.from_pretrained(unet_dir).eval()
    if sum(p.numel() for p in theirs.parameters()) != info["num_params"]:
        raise SystemExit(f"{name}: parameter counts differ")
    size = min(info["image_size"], 64)  # a 256x256 forward is slow on a CPU runner
    if size != info["image_size"]:
        scale = info["image_size"] // size
        config = model.config
        attn = tuple(r // scale for r in config.attn_resolutions)
        with torch.device("meta"):
            small = type(model)(config, image_size=size, attn_resolutions=attn)
        small.load_state_dict(model.state_dict(), assign=True)
        model = small.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, model.config.in_channels, size, size, generator=g)
    t = torch.tensor([0, 999])
    with torch.no_grad():
        ref = theirs(x, t).sample
        return float((model(x, t) - ref).norm() / ref.norm())


def main(argv: list[str] | None = None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or ["cifar10"]
    failed = False
    for name in names:
        err = verify(name)
        ok = err < RTOL
        failed |= not ok
        print(f"{name}: relative difference {err:.2e} ({'ok' if ok else 'FAILED'})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
