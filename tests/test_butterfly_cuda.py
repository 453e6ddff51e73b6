"""butterfly_multiply on CUDA (marked `cuda`: skipped without a GPU; scripts/gpu_check.sh runs
them).  Every dtype against the float64 reference, single- and multi-pass sizes, several stacks
and blocks, determinism of the twiddle gradient, NaN-poisoned outputs at realistic sizes, the
CUDA-only dtype errors, torch.compile and CUDA graphs."""

import pytest
import torch

import structops
from structops import reference

pytestmark = pytest.mark.cuda

# (batch, nstacks, nblocks, log_n, in_size, out_size, increasing): single pass, padding/trimming,
# stacks and blocks, and n = 8192 / 16384 (more than one pass over shared-memory windows).
CASES = [
    (64, 1, 1, 10, 1024, None, True),
    (37, 2, 3, 7, 100, 90, False),
    (300, 3, 2, 5, 40, 16, True),
    (16, 1, 1, 13, 8192, None, True),
    (8, 1, 2, 14, 16384, 10000, False),
]
TOL = {torch.float32: 1e-5, torch.complex64: 1e-5, torch.bfloat16: 3e-2, torch.float16: 5e-3}


def make(batch, nstacks, nblocks, log_n, in_size, dtype):
    n = 1 << log_n
    tw = torch.randn(nstacks, nblocks, log_n, n // 2, 2, 2, device="cuda") / 2**0.5
    x = torch.randn(batch, nstacks, in_size, device="cuda")
    if dtype.is_complex:
        tw = torch.complex(tw, torch.randn_like(tw) / 2**0.5) / 2**0.5
        x = x.to(dtype)
    return tw.to(dtype), x.to(dtype)


def rel(a, b):
    return ((a.to(b.dtype) - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.complex64])
def test_matches_float64_reference(case, dtype):
    batch, nstacks, nblocks, log_n, in_size, out, inc = case
    tw, x = make(batch, nstacks, nblocks, log_n, in_size, dtype)
    tw.requires_grad_()
    x.requires_grad_()
    y = structops.butterfly_multiply(tw, x, inc, out)
    wide = torch.complex128 if dtype.is_complex else torch.float64
    tw64, x64 = tw.detach().to(wide).requires_grad_(), x.detach().to(wide).requires_grad_()
    y64 = reference.butterfly_multiply(tw64, x64, inc, out)
    assert y.dtype == dtype and y.shape == y64.shape
    assert rel(y, y64) < TOL[dtype]
    g = torch.randn_like(y64)
    got = torch.autograd.grad(y, (tw, x), g.to(dtype))
    want = torch.autograd.grad(y64, (tw64, x64), g)
    for a, b in zip(got, want):
        assert rel(a, b) < 4 * TOL[dtype]


def test_dx_only_and_twiddle_only():
    tw, x = make(50, 2, 2, 12, 4096, torch.float32)
    g = torch.randn(50, 2, 4096, device="cuda")
    tw64, x64 = tw.double().requires_grad_(), x.double().requires_grad_()
    want = torch.autograd.grad(reference.butterfly_multiply(tw64, x64), (tw64, x64), g.double())
    (dx,) = torch.autograd.grad(structops.butterfly_multiply(tw, x.requires_grad_()), (x,), g)
    (dt,) = torch.autograd.grad(structops.butterfly_multiply(tw.requires_grad_(), x.detach()), (tw,), g)
    assert rel(dx, want[1]) < 1e-5 and rel(dt, want[0]) < 1e-4


def test_twiddle_gradient_is_deterministic():
    tw, x = make(4096, 1, 1, 10, 1024, torch.float32)
    tw.requires_grad_()
    g = torch.randn(4096, 1, 1024, device="cuda")
    a = torch.autograd.grad(structops.butterfly_multiply(tw, x), (tw,), g)[0]
    b = torch.autograd.grad(structops.butterfly_multiply(tw, x), (tw,), g)[0]
    assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_realistic_sizes_nan_poisoned(dtype):
    """Outputs are written everywhere they should be: buffers pre-filled with NaN by the caching
    allocator must not leak into results."""
    torch.cuda.empty_cache()
    poison = torch.full((64 << 20,), float("nan"), device="cuda")
    del poison
    tw, x = make(8192, 1, 2, 12, 4000, dtype)
    y = structops.butterfly_multiply(tw.requires_grad_(), x.requires_grad_(), True, 3000)
    assert torch.isfinite(y).all()
    dt, dx = torch.autograd.grad(y.float().sum(), (tw, x))
    assert torch.isfinite(dt).all() and torch.isfinite(dx).all()


def test_unsupported_cuda_dtypes_raise():
    tw, x = make(4, 1, 1, 3, 8, torch.float32)
    with pytest.raises(RuntimeError, match="not supported on CUDA"):
        structops.butterfly_multiply(tw.double(), x.double())
    with pytest.raises(RuntimeError, match="not supported on CUDA"):
        structops.butterfly_multiply(tw.to(torch.complex128), x.to(torch.complex128))


def test_layer_and_compile_on_cuda():
    layer = structops.nn.Butterfly(100, 300, nblocks=2).cuda()
    x = torch.randn(16, 100, device="cuda", requires_grad=True)
    cf = torch.compile(layer, fullgraph=True)
    y = cf(x)
    assert rel(y, layer.cpu()(x.detach().cpu()).cuda()) < 1e-5
    y.sum().backward()
    assert x.grad is not None


def test_cuda_graph_capture():
    tw, x = make(256, 1, 1, 10, 1024, torch.float32)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        structops.butterfly_multiply(tw, x)  # warm-up (workspace allocation)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = structops.butterfly_multiply(tw, x)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    assert rel(y, reference.butterfly_multiply(tw.double(), x.double())) < 1e-5


# ---- block butterfly on the GEMM engine ------------------------------------------------------------
@pytest.fixture(params=["cutlass", "cublas"])
def gemm_engine(request, monkeypatch):
    monkeypatch.setenv("STRUCTOPS_CUDA_GEMM", request.param)
    return request.param


@pytest.mark.parametrize("case", [(64, 1, 1, 4, 32, 512, None, True), (300, 2, 2, 3, 16, 100, 90, False),
                                  (4096, 1, 1, 2, 64, 256, 256, True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_block_butterfly_matches_reference(case, dtype, gemm_engine):
    batch, nstacks, nblocks, log_n, bs, in_size, out, inc = case
    n = 1 << log_n
    tw = (torch.randn(nstacks, nblocks, log_n, n // 2, 2, 2, bs, bs, device="cuda") / (2 * bs) ** 0.5).to(dtype)
    x = torch.randn(batch, nstacks, in_size, device="cuda").to(dtype)
    tw.requires_grad_()
    x.requires_grad_()
    y = structops.block_butterfly_multiply(tw, x, inc, out)
    tw64, x64 = tw.detach().double().requires_grad_(), x.detach().double().requires_grad_()
    y64 = reference.block_butterfly_multiply(tw64, x64, inc, out)
    tol = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 3e-2, torch.float16: 5e-3}[dtype]
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        tol = 5e-3
    assert rel(y, y64) < tol
    g = torch.randn_like(y64)
    got = torch.autograd.grad(y, (tw, x), g.to(dtype))
    want = torch.autograd.grad(y64, (tw64, x64), g)
    for a, b in zip(got, want):
        assert rel(a, b) < 4 * tol


def test_block_butterfly_complex_is_cpu_only():
    tw = torch.randn(1, 1, 2, 2, 2, 2, 4, 4, device="cuda", dtype=torch.complex64)
    with pytest.raises(RuntimeError, match="complex"):
        structops.block_butterfly_multiply(tw, torch.randn(3, 1, 16, device="cuda", dtype=torch.complex64))
