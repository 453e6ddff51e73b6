"""sparse_lowrank_linear on CUDA (marked `cuda`: skipped without a GPU; scripts/gpu_check.sh runs
them): the ATen sparse engine (cuSPARSE SpMM / SDDMM) plus cuBLAS against the float64 CPU
reference, bf16 under the low-precision rule, bad support errors, and torch.compile."""

import pytest
import torch

import structops
from structops import reference
from structops.nn.sltrain import random_support

pytestmark = [pytest.mark.cuda, pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")]


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(300, 96, 160, 8, 0.05), (4096, 1024, 1024, 128, 0.03)])
def test_cuda_vs_reference(shape, dtype):
    T, i, o, r, d = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(T, i, generator=g, dtype=torch.float64)
    B = torch.randn(o, r, generator=g, dtype=torch.float64) * 0.1
    A = torch.randn(r, i, generator=g, dtype=torch.float64) / i**0.5
    idx = random_support(o, i, d, g)
    v = torch.randn(idx.numel(), generator=g, dtype=torch.float64)
    cpu = [t.requires_grad_() for t in (x, B, A, v)]
    yr = reference.sparse_lowrank_linear(cpu[0], cpu[1], cpu[2], cpu[3], idx, 0.5)
    gr = torch.autograd.grad(yr.square().sum(), cpu)
    dev = [t.detach().cuda().to(dtype).requires_grad_() for t in (x, B, A, v)]
    y = structops.sparse_lowrank_linear(dev[0], dev[1], dev[2], dev[3], idx.cuda(), 0.5)
    gs = torch.autograd.grad(y.float().square().sum(), dev)
    tol = 2e-4 if dtype == torch.float32 else 5e-2
    assert rel(y, yr) < tol
    for a, c in zip(gs, gr):
        assert rel(a, c) < 5 * tol


def test_cuda_bad_support():
    x = torch.randn(4, 8, device="cuda")
    B, A = torch.randn(6, 2, device="cuda"), torch.randn(2, 8, device="cuda")
    idx = torch.tensor([3, 3, 9], dtype=torch.int32, device="cuda")
    with pytest.raises(ValueError, match="strictly increasing"):
        structops.sparse_lowrank_linear(x, B, A, torch.randn(3, device="cuda"), idx, 1.0)


def test_cuda_compile():
    x = torch.randn(16, 32, device="cuda")
    B = torch.randn(24, 4, device="cuda", requires_grad=True)
    A = torch.randn(4, 32, device="cuda", requires_grad=True)
    idx = random_support(24, 32, 0.1).cuda()
    v = torch.randn(idx.numel(), device="cuda", requires_grad=True)
    f = lambda B, A, v: structops.sparse_lowrank_linear(x, B, A, v, idx, 0.5).sum()  # noqa: E731
    assert rel(torch.compile(f, fullgraph=True)(B, A, v), f(B, A, v)) < 1e-5
