"""RandLoRA / VeRA ops on CUDA (marked `cuda`: skipped without a GPU; scripts/gpu_check.sh runs
them).  The same ATen orchestration as the CPU on cuBLAS: every strategy and orientation against
the float64 CPU reference, bf16 under the low-precision rule, the memory contract, a NaN-poisoned
realistic size, the peft golden comparison on the GPU, and torch.compile."""

import pytest
import torch

import structops
from structops import reference

pytestmark = pytest.mark.cuda

SHAPES = [(64, 96, 8), (96, 64, 8), (100, 100, 7), (512, 1408, 32), (1408, 512, 32)]


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def args(i, o, r, T, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    d_min, d_max = min(i, o), max(i, o)
    n = -(-d_min // r)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return [mk(T, i), mk(o, i) / i**0.5, mk(o), mk(r, d_min), mk(d_max, r * n), mk(r, n) / r, mk(n, d_min) / d_min]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("strategy", ["factored", "merged", "auto"])
@pytest.mark.parametrize("shape", SHAPES)
def test_randlora_cuda_vs_reference(shape, strategy, dtype):
    i, o, r = shape
    a64 = args(i, o, r, 257, dtype)
    x, w, b, A, B, lam, gam = [t.requires_grad_(k in (0, 5, 6)) for k, t in enumerate(a64)]
    yr = reference.randlora_linear(x, w, b, A, B, lam, gam, 2.0)
    gr = torch.autograd.grad(yr.square().sum(), (x, lam, gam))
    dev = [t.detach().cuda().to(dtype) for t in a64]
    xd = dev[0].requires_grad_()
    ld, gd = dev[5].float().requires_grad_(), dev[6].float().requires_grad_()
    y = structops.randlora_linear(xd, dev[1], dev[2], dev[3], dev[4], ld, gd, 2.0, strategy)
    gs = torch.autograd.grad(y.float().square().sum(), (xd, ld, gd))
    tol = 2e-4 if dtype == torch.float32 else 5e-2  # fp32: TF32 may be on
    assert rel(y, yr) < tol
    for a, c in zip(gs, gr):
        assert rel(a, c) < tol * 5


@pytest.mark.parametrize("strategy", ["factored", "merged"])
def test_vera_cuda_vs_reference(strategy):
    i, o, r = 512, 1408, 256
    g = torch.Generator().manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    cpu = [mk(300, i), mk(o, i) / i**0.5, mk(o), mk(r, i) / i**0.5, mk(o, r) / r**0.5, mk(r), mk(o)]
    x, w, b, A, B, ld, lb = [t.requires_grad_(k in (0, 5, 6)) for k, t in enumerate(cpu)]
    yr = reference.vera_linear(x, w, b, A, B, ld, lb)
    gr = torch.autograd.grad(yr.square().sum(), (x, ld, lb))
    dev = [t.detach().cuda().float() for t in cpu]
    for k in (0, 5, 6):
        dev[k].requires_grad_()
    y = structops.vera_linear(*dev, strategy)
    gs = torch.autograd.grad(y.square().sum(), (dev[0], dev[5], dev[6]))
    assert rel(y, yr) < 2e-4
    for a, c in zip(gs, gr):
        assert rel(a, c) < 1e-3


def test_nan_poisoned_outputs_are_overwritten():
    """Realistic size: every output element is written (a NaN-filled caching allocator block
    must not leak through)."""
    big = torch.full((64 << 20,), float("nan"), device="cuda")
    del big
    i, o, r, T = 1024, 2816, 32, 4096
    dev = [t.cuda().to(torch.bfloat16) for t in args(i, o, r, T, torch.bfloat16)]
    for s in ("factored", "merged"):
        y = structops.randlora_linear(*dev, 20.0, s)
        assert torch.isfinite(y).all()


def test_saves_no_fp32_copy_and_no_scaled_basis():
    dev = [t.cuda().to(torch.bfloat16) for t in args(256, 512, 16, 64, torch.bfloat16)]
    x = dev[0].requires_grad_()
    lam, gam = dev[5].float().requires_grad_(), dev[6].float().requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        structops.randlora_linear(x, dev[1], dev[2], dev[3], dev[4], lam, gam, 1.0)
    owned = {t.data_ptr() for t in (x, dev[1], dev[3], dev[4], lam, gam)}
    assert [tuple(t.shape) for t in saved if t.data_ptr() not in owned] == []


def test_peft_golden_on_cuda():
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    m = peft.get_peft_model(torch.nn.Sequential(torch.nn.Linear(64, 96)).cuda(),
                            peft.RandLoraConfig(r=8, target_modules=["0"]))
    for p in m.parameters():
        if p.requires_grad:
            p.data.normal_()
    x = torch.randn(33, 64, device="cuda")
    y0 = m(x)
    structops.compat.peft.accelerate(m)
    assert rel(m(x), y0) < 2e-4


def test_compile_cuda():
    dev = [t.cuda().float() for t in args(64, 96, 8, 16, torch.float32)]
    lam, gam = dev[5].requires_grad_(), dev[6].requires_grad_()
    f = lambda lam, gam: structops.randlora_linear(dev[0], dev[1], dev[2], dev[3], dev[4], lam, gam, 2.0).sum()  # noqa: E731
    cf = torch.compile(f, fullgraph=True)
    assert rel(cf(lam, gam), f(lam, gam)) < 1e-5
