#!/usr/bin/env bash
# Downloads (here, with internet) the wheels scripts/gpu_check.sh needs on an offline GPU
# machine into .whl/ (ignored by git): the CUTLASS headers.  Carry .whl with the device run.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download --no-deps --only-binary=:all: -d .whl nvidia-cutlass==4.2.0.0
ls -la .whl
