"""butterfly_multiply on CPU: torch_butterfly semantics, gradients, shapes, dtypes, errors,
determinism; the pure-torch and dense references against each other and against
torch-structured's torch backend."""


import pytest
import torch

import structops
from structops import reference

# (batch, nstacks, nblocks, log_n, in_size, output_size, increasing_stride): one stage, odd
# batches, padding (in < n), trimming (in > n), truncated outputs, several stacks and blocks in
# both directions, n = 1 (no stages), and sizes with more rows than one tile.
CASES = [
    (5, 1, 1, 3, 8, None, True),
    (3, 1, 1, 1, 2, None, False),
    (37, 2, 3, 5, 20, 17, False),
    (17, 3, 2, 4, 40, 16, True),
    (100, 1, 1, 8, 256, None, False),
    (33, 2, 1, 10, 1000, 999, True),
    (4, 1, 4, 6, 64, 64, True),
    (6, 2, 2, 0, 1, None, True),
    (300, 1, 2, 7, 100, 50, True),
]
DTYPES = [torch.float64, torch.float32, torch.complex128, torch.complex64]


def make(batch, nstacks, nblocks, log_n, in_size, dtype=torch.float64, requires_grad=False):
    n = 1 << log_n
    tw = torch.randn(nstacks, nblocks, log_n, n // 2, 2, 2, dtype=dtype, requires_grad=requires_grad)
    x = torch.randn(batch, nstacks, in_size, dtype=dtype, requires_grad=requires_grad)
    return tw, x


def rel(a, b):
    if b.numel() == 0:
        return 0.0 if a.shape == b.shape else float("inf")
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def tol(dtype):
    return 1e-12 if dtype in (torch.float64, torch.complex128) else 2e-5


# ---- the references are right -----------------------------------------------------------------
@pytest.mark.parametrize("case", [c for c in CASES if c[3] <= 8])  # entry-by-entry oracle: n <= 256
def test_reference_matches_dense_matrix(case):
    """The gather reference equals x @ M^T with M the ordered product of the per-stage matrices
    built entry by entry from the index formula (two independent readings of the semantics)."""
    batch, nstacks, nblocks, log_n, in_size, out, inc = case
    tw, x = make(batch, nstacks, nblocks, log_n, in_size)
    m = reference.butterfly_dense(tw, inc, in_size=in_size, output_size=out)
    want = torch.einsum("bsi,soi->bso", x, m)
    assert rel(reference.butterfly_multiply(tw, x, inc, out), want) < 1e-12


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_reference_matches_torch_structured(case, dtype):
    ts = pytest.importorskip("torch_structured.butterfly.multiply")
    batch, nstacks, nblocks, log_n, in_size, out, inc = case
    tw, x = make(batch, nstacks, nblocks, log_n, in_size, dtype)
    assert rel(reference.butterfly_multiply(tw, x, inc, out), ts.butterfly_multiply_torch(tw, x, inc, out)) < 1e-12


# ---- the op ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_backward_match_reference(case, dtype):
    batch, nstacks, nblocks, log_n, in_size, out, inc = case
    tw, x = make(batch, nstacks, nblocks, log_n, in_size, dtype, requires_grad=True)
    y = structops.butterfly_multiply(tw, x, inc, out)
    y_ref = reference.butterfly_multiply(tw, x, inc, out)
    assert y.shape == y_ref.shape and y.dtype == dtype
    assert rel(y, y_ref) < tol(dtype)
    g = torch.randn_like(y_ref)
    got = torch.autograd.grad(y, (tw, x), g)
    # n = 1 has no stages: the reference never reads the (empty) twiddle
    want = torch.autograd.grad(y_ref, (tw, x), g, allow_unused=True)
    want = tuple(torch.zeros_like(t) if w is None else w for w, t in zip(want, (tw, x)))
    for a, b in zip(got, want):
        assert a.shape == b.shape
        assert rel(a, b) < tol(dtype) * 10


@pytest.mark.parametrize("case", CASES[:4])
def test_op_matches_torch_structured(case):
    ts = pytest.importorskip("torch_structured.butterfly.multiply")
    batch, nstacks, nblocks, log_n, in_size, out, inc = case
    tw, x = make(batch, nstacks, nblocks, log_n, in_size, torch.float32)
    assert rel(structops.butterfly_multiply(tw, x, inc, out), ts.butterfly_multiply_torch(tw, x, inc, out)) < 2e-5


@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[3], CASES[7]])
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_gradcheck(case, dtype):
    batch, nstacks, nblocks, log_n, in_size, out, inc = case
    batch = min(batch, 6)
    tw, x = make(batch, nstacks, nblocks, log_n, in_size, dtype, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t, v: structops.butterfly_multiply(t, v, inc, out), (tw, x))


def test_opcheck():
    for (batch, nstacks, nblocks, log_n, in_size, out, inc) in [CASES[2], CASES[3]]:
        for dtype in (torch.float32, torch.complex64):
            tw, x = make(batch, nstacks, nblocks, log_n, in_size, dtype, requires_grad=True)
            torch.library.opcheck(torch.ops.structops.butterfly_multiply, (tw, x, inc, out))
            g = torch.randn(batch, nstacks, out if out is not None else 1 << log_n, dtype=dtype)
            torch.library.opcheck(torch.ops.structops.butterfly_multiply_backward,
                                  (g, tw.detach(), x.detach(), inc, [True, True]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_rule(dtype):
    """bf16/fp16 (computed in float32 on the CPU): error vs the fp64 truth at most twice that of
    the pure-torch reference run in the same dtype, plus eps."""
    tw, x = make(64, 2, 2, 7, 128, torch.float64)
    truth = reference.butterfly_multiply(tw, x, True, None)
    twl, xl = tw.to(dtype), x.to(dtype)
    ours = structops.butterfly_multiply(twl, xl).double()
    ref_low = reference.butterfly_multiply(twl, xl).double()
    assert structops.butterfly_multiply(twl, xl).dtype == dtype
    e_ours = (ours - truth).norm() / truth.norm()
    e_ref = (ref_low - truth).norm() / truth.norm()
    assert e_ours <= 2 * e_ref + 1e-3, (e_ours, e_ref)


def test_non_contiguous_and_expanded_inputs():
    tw, x = make(20, 3, 2, 5, 40, torch.float64)
    xs = torch.randn(40, 3, 80, dtype=torch.float64)[::2, :, ::2]   # strided rows and columns
    expanded = torch.randn(20, 1, 40, dtype=torch.float64).expand(20, 3, 40)  # stack stride 0
    for inp in (xs, expanded, x.transpose(0, 1).contiguous().transpose(0, 1)):
        assert rel(structops.butterfly_multiply(tw, inp, False, 30), reference.butterfly_multiply(tw, inp, False, 30)) < 1e-12
    tnc = tw.transpose(-1, -2).contiguous().transpose(-1, -2)  # non-contiguous twiddle
    assert rel(structops.butterfly_multiply(tnc, x), reference.butterfly_multiply(tnc, x)) < 1e-12


def test_empty_batch_and_zero_outputs():
    tw, x = make(0, 2, 2, 4, 16, requires_grad=True)
    y = structops.butterfly_multiply(tw, x)
    assert y.shape == (0, 2, 16)
    y.sum().backward()
    assert torch.equal(tw.grad, torch.zeros_like(tw)) and x.grad.shape == x.shape
    tw, x = make(3, 1, 1, 3, 8, requires_grad=True)
    y = structops.butterfly_multiply(tw, x, True, 0)
    assert y.shape == (3, 1, 0)
    y.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_dx_only_and_twiddle_only_gradients():
    tw, x = make(50, 2, 3, 6, 64)
    g = torch.randn(50, 2, 64, dtype=torch.float64)
    want = torch.autograd.grad(reference.butterfly_multiply(tw.requires_grad_(), x.requires_grad_()), (tw, x), g)
    (dx,) = torch.autograd.grad(structops.butterfly_multiply(tw.detach(), x), (x,), g)
    (dt,) = torch.autograd.grad(structops.butterfly_multiply(tw, x.detach()), (tw,), g)
    assert rel(dt, want[0]) < 1e-11 and rel(dx, want[1]) < 1e-11


def test_twiddle_gradient_independent_of_thread_count():
    """Chunks of tiles are fixed by the batch, not by the thread count: bitwise equal gradients."""
    tw, x = make(2048, 1, 2, 8, 256, torch.float32, requires_grad=True)
    g = torch.randn(2048, 1, 256)
    old = torch.get_num_threads()
    try:
        res = []
        for nt in (1, 2, 3):
            torch.set_num_threads(nt)
            res.append(torch.autograd.grad(structops.butterfly_multiply(tw, x), (tw, x), g))
    finally:
        torch.set_num_threads(old)
    for r in res[1:]:
        assert torch.equal(r[0], res[0][0]) and torch.equal(r[1], res[0][1])


def test_compile_fullgraph_forward_backward():
    tw, x = make(16, 2, 2, 5, 30, torch.float32, requires_grad=True)

    def f(t, v):
        return structops.butterfly_multiply(t, v, False, 20).square().sum()

    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(cf(tw, x), (tw, x))
    want = torch.autograd.grad(f(tw, x), (tw, x))
    for a, b in zip(got, want):
        assert rel(a, b) < 1e-5


def test_double_backward_raises():
    tw, x = make(4, 1, 1, 3, 8, requires_grad=True)
    (g,) = torch.autograd.grad(structops.butterfly_multiply(tw, x).sum(), (x,), create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


def test_autocast_casts_to_the_active_dtype():
    tw, x = make(8, 1, 1, 4, 16, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = structops.butterfly_multiply(tw, x)
    assert y.dtype == torch.bfloat16


# ---- bad input -------------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors():
    tw, x = make(4, 2, 1, 3, 8)
    bm = structops.butterfly_multiply
    with pytest.raises(ValueError, match="twiddle must be a 6-D"):
        bm(tw[0], x)
    with pytest.raises(ValueError, match=r"n/2, 2, 2\) with n = 2\^log_n = 8"):
        bm(torch.randn(2, 1, 3, 5, 2, 2, dtype=torch.float64), x)   # n/2 inconsistent with log_n
    with pytest.raises(ValueError, match=r"x.shape\[1\] must equal nstacks = twiddle.shape\[0\] = 2"):
        bm(tw, x[:, :1])
    with pytest.raises(ValueError, match="x must be a 3-D"):
        bm(tw, x[0])
    with pytest.raises(ValueError, match="output_size must be in"):
        bm(tw, x, True, 9)
    with pytest.raises(TypeError, match="output_size must be an int"):
        bm(tw, x, True, 2.5)
    with pytest.raises(RuntimeError, match="floating-point or complex"):
        bm(tw.long(), x.long())
    with pytest.raises(RuntimeError, match="same dtype"):
        bm(tw.float(), x)
    with pytest.raises(RuntimeError, match="same device"):
        bm(tw.to("meta"), x)
    with pytest.raises(TypeError, match="twiddle must be a torch.Tensor"):
        bm([1.0], x)
    # the C++ checks (direct torch.ops callers) give the same messages
    with pytest.raises(ValueError, match=r"x.shape\[1\] must equal nstacks"):
        torch.ops.structops.butterfly_multiply(tw, x[:, :1], True, None)
    with pytest.raises(ValueError, match="twiddle must have shape"):
        torch.ops.structops.butterfly_multiply(torch.randn(2, 1, 3, 5, 2, 2, dtype=torch.float64), x, True, None)


# ---- CPU ISA variants agree ------------------------------------------------------------------------
def test_every_isa_variant_matches_reference(cpu_isa):
    from conftest import available_isas

    tw, x = make(70, 2, 3, 9, 500, torch.float32)
    want = reference.butterfly_multiply(tw, x, False, 300)
    for isa in available_isas():
        cpu_isa(isa)
        assert rel(structops.butterfly_multiply(tw, x, False, 300), want) < 2e-5, isa


# ---- block butterfly (fly's block_butterfly_multiply) ----------------------------------------------
BLOCK_CASES = [
    (5, 1, 1, 3, 4, 32, None, True),
    (7, 2, 2, 2, 3, 10, 9, False),
    (3, 1, 2, 0, 3, 2, 3, True),
    (9, 2, 1, 4, 8, 200, 100, True),
    (33, 1, 3, 3, 2, 20, 16, False),
]


def make_block(batch, nstacks, nblocks, log_n, bs, in_size, dtype=torch.float64, requires_grad=False):
    n = 1 << log_n
    tw = torch.randn(nstacks, nblocks, log_n, n // 2, 2, 2, bs, bs, dtype=dtype) / (2 * bs) ** 0.5
    x = torch.randn(batch, nstacks, in_size, dtype=dtype)
    return tw.requires_grad_(requires_grad), x.requires_grad_(requires_grad)


def fly_block_butterfly(twiddle, x, increasing_stride=True, output_size=None):
    """fly's einsum formulation, transcribed with reshape/permute: per stage the twiddle is viewed
    as (s, diagblk, i, j, stride, k, l), the input as (b, s, diagblk, j, stride, l), contracted
    over (j, l)."""
    batch, nstacks, in_size = x.shape
    nblocks, log_n, bs = twiddle.shape[1], twiddle.shape[2], twiddle.shape[-1]
    n = 1 << log_n
    full = bs * n
    out = torch.nn.functional.pad(x, (0, full - in_size)) if in_size < full else x[:, :, :full]
    inc = increasing_stride
    for block in range(nblocks):
        for idx in range(log_n):
            stride = 1 << (idx if inc else log_n - 1 - idx)
            t = twiddle[:, block, idx].reshape(nstacks, n // (2 * stride), stride, 2, 2, bs, bs).permute(0, 1, 3, 4, 2, 5, 6)
            o = out.reshape(batch, nstacks, n // (2 * stride), 2, stride, bs)
            out = torch.einsum("sdijtkl,bsdjtl->bsditk", t, o).reshape(batch, nstacks, full)
        inc = not inc
    return out[:, :, : (full if output_size is None else output_size)]


@pytest.mark.parametrize("case", BLOCK_CASES)
def test_block_reference_matches_fly_formulation(case):
    batch, nstacks, nblocks, log_n, bs, in_size, out, inc = case
    tw, x = make_block(batch, nstacks, nblocks, log_n, bs, in_size)
    assert rel(reference.block_butterfly_multiply(tw, x, inc, out), fly_block_butterfly(tw, x, inc, out)) < 1e-12


def test_block_size_one_is_the_scalar_butterfly():
    tw, x = make(13, 2, 3, 5, 30)
    y = structops.block_butterfly_multiply(tw.unsqueeze(-1).unsqueeze(-1), x, False, 20)
    assert rel(y, structops.butterfly_multiply(tw, x, False, 20)) < 1e-12


@pytest.mark.parametrize("case", BLOCK_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_block_forward_backward_match_reference(case, dtype):
    batch, nstacks, nblocks, log_n, bs, in_size, out, inc = case
    tw, x = make_block(batch, nstacks, nblocks, log_n, bs, in_size, dtype, requires_grad=True)
    y = structops.block_butterfly_multiply(tw, x, inc, out)
    y_ref = reference.block_butterfly_multiply(tw, x, inc, out)
    assert y.shape == y_ref.shape and y.dtype == dtype
    assert rel(y, y_ref) < tol(dtype)
    g = torch.randn_like(y_ref)
    got = torch.autograd.grad(y, (tw, x), g)
    want = torch.autograd.grad(y_ref, (tw, x), g, allow_unused=True)
    want = tuple(torch.zeros_like(t) if w is None else w for w, t in zip(want, (tw, x)))
    for a, b in zip(got, want):
        assert a.shape == b.shape and rel(a, b) < tol(dtype) * 10


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_block_gradcheck_and_opcheck(dtype):
    tw, x = make_block(4, 2, 2, 2, 3, 10, dtype, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t, v: structops.block_butterfly_multiply(t, v, False, 9), (tw, x))
    torch.library.opcheck(torch.ops.structops.block_butterfly_multiply, (tw, x, False, 9))
    g = torch.randn(4, 2, 9, dtype=dtype)
    torch.library.opcheck(torch.ops.structops.block_butterfly_multiply_backward, (g, tw.detach(), x.detach(), False, [True, True]))


def test_block_compile_and_errors():
    tw, x = make_block(6, 1, 2, 3, 4, 30, torch.float32, requires_grad=True)

    def f(t, v):
        return structops.block_butterfly_multiply(t, v, True, 25).square().sum()

    got = torch.autograd.grad(torch.compile(f, fullgraph=True, backend="aot_eager")(tw, x), (tw, x))
    want = torch.autograd.grad(f(tw, x), (tw, x))
    assert all(rel(a, b) < 1e-5 for a, b in zip(got, want))
    bb = structops.block_butterfly_multiply
    with pytest.raises(ValueError, match="8-D tensor"):
        bb(tw[0], x)
    with pytest.raises(ValueError, match="bs, bs\\) with n = 2\\^log_n = 8"):
        bb(torch.randn(1, 2, 3, 4, 2, 2, 4, 3), x)
    with pytest.raises(ValueError, match="output_size must be in \\[0, bs\\*n\\] = \\[0, 32\\]"):
        bb(tw, x, True, 33)
    with pytest.raises(ValueError, match="nstacks"):
        bb(tw, x.expand(6, 2, 30))
    with pytest.raises(RuntimeError, match="same dtype"):
        bb(tw.double(), x)
    from structops.compat import fly

    assert torch.equal(fly.block_butterfly_multiply(tw, x), bb(tw, x))


@pytest.mark.parametrize("op", ["butterfly", "block"])
def test_backward_with_non_contiguous_x_and_grad(op):
    """The backward copies non-unit-stride x / grad; the copies must outlive the kernel."""
    if op == "butterfly":
        tw = torch.randn(2, 2, 5, 16, 2, 2, dtype=torch.float64, requires_grad=True)
        fn, ref = structops.butterfly_multiply, reference.butterfly_multiply
    else:
        tw = (torch.randn(2, 2, 3, 4, 2, 2, 4, 4, dtype=torch.float64) / 3).requires_grad_()
        fn, ref = structops.block_butterfly_multiply, reference.block_butterfly_multiply
    base = torch.randn(40, 2, 64, dtype=torch.float64)
    x = base[::2, :, ::2].requires_grad_()  # strided along every dim
    g = torch.randn(20, 2, 64, dtype=torch.float64)[:, :, ::2]  # (20, 2, 32), stride 2 along the last dim
    got = torch.autograd.grad(fn(tw, x, False, 32), (tw, x), g)
    want = torch.autograd.grad(ref(tw, x, False, 32), (tw, x), g)
    for a, b in zip(got, want):
        assert rel(a, b) < 1e-11
