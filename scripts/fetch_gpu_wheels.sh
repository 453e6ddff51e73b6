#!/usr/bin/env bash
# Downloads (here, with internet) the wheels scripts/gpu_check.sh needs on an offline GPU
# machine into .whl/ (ignored by git): the CUTLASS headers, and the build backend at the version
# this repository is built and tested with (pure-Python wheels; the GPU image's own versions are
# unknown, and the pyproject's in-tree metadata provider needs scikit-build-core >= 0.10).
# Carry .whl with the device run (the device tool's `carry`).
#
# Size: the device tool sends the tracked tree (≈ 36 MB, mostly docs/results JSON) plus what is
# carried, at most 64 MiB in all, so only what the image lacks is fetched.  The image already
# has transformers 5.17, accelerate 1.15, huggingface_hub, safetensors, tokenizers, pyyaml,
# psutil, tqdm (the device notes' package list), which satisfy peft 0.21.2's requirements; only
# peft itself is carried.  GPU_WHEELS_FULL=1 also fetches the versions this repo tests with
# (transformers 5.24 & co., ≈ 25 MB more: over the limit with the current tree).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download --no-deps --only-binary=:all: -d .whl nvidia-cutlass==4.2.0.0 \
  scikit-build-core==1.1.2 pybind11==3.1.0 peft==0.21.2
# For the GPU image's CPython (GPU_PY_VERSION, default 3.12: the device image's python3 is 3.12.3
# per the device notes).  Not tried on a device machine yet.
py=${GPU_PY_VERSION:-3.12}
if [ "${GPU_WHEELS_FULL:-0}" = 1 ]; then
  python3 -m pip download --no-deps --only-binary=:all: -d .whl accelerate==1.15.0 transformers==5.24.0 \
    huggingface_hub==2.4.0 safetensors==0.8.0 tokenizers==0.23.3 regex==2026.11.19 PyYAML==6.0.4 psutil==7.2.2 \
    packaging tqdm filelock fsspec typing_extensions httpx2 httpcore2 h11 anyio idna hf-xet \
    --python-version "$py" --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 || \
    echo "full wheel set: download incomplete"
fi
ls -la .whl
tracked=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
wheels=$(du -cb .whl/*.whl | tail -1 | cut -f1)
total=$(( tracked + wheels ))
echo "device transfer: tracked tree $(( tracked >> 20 )) MiB + .whl $(( wheels >> 20 )) MiB = $(( total >> 20 )) MiB (limit 64 MiB)"
if [ "$total" -gt $(( 64 << 20 )) ]; then
  echo "fetch_gpu_wheels: over the device tool's 64 MiB: drop wheels from .whl before the run" >&2
  exit 1
fi
