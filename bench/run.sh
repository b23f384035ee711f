#!/usr/bin/env bash
# `make bench`: build bench/.venv if needed (idempotent, stamp file), then run the UNet step
# benchmark. Arguments go to bench/unet_step.py, e.g.
#   bash bench/run.sh --device cpu --batch-sizes 8 --repeats 3 --libs ours,diffusers
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=bench/.venv
PY=$VENV/bin/python
STAMP=$VENV/.bench-installed
# rebuild when the package's or the peers' requirements change
WANT=$(cat pyproject.toml bench/requirements-peers.txt | sha256sum | cut -d' ' -f1)

if [[ ! -f $STAMP || $(cat "$STAMP") != "$WANT" ]]; then
    echo "[bench] installing into $VENV" >&2
    rm -f "$STAMP"
    [[ -x $PY ]] || python3 -m venv "$VENV"
    # the repo package first: it brings torch (and torch's own dependencies)
    "$PY" -m pip install --quiet -e .
    # the peers without their declared dependencies, plus what their UNets import
    "$PY" -m pip install --quiet --no-deps -r bench/requirements-peers.txt
    "$PY" - <<'PYEOF'
from ddpm.unet import UNet
from labml_nn.diffusion.ddpm.unet import UNet as LabmlUNet
from denoising_diffusion_pytorch import Unet
from diffusers import UNet2DModel
PYEOF
    echo "$WANT" >"$STAMP"
fi

exec "$PY" bench/unet_step.py "$@"
