#!/usr/bin/env sh
# Fetch, on this machine, the wheels the lent GPU machine lacks (it has no internet), into .whl/
# (git-ignored). The device tool carries them when a run names ".whl" in `carry`; then
# scripts/gpu_check.sh installs them there. The GPU image has torch, pytest, numpy, pillow,
# matplotlib, pandas, tqdm, pyyaml, jinja2: only pycocotools is missing for the GPU tests, and
# compute-sanitizer (nvidia-cuda-sanitizer-api, CUDA 13.0's, 14 MB) for the sanitizer step.
set -eu
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "pycocotools==2.0.11"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_25_x86_64 -d .whl "nvidia-cuda-sanitizer-api==13.0.85"
ls -la .whl
