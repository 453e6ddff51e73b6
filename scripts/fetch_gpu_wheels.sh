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
ls -la .whl
