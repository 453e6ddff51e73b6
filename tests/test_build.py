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


def _variant_calls_during(fn):
    before = structops._C.cpu_variant_kernel_calls()
    fn()
    return structops._C.cpu_variant_kernel_calls() - before


def test_every_isa_variant_kernel_call_is_counted():
    """`make test`'s later passes skip the tests the first pass saw call no ISA-variant kernel
    (tests/conftest.py), so a family whose dispatch is not counted would lose its coverage of the
    other variants without anyone noticing.  Forward and backward of every family with variant
    kernels must move the counter; pure-torch work must not."""
    from structops.nn.sltrain import random_support

    x = torch.randn(8, 16, requires_grad=True)
    w1, w2 = torch.randn(4, 4, 4, requires_grad=True), torch.randn(4, 4, 4, requires_grad=True)
    tw = torch.randn(1, 1, 4, 8, 2, 2, requires_grad=True)
    xb = torch.randn(8, 1, 16, requires_grad=True)
    B, A = torch.randn(16, 2, requires_grad=True), torch.randn(2, 16, requires_grad=True)
    idx = random_support(16, 16, 0.25, torch.Generator().manual_seed(0))
    v = torch.randn(idx.numel(), requires_grad=True)
    cases = {
        "monarch": lambda: structops.monarch_matmul(x, w1, w2),
        "butterfly": lambda: structops.butterfly_multiply(tw, xb, True, 16),
        "sparse_lowrank": lambda: structops.sparse_lowrank_linear(x, B, A, v, idx, 0.5),
    }
    old = os.environ.pop("STRUCTOPS_SPARSE_KERNEL", None)  # the CPU's own sparse kernels
    try:
        for family, op in cases.items():
            out = []
            assert _variant_calls_during(lambda: out.append(op())) > 0, f"{family} forward"
            assert _variant_calls_during(lambda: out[0].sum().backward()) > 0, f"{family} backward"
    finally:
        if old is not None:
            os.environ["STRUCTOPS_SPARSE_KERNEL"] = old
    assert _variant_calls_during(lambda: (x @ x.T).sum().backward()) == 0
