"""CUDA kernels (marked `cuda`: skipped without a GPU; scripts/gpu_check.sh runs them).

Every numerical test runs with both GEMM engines (STRUCTOPS_CUDA_GEMM=cutlass: structops'
tensor-core kernels; cublas: ATen/cuBLAS), and fp32 with and without TF32.

Low-precision tolerance (DESIGN §6): err(kernel) <= 2 * err(reference run in the same dtype)
+ eps, errors measured against a float64 CPU reference."""

import os

import pytest
import torch

import structops
from structops import reference
from structops.nn import MonarchLinear

pytestmark = pytest.mark.cuda


@pytest.fixture(params=["cutlass", "cublas"], autouse=True)
def engine(request):
    old = os.environ.get("STRUCTOPS_CUDA_GEMM")
    os.environ["STRUCTOPS_CUDA_GEMM"] = request.param
    yield request.param
    if old is None:
        os.environ.pop("STRUCTOPS_CUDA_GEMM", None)
    else:
        os.environ["STRUCTOPS_CUDA_GEMM"] = old


@pytest.fixture(params=[False, True], ids=["exact_fp32", "tf32"])
def tf32(request):
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = request.param
    yield request.param
    torch.backends.cuda.matmul.allow_tf32 = old

SHAPES = [(4, 4, 4, 4, 4, 4), (32, 32, 32, 32, 32, 32), (8, 24, 12, 24, 16, 8), (3, 5, 2, 5, 7, 3),
          (4, 256, 256, 4, 256, 256), (1, 6, 5, 1, 4, 6)]


def make(k, q, p, l, s, r, lead=(33,), dtype=torch.float32, device="cuda"):
    x = torch.randn(*lead, k * p, dtype=torch.float64)
    w1 = torch.randn(k, q, p, dtype=torch.float64) / p ** 0.5
    w2 = torch.randn(l, s, r, dtype=torch.float64) / r ** 0.5
    return [t.to(device=device, dtype=dtype).requires_grad_() for t in (x, w1, w2)], (x, w1, w2)


def _err(a, b):
    return (a.double().cpu() - b.double().cpu()).abs().max().item() if a.numel() else 0.0


def _grads(fn, inputs, g):
    y = fn(*inputs)
    return (y, *torch.autograd.grad(y, inputs, g.to(y.dtype)))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("recompute", [False, True])
def test_matches_reference(shape, dtype, recompute):
    # fp32 here runs exact (TF32 off: the reference comparison would otherwise measure TF32);
    # test_tf32_tolerance covers TF32.
    torch.backends.cuda.matmul.allow_tf32 = False
    (x, w1, w2), exact_inputs = make(*shape, dtype=dtype)
    exact_inputs = [t.clone().requires_grad_() for t in exact_inputs]
    g = torch.randn(33, shape[3] * shape[4], dtype=torch.float64)
    exact = _grads(reference.monarch_matmul, exact_inputs, g)
    ours = _grads(lambda a, b, c: structops.monarch_matmul(a, b, c, recompute=recompute), (x, w1, w2), g.cuda())
    low = _grads(reference.monarch_matmul, [t.detach().clone().requires_grad_() for t in (x, w1, w2)], g.cuda())
    for o, lp, e in zip(ours, low, exact):
        assert o.dtype == dtype
        assert _err(o, e) <= 2 * _err(lp, e) + (1e-10 if dtype == torch.float64 else 1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_blockdiag_matches_reference(dtype):
    (x, w1, _), _ = make(8, 24, 12, 24, 16, 8, dtype=dtype)
    y = structops.blockdiag_matmul(x, w1)
    exact = reference.blockdiag_matmul(x.double().cpu(), w1.double().cpu())
    low = reference.blockdiag_matmul(x, w1)
    assert _err(y, exact) <= 2 * _err(low, exact) + 1e-5


def test_large_batch_token_splits():
    """> 8192 tokens: weight gradients reduce over token splits (deterministic)."""
    (x, w1, w2), _ = make(16, 16, 16, 16, 16, 16, lead=(20000,))
    g = torch.randn(20000, 256, device="cuda")
    a = _grads(structops.monarch_matmul, (x, w1, w2), g)
    b = _grads(structops.monarch_matmul, (x, w1, w2), g)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    r = _grads(reference.monarch_matmul, [t.detach().double().requires_grad_() for t in (x, w1, w2)], g.double())
    for u, v in zip(a, r):
        torch.testing.assert_close(u.double(), v, rtol=1e-4, atol=1e-3)


def test_opcheck_cuda():
    (x, w1, w2), _ = make(3, 5, 2, 5, 7, 3)
    ops = torch.ops.structops
    torch.library.opcheck(ops.monarch_matmul.default, (x, w1, w2))
    torch.library.opcheck(ops.monarch_matmul_fwd.default, (x, w1, w2))
    torch.library.opcheck(ops.blockdiag_matmul.default, (x, w1))
    xd, w1d, w2d = x.detach(), w1.detach(), w2.detach()
    _, u = ops.monarch_matmul_fwd(xd, w1d, w2d)
    g = torch.randn(33, 35, device="cuda")
    torch.library.opcheck(ops.monarch_matmul_backward.default, (g, xd, w1d, w2d, u, [True, True, True]))


@pytest.mark.parametrize("dt", [torch.bfloat16, torch.float16])
def test_autocast_follows_active_dtype(dt):
    (x, w1, w2), _ = make(4, 4, 4, 4, 4, 4)
    with torch.autocast("cuda", dtype=dt):
        assert structops.monarch_matmul(x, w1, w2).dtype == dt
        assert structops.blockdiag_matmul(x, w1).dtype == dt


def test_empty_batch_and_side_stream():
    (x, w1, w2), _ = make(4, 4, 4, 4, 4, 4, lead=(0,))
    y = structops.monarch_matmul(x, w1, w2)
    gx, gw1, gw2 = torch.autograd.grad(y.sum(), (x, w1, w2))
    assert gx.shape == (0, 16) and torch.count_nonzero(gw1) == 0 and torch.count_nonzero(gw2) == 0
    (x, w1, w2), exact = make(8, 8, 8, 8, 8, 8, lead=(100,))
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        y = structops.monarch_matmul(x, w1, w2)
    s.synchronize()
    torch.testing.assert_close(y.double().cpu(), reference.monarch_matmul(*exact), rtol=1e-4, atol=1e-4)


def test_torch_compile_cuda():
    torch._dynamo.reset()
    model = MonarchLinear(256, 1024, nblocks=4).cuda()
    x = torch.randn(64, 256, device="cuda", requires_grad=True)
    compiled = torch.compile(model, fullgraph=True)
    y = compiled(x)
    torch.testing.assert_close(y, model(x))
    gx = torch.autograd.grad(y.sum(), x)[0]
    torch.testing.assert_close(gx, torch.autograd.grad(model(x).sum(), x)[0])
    # CUDA graphs: ops must use the current stream and never synchronise
    cg = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    with torch.no_grad():
        for _ in range(3):
            out = cg(x)
        torch.testing.assert_close(out, model(x))


REALISTIC = [  # (tokens, k, q, p, l, s, r): multi-tile in every dimension, k != l
    (4096, 4, 256, 256, 4, 256, 256),
    (4096, 16, 64, 64, 16, 64, 64),
    (4160, 8, 96, 128, 12, 80, 64),
]


@pytest.mark.parametrize("shape", REALISTIC)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_realistic_sizes_nan_poisoned(shape, dtype, engine):
    """bf16/fp16 at realistic sizes with the caching allocator's blocks poisoned with NaN first:
    any output element or workspace entry a kernel forgets to write shows up as NaN."""
    tokens, k, q, p, l, s, r = shape
    poison = torch.full((tokens * max(k * p, l * s, k * q) * 8,), float("nan"), device="cuda", dtype=torch.float32)
    del poison  # its block goes back to the caching allocator, NaN-filled, and is reused below
    (x, w1, w2), exact_in = make(k, q, p, l, s, r, lead=(tokens,), dtype=dtype)
    g = torch.randn(tokens, l * s, dtype=torch.float64)
    ours = _grads(structops.monarch_matmul, (x, w1, w2), g.cuda())
    low = _grads(reference.monarch_matmul, [t.detach().clone().requires_grad_() for t in (x, w1, w2)], g.cuda())
    exact = _grads(reference.monarch_matmul, [t.clone().requires_grad_() for t in exact_in], g)
    for o, lp, e in zip(ours, low, exact):
        assert not torch.isnan(o).any(), f"{engine}: unwritten (NaN) entries in an output of shape {tuple(o.shape)}"
        assert _err(o, e) <= 2 * _err(lp, e) + 1e-3


def test_tf32_tolerance(tf32, engine):
    """fp32 with TF32 allowed stays within TF32 accuracy; without it, within fp32 accuracy."""
    (x, w1, w2), exact_in = make(8, 128, 128, 8, 128, 128, lead=(1024,))
    y = structops.monarch_matmul(x, w1, w2)
    e = reference.monarch_matmul(*exact_in)
    rel = ((y.double().cpu() - e).norm() / e.norm()).item()
    assert rel < (5e-3 if tf32 else 1e-5), rel


def test_engine_env_is_validated():
    os.environ["STRUCTOPS_CUDA_GEMM"] = "fastest"
    (x, w1, w2), _ = make(4, 4, 4, 4, 4, 4)
    with pytest.raises(ValueError, match="STRUCTOPS_CUDA_GEMM must be one of auto, cutlass, cublas"):
        structops.monarch_matmul(x, w1, w2)


def test_complex_is_cpu_only():
    x = torch.randn(3, 16, dtype=torch.complex64, device="cuda")
    w = torch.randn(4, 4, 4, dtype=torch.complex64, device="cuda")
    with pytest.raises(RuntimeError, match="supported on cpu only"):
        structops.monarch_matmul(x, w, w)


def test_cuda_graph_capture(engine):
    """No host sync, no allocation outside the caching allocator: capturable as a CUDA graph."""
    (x, w1, w2), _ = make(8, 64, 64, 8, 64, 64, lead=(512,), dtype=torch.bfloat16)
    xs, a, b = x.detach(), w1.detach(), w2.detach()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            structops.monarch_matmul(xs, a, b)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = structops.monarch_matmul(xs, a, b)
    xs.copy_(torch.randn_like(xs))
    graph.replay()
    torch.testing.assert_close(out, structops.monarch_matmul(xs, a, b))
