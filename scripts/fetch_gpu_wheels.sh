#!/usr/bin/env bash
# Downloads (here, with internet) the wheels scripts/gpu_check.sh needs on an offline GPU
# machine into .whl/ (ignored by git): the CUTLASS headers, and the build backend at the version
# this repository is built and tested with (pure-Python wheels; the GPU image's own versions are
# unknown, and the pyproject's in-tree metadata provider needs scikit-build-core >= 0.10).
# Carry .whl with the device run (the device tool's `carry`).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download --no-deps --only-binary=:all: -d .whl nvidia-cutlass==4.2.0.0 \
  scikit-build-core==1.1.2 pybind11==3.1.0
# peft 0.21.2 and what it imports, for the RandLoRA / VeRA GPU comparison (pure Python except
# safetensors / tokenizers / regex / pyyaml / psutil, fetched for the GPU image's CPython: set
# GPU_PY_VERSION, default 3.11).  Not tried on a device machine yet.
py=${GPU_PY_VERSION:-3.11}
python3 -m pip download --no-deps --only-binary=:all: -d .whl peft==0.21.2 accelerate==1.15.0 transformers==5.24.0 \
  huggingface_hub==2.4.0 safetensors==0.8.0 tokenizers==0.23.3 regex==2026.11.19 PyYAML==6.0.4 psutil==7.2.2 \
  packaging tqdm filelock fsspec typing_extensions httpx2 httpcore2 h11 anyio idna hf-xet \
  --python-version "$py" --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 || \
  echo "peft wheels: download incomplete (the GPU randbasis comparison will say peft is missing)"
ls -la .whl
