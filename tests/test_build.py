"""Import, build information and the CPU kernel variant selection."""

import os
import subprocess
import sys

import torch

import structops


def test_build_info():
    info = structops.build_info()
    for key in ("version", "torch_version", "with_cuda", "cuda_archs", "cpu_isas_compiled", "cpu_isas_available",
                "cpu_isa_in_use"):
        assert key in info
    assert info["cpu_isa_in_use"] in info["cpu_isas_available"].split(",")
    assert "generic" in info["cpu_isas_compiled"].split(",")
    if info["with_cuda"]:
        archs = info["cuda_archs"].split(",")
        assert "80" in archs[0]


def test_ops_registered():
    for name in ("blockdiag_matmul", "blockdiag_matmul_backward", "monarch_matmul", "monarch_matmul_fwd",
                 "monarch_matmul_backward"):
        assert hasattr(torch.ops.structops, name)


def test_isa_env_selects_variant():
    code = "import structops; print(structops._C.cpu_isa())"
    available = structops.build_info()["cpu_isas_available"].split(",")
    for isa in available:
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "STRUCTOPS_CPU_ISA": isa},
                             capture_output=True, text=True, check=True)
        assert out.stdout.strip() == isa
    # an unknown request falls back to the best variant instead of failing
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "STRUCTOPS_CPU_ISA": "nonsense"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == available[0]


def test_import_without_gpu_in_fresh_process():
    code = "import torch, structops; print(torch.ops.structops.monarch_matmul.default.name())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ,
                         "CUDA_VISIBLE_DEVICES": ""})
    assert out.returncode == 0 and out.stdout.strip() == "structops::monarch_matmul", out.stderr
