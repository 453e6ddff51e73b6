#!/usr/bin/env bash
# One-shot GPU check for a machine with an NVIDIA GPU, its own torch and no internet:
# builds structops against that torch (CUDA forced on), runs the CUDA tests and the benchmarks,
# and leaves logs and JSON in the folder given as the first argument (default: gpu_out).
#
#   bash scripts/gpu_check.sh "$OUT"
#
# Needs on the machine: python3 with torch (CUDA build), nvcc of the same CUDA major version,
# cmake, ninja, pybind11, scikit-build-core, pytest.  The CUTLASS headers come from a carried
# wheel: run scripts/fetch_gpu_wheels.sh beforehand here, and carry the .whl folder along.
# STRUCTOPS_CUDA_ARCHS defaults to the GPU's own arch (e.g. 90a-real on H100/H200).
set -uo pipefail
out=${1:-gpu_out}
mkdir -p "$out"
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
log() { echo "[gpu_check] $*" | tee -a "$out/summary.txt"; }

{ nvidia-smi; nvcc --version; $PY -c "import torch; print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"; } \
  > "$out/env.txt" 2>&1
log "$(tail -1 "$out/env.txt")"

# carried wheels (nvidia-cutlass headers, anything else missing there)
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/structops-site .whl/*.whl \
    && export PYTHONPATH=/tmp/structops-site${PYTHONPATH:+:$PYTHONPATH}
fi

if [ -z "${STRUCTOPS_CUDA_ARCHS:-}" ]; then
  cc=$($PY -c "import torch; m,n=torch.cuda.get_device_capability(); print(f'{m}{n}')")
  case "$cc" in 90) STRUCTOPS_CUDA_ARCHS="90a-real" ;; *) STRUCTOPS_CUDA_ARCHS="${cc}-real" ;; esac
fi
export STRUCTOPS_CUDA=ON STRUCTOPS_CUDA_ARCHS
cmake_ok=$($PY -c "import cmake, sys; v=tuple(int(x) for x in cmake.__version__.split('.')[:3]); print(int(v >= (3,31,9)))" 2>/dev/null || echo 0)
extra=()
[ "$cmake_ok" = 1 ] || extra+=("-Ccmake.version=>=3.26")

start=$(date +%s)
if $PY -m pip install --no-build-isolation --no-deps -v -e . -Cbuild-dir=build/gpu "${extra[@]}" > "$out/build.log" 2>&1; then
  log "build ok ($(( $(date +%s) - start )) s, archs $STRUCTOPS_CUDA_ARCHS)"
else
  log "BUILD FAILED (see build.log)"; tail -40 "$out/build.log"; exit 1
fi
$PY -c "import structops, json; print(json.dumps(structops.build_info()))" | tee -a "$out/summary.txt"

export PYTHONUNBUFFERED=1
$PY -m pytest -q -m cuda tests/test_cuda.py --junitxml "$out/pytest_cuda.xml" 2>&1 | tee "$out/pytest_cuda.log" | tail -5
log "cuda tests: $(tail -1 "$out/pytest_cuda.log")"
$PY -m pytest -q tests/test_monarch.py -x 2>&1 | tail -2 > "$out/pytest_cpu_smoke.log"
log "cpu smoke: $(tail -1 "$out/pytest_cpu_smoke.log")"

timeout 420 $PY bench/bench_monarch.py --device cuda --json "$out/bench_cuda.json" 2>&1 | tee "$out/bench_cuda.log"
log "python bench exit $?"
if cmake -S . -B build/gpu-bench -G Ninja -DPython_EXECUTABLE="$(command -v $PY)" -DSTRUCTOPS_BUILD_PYTHON=OFF \
     -DSTRUCTOPS_BUILD_BENCH=ON -DSTRUCTOPS_CUDA=ON "-DSTRUCTOPS_CUDA_ARCHS=$STRUCTOPS_CUDA_ARCHS" > "$out/bench_cpp_build.log" 2>&1 \
   && cmake --build build/gpu-bench --target bench_monarch_cuda >> "$out/bench_cpp_build.log" 2>&1; then
  build/gpu-bench/bench/cpp/bench_monarch_cuda | tee "$out/bench_cuda_cpp.jsonl"
else
  log "C++ CUDA bench build failed (see bench_cpp_build.log)"
fi
log "done in $(( $(date +%s) - start )) s"
