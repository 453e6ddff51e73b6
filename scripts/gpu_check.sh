#!/usr/bin/env bash
# One-shot GPU check (DESIGN §8) for a bare GPU machine with its own torch and no internet:
#   bash scripts/gpu_check.sh OUTDIR            # on the GPU machine (device tool: OUTDIR=$OUT)
#   GPU_CHECK_DRY=1 bash scripts/gpu_check.sh D  # anywhere: every stage that needs no GPU (CI)
#
# Stages, each under its own `timeout` (together more than the device tool's 10-minute call limit:
# a full run has never been timed, no session has had a GPU yet; split it as below if needed):
#   env      tool and library versions                               -> env.txt
#   build    one configure/build of the extension *and* the CUDA microbenchmark, for the GPU's
#            own arch (dry: the archs of `make test`, reusing build/dev)  -> logs.tar.gz:build.log
#   sass     HMMA/HGMMA/FFMA counts of the built kernels (check_sass.py)  -> sass.txt
#   tests    pytest -m cuda -x tests/test_cuda.py tests/test_butterfly_cuda.py tests/test_randbasis_cuda.py (+ sparse_lowrank, kfac),
#            60 s per test
#            (no CPU suite)  -> pytest_cuda.log
#   memcheck compute-sanitizer --tool memcheck on small Monarch (k != l, multi-tile) and butterfly
#            (single- and multi-pass) cases  -> in summary
#   bench    bf16 fwd+bwd: tokens 16384 n 4096 nblocks 4 and 64, tokens 65536 n 1024 nblocks 32;
#            structops (each engine) vs dense cuBLAS vs the bmm reference; butterfly batch 64/2048,
#            n 1024/4096, fp32/bf16/complex64 vs the torch path and dense; RandLoRA / VeRA bf16
#            4096x4096 and 4096x14336 at 16k tokens vs peft (if its wheels were carried: see
#            scripts/fetch_gpu_wheels.sh) incl. peak memory; SLTrain bf16 4096x4096 and 1024x4096
#            at 16k tokens vs the SLTrain algorithm and dense (issue #11: <= 1.1x dense), peak
#            memory; K-FAC factor update / damped inverse / eigh / preconditioning on the 48 x 256^2
#            and GPT-2-small factor sets vs the per-layer loops (issue #12: eigh >= 5x)
#            -> bench_cuda.json (one object, a key per family) / bench_cuda.log
#            GPU_CHECK_BENCHES="monarch butterfly randbasis sparse_lowrank kfac" (the default)
#            picks the families
#   cbench   the C++ CUDA microbenchmark (CUTLASS engine, no torch)  -> logs.tar.gz
# GPU_CHECK_STAGES="tests memcheck bench cbench" (the default) picks the stages after build and
# sass, so a tight device budget can split the run over two calls on the same warm machine (it
# keeps the build dir, so the second call's build is incremental), e.g.
#   GPU_CHECK_STAGES="tests memcheck bench" GPU_CHECK_BENCHES="monarch butterfly randbasis" ...
#   GPU_CHECK_STAGES="bench cbench" GPU_CHECK_BENCHES="sparse_lowrank kfac" ...
# At most 8 files are left in OUTDIR: summary.txt env.txt sass.txt pytest_cuda.log
# bench_cuda.log bench_cuda.json memcheck.log logs.tar.gz (everything else is tarred).
#
# Needs there: python3 with torch (CUDA build), nvcc of torch's CUDA major, cmake >= 3.26, ninja,
# pybind11, scikit-build-core, pytest.  CUTLASS headers: carry .whl/ from
# scripts/fetch_gpu_wheels.sh.  STRUCTOPS_CUDA_ARCHS defaults to the GPU's own arch.
set -uo pipefail
out=${1:-gpu_out}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
DRY=${GPU_CHECK_DRY:-0}
if [ "$DRY" = 1 ]; then
  PY=${PYTHON:-.venv/bin/python}
  BUILD_DIR=${GPU_CHECK_BUILD_DIR:-build/dev}
else
  PY=${PYTHON:-python3}
  BUILD_DIR=${GPU_CHECK_BUILD_DIR:-build/gpu}
fi
t0=$(date +%s)
stages=${GPU_CHECK_STAGES:-tests memcheck bench cbench}
stage() { case " $stages " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
log() { echo "[gpu_check $(( $(date +%s) - t0 ))s] $*" | tee -a "$out/summary.txt"; }
: > "$out/summary.txt"
log "start (dry=$DRY, python $PY, build dir $BUILD_DIR)"

# ---- env ----------------------------------------------------------------------------------
{
  date -u; uname -a
  nvidia-smi 2>&1 | head -20 || echo "nvidia-smi: not available"
  nvcc --version 2>&1 | tail -2 || echo "nvcc: not found"
  $PY - <<'PYEOF'
import importlib, importlib.metadata as md, sys
print("python", sys.version.split()[0])
for name in ("torch", "numpy", "pytest", "cmake", "ninja", "pybind11", "scikit-build-core", "nvidia-cutlass"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "not installed")
import torch
print("torch cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, "cc", f"{p.major}.{p.minor}", "SMs", p.multi_processor_count, "mem GiB", round(p.total_memory / 2**30))
PYEOF
  command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || echo "compute-sanitizer: not found"
} > "$out/env.txt" 2>&1
log "env: $(grep -E '^(torch|device) ' "$out/env.txt" | tr '\n' ' ')"

# carried wheels (nvidia-cutlass headers, anything else missing there)
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/structops-site .whl/*.whl \
    && export PYTHONPATH=/tmp/structops-site${PYTHONPATH:+:$PYTHONPATH}
fi

have_gpu=$($PY -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
if [ "$DRY" != 1 ] && [ "$have_gpu" != 1 ]; then
  log "no GPU visible to torch: run with GPU_CHECK_DRY=1 for the GPU-free stages"; exit 1
fi
if [ -z "${STRUCTOPS_CUDA_ARCHS:-}" ]; then
  if [ "$have_gpu" = 1 ]; then
    cc=$($PY -c "import torch; m,n=torch.cuda.get_device_capability(); print(f'{m}{n}')")
    case "$cc" in 90) STRUCTOPS_CUDA_ARCHS="90a-real" ;; *) STRUCTOPS_CUDA_ARCHS="${cc}-real" ;; esac
  else
    STRUCTOPS_CUDA_ARCHS="80;90a-real"
  fi
fi
export STRUCTOPS_CUDA=ON STRUCTOPS_CUDA_ARCHS
sass_arch=$(echo "$STRUCTOPS_CUDA_ARCHS" | tr ';' '\n' | sed -E 's/-real|-virtual//; s/^/sm_/' | tr '\n' ' ')

# ---- build --------------------------------------------------------------------------------
extra=()
cmake_ok=$($PY -c "import cmake; v=tuple(int(x) for x in cmake.__version__.split('.')[:3]); print(int(v >= (3,31,9)))" 2>/dev/null || echo 0)
[ "$cmake_ok" = 1 ] || extra+=("-Ccmake.version=>=3.26")
if timeout 420 $PY -m pip install --no-build-isolation --no-deps -v -e . -Cbuild-dir="$BUILD_DIR" \
     -Ccmake.define.STRUCTOPS_CUDA=ON -Ccmake.define.STRUCTOPS_BUILD_BENCH=ON "${extra[@]}" > "$out/build.log" 2>&1; then
  log "build ok (archs $STRUCTOPS_CUDA_ARCHS)"
else
  log "BUILD FAILED (build.log in logs.tar.gz)"; tail -30 "$out/build.log"
  tar -C "$out" -czf "$out/logs.tar.gz" build.log && rm -f "$out/build.log"; exit 1
fi
$PY -c "import structops, json; print(json.dumps(structops.build_info()))" >> "$out/summary.txt" 2>&1

# ---- sass ---------------------------------------------------------------------------------
sass_args=()
for a in $sass_arch; do sass_args+=(--arch "$a"); done
if timeout 120 $PY scripts/check_sass.py "${sass_args[@]}" > "$out/sass.txt" 2>&1; then
  log "sass: $(tail -1 "$out/sass.txt")"
else
  log "sass: FAILED or tools missing: $(tail -1 "$out/sass.txt")"
fi

# ---- tests --------------------------------------------------------------------------------
export PYTHONUNBUFFERED=1
if stage tests; then
STRUCTOPS_TEST_TIMEOUT=60 timeout 300 $PY -m pytest -q -x -m cuda tests/test_cuda.py tests/test_butterfly_cuda.py tests/test_randbasis_cuda.py tests/test_sparse_lowrank_cuda.py tests/test_kfac_cuda.py -p no:cacheprovider \
  > "$out/pytest_cuda.log" 2>&1
log "cuda tests (exit $?): $(tail -1 "$out/pytest_cuda.log")"
fi

# ---- memcheck -----------------------------------------------------------------------------
san=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
if ! stage memcheck; then
  :
elif [ "$have_gpu" = 1 ] && [ -n "$san" ]; then
  timeout 180 "$san" --tool memcheck --error-exitcode 3 $PY scripts/gpu_sanitize_case.py > "$out/memcheck.log" 2>&1
  log "memcheck (exit $?): $(grep -E 'ERROR SUMMARY' "$out/memcheck.log" | tail -1)"
else
  timeout 60 $PY scripts/gpu_sanitize_case.py > "$out/memcheck.log" 2>&1
  log "memcheck: skipped (gpu=$have_gpu, sanitizer=${san:-none}); the case ran plain: exit $?"
fi

# ---- bench --------------------------------------------------------------------------------
benches=${GPU_CHECK_BENCHES:-monarch butterfly randbasis sparse_lowrank kfac}
stage bench || benches=""
bench_fail=0
# run_bench FAMILY TIMEOUT SCRIPT ARGS...: one family's GPU benchmark (JSON to bench_FAMILY_cuda.json,
# table appended to bench_cuda.log).  Dry (no GPU): the same command line runs up to its "no CUDA
# device" exit, which proves the script parses these arguments; anything else fails the check.
run_bench() {
  local fam=$1 limit=$2; shift 2
  case " $benches " in *" $fam "*) ;; *) return 0 ;; esac
  if [ "$have_gpu" = 1 ]; then
    timeout "$limit" $PY "$@" --json "$out/bench_${fam}_cuda.json" >> "$out/bench_cuda.log" 2>&1
    log "python $fam bench (exit $?)"
  else
    local msg
    msg=$(timeout 120 $PY "$@" --json "$out/bench_${fam}_cuda.json" 2>&1)
    if grep -q "no CUDA device" <<<"$msg"; then
      echo "$fam: command line accepted (no GPU)" >> "$out/bench_cuda.log"
    else
      log "BENCH $fam: the GPU command line fails before the device check: $(tail -2 <<<"$msg" | tr '\n' ' ')"
      bench_fail=1
    fi
  fi
}
: > "$out/bench_cuda.log"
[ "$have_gpu" = 1 ] || echo "no GPU: the benchmarks need one; their command lines were checked" >> "$out/bench_cuda.log"
run_bench monarch 240 bench/bench_monarch.py --device cuda --dtype bfloat16 --cases 16384:4096:4,16384:4096:64,65536:1024:32
run_bench butterfly 150 bench/bench_butterfly.py --device cuda \
  --cases 64:1024:float32:1,64:1024:bfloat16:1,2048:1024:float32:1,2048:4096:bfloat16:1,2048:1024:complex64:1
run_bench randbasis 150 bench/bench_randbasis.py --device cuda --dtype bfloat16 --cases 4096:4096:16384,4096:14336:16384
run_bench sparse_lowrank 120 bench/bench_sparse_lowrank.py --device cuda --dtype bfloat16 \
  --cases 4096:4096:16384:128:0.03,1024:4096:16384:128:0.03
run_bench kfac 150 bench/bench_kfac.py --device cuda
if [ "$have_gpu" = 1 ]; then
  # one JSON file for every family (at most 8 files come back)
  $PY - "$out" $benches <<'PYEOF'
import json, os, sys
out, fams = sys.argv[1], sys.argv[2:]
merged = {}
for fam in fams:
    p = os.path.join(out, f"bench_{fam}_cuda.json")
    merged[fam] = json.load(open(p)) if os.path.exists(p) else {}
    if os.path.exists(p):
        os.remove(p)
json.dump(merged, open(os.path.join(out, "bench_cuda.json"), "w"), indent=1)
PYEOF
  # the headline rows of every table into the summary
  grep -E "structops\[|vs dense|x  loop|x  torch chain|x  cat|^ *[0-9]+ +[0-9]+ +[0-9]+ +[0-9]+ +0\.[0-9]+ " \
    "$out/bench_cuda.log" | tee -a "$out/summary.txt" >/dev/null
else
  log "bench: skipped (no GPU); command lines checked for: $benches (failed: $bench_fail)"
fi
bench_bin="$BUILD_DIR/bench/cpp/bench_monarch_cuda"
if ! stage cbench; then
  :
elif [ -x "$bench_bin" ]; then
  timeout 120 "$bench_bin" 16384 4096 4 16384 4096 64 65536 1024 32 > "$out/bench_cuda_cpp.jsonl" 2>&1
  log "C++ bench (exit $?): $(head -c 300 "$out/bench_cuda_cpp.jsonl")"
else
  log "C++ bench: $bench_bin was not built"
fi

# ---- at most 8 files ----------------------------------------------------------------------
keep="summary.txt env.txt sass.txt pytest_cuda.log bench_cuda.log bench_cuda.json memcheck.log logs.tar.gz"
extra_files=()
for f in "$out"/*; do
  b=$(basename "$f")
  case " $keep " in *" $b "*) ;; *) extra_files+=("$b") ;; esac
done
log "done in $(( $(date +%s) - t0 )) s"
if [ ${#extra_files[@]} -gt 0 ]; then
  tar -C "$out" -czf "$out/logs.tar.gz" "${extra_files[@]}" && (cd "$out" && rm -rf "${extra_files[@]}")
fi
n=$(ls "$out" | wc -l)
if [ "$n" -gt 8 ]; then echo "gpu_check: $n files in $out (max 8)" >&2; exit 1; fi
if [ "$bench_fail" != 0 ]; then echo "gpu_check: a benchmark command line is broken (summary.txt)" >&2; exit 1; fi
exit 0
