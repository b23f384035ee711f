#!/usr/bin/env bash
# The GPU profile in one command (see bench/README.md): train steps/s of the paper's CIFAR-10
# model at batch 128 (bf16, fp16 + GradScaler; eager, compiled), MFU, peak memory, sampling
# 256 images (1000 ancestral steps, DDIM-50), the 800k-step projection, and 200 real MNIST
# steps. Results: bench/results-gpu.json, written after each section. Arguments go to
# bench/gpu.py (e.g. --no-compile, --device cuda:1, --small --device cpu).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}
exec "$PY" bench/gpu.py "$@"
