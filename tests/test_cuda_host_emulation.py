"""The CUDA kernels' host orchestration, checked without a GPU.

tests/cpp/cuda_host_emulation.cpp links csrc/cuda/monarch_cuda.cpp against host stand-ins of
the device primitives (strided GEMM with the documented stride semantics, split reduction) and
compares forward and all gradients with the Monarch formulas: every stride, batch, token split
and workspace offset of the CUDA path is exercised.  Needs g++ and the CUDA runtime headers."""

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
           f"{ROOT}/tests/cpp/cuda_host_emulation.cpp", f"{ROOT}/csrc/cuda/monarch_cuda.cpp", "-o", str(exe)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("ok  ") == 14, out.stdout
