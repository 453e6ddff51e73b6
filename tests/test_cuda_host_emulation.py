"""The host side of the CUDA path, checked without a GPU.

tests/cpp/cuda_host_emulation.cpp links csrc/cuda/monarch_cuda.cpp (Monarch orchestration),
csrc/cuda/block_butterfly_cuda.cpp (block butterfly on the engine), csrc/cuda/kfac_cuda.cpp (the K-FAC
factor update's block GEMMs) and
csrc/cuda/gemm/gemm_dispatch.cpp (the GEMM engine's kernel selection) against host stand-ins of
the device kernels (batched GEMM with the documented layout semantics, row transpose, split
reduction) and compares forward and all gradients with the Monarch formulas: every layout,
leading dimension, batch stride, transpose, token split and workspace offset of the CUDA path is
exercised, with the CUTLASS and the cuBLAS engine.  It also checks the kernel selection rules
(alignment fallbacks, TF32 permission, tile choice) and which kernel family each case ran, and
runs the row-transpose kernel's tiling and per-CTA phases (transpose_plan.h) for every CTA and
thread on the CPU.
Needs g++ and the CUDA runtime headers."""

import glob
import os
import shutil
import subprocess
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cuda_include():
    candidates = [os.environ.get("CUDA_HOME", ""), "/usr/local/cuda"]
    site = sysconfig.get_paths()["purelib"]
    candidates += glob.glob(os.path.join(site, "nvidia", "cu*")) + [os.path.join(site, "nvidia", "cuda_runtime")]
    for c in candidates:
        inc = os.path.join(c, "include")
        if c and os.path.exists(os.path.join(inc, "cuda_runtime_api.h")):
            return inc
    return None


def test_cuda_orchestration_on_host(tmp_path):
    cxx = shutil.which("g++") or shutil.which("c++")
    inc = _cuda_include()
    if cxx is None or inc is None:
        pytest.skip(f"needs a C++ compiler ({cxx}) and cuda_runtime_api.h ({inc})")
    exe = tmp_path / "emulation"
    cmd = [cxx, "-std=c++20", "-O1", f"-I{ROOT}/csrc/include", f"-I{ROOT}/csrc/cuda", f"-I{inc}",
           f"{ROOT}/tests/cpp/cuda_host_emulation.cpp", f"{ROOT}/csrc/cuda/monarch_cuda.cpp",
           f"{ROOT}/csrc/cuda/block_butterfly_cuda.cpp", f"{ROOT}/csrc/cuda/kfac_cuda.cpp",
           f"{ROOT}/csrc/cpu/kfac_plan.cpp", f"{ROOT}/csrc/cuda/gemm/gemm_dispatch.cpp", "-o", str(exe)]
    build = subprocess.run(cmd, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "FAIL" not in out.stdout, out.stdout
    # 13 selection checks + token splits + 24 transpose tilings + unregistered cuBLAS + 14 cases x (save v, recompute)
    # + 5 block-butterfly cases (forward, full backward, dx-only backward each) + 5 K-FAC factor-update cases
    assert out.stdout.count("ok  ") == 13 + 1 + 24 + 1 + 28 + 5 + 5, out.stdout


def test_butterfly_cuda_blocks_on_host(tmp_path):
    """csrc/cuda/butterfly_pass.cuh (the CUDA butterfly's per-block code, pass plans and launch
    sequencing) run on the CPU by tests/cpp/butterfly_host_emulation.cpp: single- and multi-pass
    plans (fake shared-memory limits), real and complex, forward, dx-only and twiddle-gradient
    backward, against a direct evaluation of the semantics."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("needs a C++ compiler")
    exe = tmp_path / "butterfly_emulation"
    cmd = [cxx, "-std=c++20", "-O1", "-Wall", f"-I{ROOT}/csrc/include", f"-I{ROOT}/csrc/cuda",
           f"{ROOT}/tests/cpp/butterfly_host_emulation.cpp", "-o", str(exe)]
    build = subprocess.run(cmd, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "FAIL" not in out.stdout and out.stdout.count("ok  ") == 10, out.stdout
    assert "passes fwd 7 grad 10" in out.stdout  # the multi-pass plans really ran
