# structops developer entry points.  Every target creates .venv and builds what it needs.
#
#   make bench   - build, then print the benchmark table (the main job; JSON in bench/results/)
#   make test    - build, then run the test suite
#   make build   - create .venv and build/install the extension (editable)
#   make bench-cpp - build and run the standalone C++ (and CUDA) microbenchmarks
#   make wheel   - build dist/structops-*.whl (pins the torch it was compiled against)
#
# Variables: STRUCTOPS_CUDA=AUTO|ON|OFF (default AUTO), STRUCTOPS_CUDA_ARCHS (default
# "80;90a-real"), PYTHON (interpreter used to create .venv), PYTEST_ARGS.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STRUCTOPS_CUDA ?= AUTO
STRUCTOPS_CUDA_ARCHS ?= 80;90a-real
export STRUCTOPS_CUDA STRUCTOPS_CUDA_ARCHS
BUILD_DIR := build/dev
PYTEST_ARGS ?=

SOURCES := CMakeLists.txt pyproject.toml $(wildcard cmake/*.cmake third_party/*.cmake) \
           $(shell find csrc python -type f \( -name '*.h' -o -name '*.cpp' -o -name '*.cu' -o -name '*.cuh' -o -name '*.inc' -o -name '*.py' \) 2>/dev/null)

.PHONY: all venv build test bench bench-cpp wheel clean distclean

all: build

$(VENV)/.deps-stamp: scripts/requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --no-cache-dir --upgrade pip >/dev/null
	$(PIP) install --no-cache-dir -r scripts/requirements-dev.txt
	$(PIP) install --no-deps nvidia-cutlass==4.2.0.0
	touch $@

venv: $(VENV)/.deps-stamp

# Editable install into .venv; the CMake build dir persists so rebuilds are incremental.  The
# stamp records the CUDA setting so switching STRUCTOPS_CUDA rebuilds.
$(VENV)/.build-stamp-$(STRUCTOPS_CUDA): $(VENV)/.deps-stamp $(SOURCES)
	rm -f $(VENV)/.build-stamp-*
	$(PIP) install --no-build-isolation --no-deps -e . -Cbuild-dir=$(BUILD_DIR) -Ccmake.define.STRUCTOPS_CUDA=$(STRUCTOPS_CUDA)
	$(PY) -c "import structops, json; print(json.dumps(structops.build_info()))"
	touch $@

build: $(VENV)/.build-stamp-$(STRUCTOPS_CUDA)

# The suite runs once per compiled CPU kernel variant, each forced with STRUCTOPS_CPU_ISA (the
# conftest checks the forced variant is the one in use); variants this CPU cannot run are
# reported and skipped.  Nothing may depend on one CPU's rounding.  The packaging tests
# (wheel build + fresh-venv install), the multi-process torch.distributed tests and the
# end-to-end example runs do not depend on the variant and run in the first pass only.  Later
# passes also leave out every test the first pass saw call no ISA-variant kernel (pure-torch
# code: its result cannot change with the variant; tests/conftest.py keeps the record, per test
# and per shared fixture, in $(VARIANT_RECORD)).
VARIANT_RECORD := build/test-variant-calls.json
test: build
	@set -e; avail=$$($(PY) -c "import structops; print(structops.build_info()['cpu_isas_available'])"); \
	first=1; rm -f $(VARIANT_RECORD); \
	for isa in $$($(PY) -c "import structops; print(' '.join(structops.build_info()['cpu_isas_compiled'].split(',')))"); do \
	  case ",$$avail," in \
	    *,$$isa,*) \
	      if [ $$first = 1 ]; then sel="not slow"; rec="STRUCTOPS_TEST_VARIANT_RECORD=$(VARIANT_RECORD)"; \
	      else sel="not slow and not packaging and not distributed and not example"; rec="STRUCTOPS_TEST_VARIANT_ONLY=$(VARIANT_RECORD)"; fi; \
	      echo "=== make test: STRUCTOPS_CPU_ISA=$$isa (-m '$$sel', $$rec) ==="; \
	      env $$rec STRUCTOPS_CPU_ISA=$$isa $(PY) -m pytest -q -m "$$sel" $(PYTEST_ARGS); first=0 ;; \
	    *) echo "=== make test: skipping STRUCTOPS_CPU_ISA=$$isa: this CPU does not support it (available: $$avail) ===" ;; \
	  esac; \
	done

bench: build
	$(PY) bench/bench_monarch.py --json bench/results/monarch.json
	$(PY) bench/bench_butterfly.py --json bench/results/butterfly.json
	$(PY) bench/bench_randbasis.py --json bench/results/randbasis.json
	$(PY) bench/bench_sparse_lowrank.py --json bench/results/sparse_lowrank.json
	$(PY) bench/bench_kfac.py --json bench/results/kfac.json
	$(PY) -m structops.finetune.bench --json bench/results/finetune.json --png bench/results/finetune.png

bench-cpp: build
	$(VENV)/bin/cmake -S . -B build/bench -G Ninja -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV))/bin/ninja \
	  -DPython_EXECUTABLE=$(abspath $(PY)) -DSTRUCTOPS_BUILD_PYTHON=OFF -DSTRUCTOPS_BUILD_BENCH=ON \
	  -DSTRUCTOPS_CUDA=$(STRUCTOPS_CUDA) "-DSTRUCTOPS_CUDA_ARCHS=$(STRUCTOPS_CUDA_ARCHS)"
	$(VENV)/bin/cmake --build build/bench
	build/bench/bench/cpp/bench_monarch_cpu
	build/bench/bench/cpp/bench_butterfly_cpu
	build/bench/bench/cpp/bench_sparse_lowrank_cpu
	if [ -x build/bench/bench/cpp/bench_monarch_cuda ]; then build/bench/bench/cpp/bench_monarch_cuda; fi

# A wheel of the extension in dist/, built against .venv's torch (its metadata pins
# torch==X.Y.*); reuses the build dir of `make build`, so it only re-links.
wheel: build
	$(PIP) wheel --no-build-isolation --no-deps . -w dist -Cbuild-dir=$(BUILD_DIR) -Ccmake.define.STRUCTOPS_CUDA=$(STRUCTOPS_CUDA)
	@ls -la dist/*.whl

clean:
	rm -rf build dist $(VENV)/.build-stamp-*

distclean: clean
	rm -rf $(VENV)
