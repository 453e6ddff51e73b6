"""structops.nn.Butterfly* against torch_butterfly (torch-structured's copy), the exact transforms
of structops.butterfly.special against torch.fft / scipy / explicit matrices, and the learned DFT."""

import math

import pytest
import torch

import structops
from structops.butterfly import special
from structops.compat import torch_butterfly as tb

# (in_size, out_size, kwargs): square, padding (in not a power of 2), stacking (out > n),
# truncation, several blocks in both directions, complex.
CONFIGS = [
    (64, 64, {}),
    (100, 300, {}),
    (37, 20, {"nblocks": 3, "increasing_stride": False}),
    (16, 16, {"complex": True}),
    (50, 130, {"complex": True, "nblocks": 2}),
    (8, 8, {"bias": False, "init": "identity"}),
    (32, 32, {"init": "ortho"}),
    (32, 70, {"complex": True, "init": "ortho", "increasing_stride": False}),
    (64, 64, {"complex": True, "init": "fft_no_br"}),
    (64, 64, {"complex": True, "init": "ifft_no_br", "nblocks": 2, "increasing_stride": False}),
]


def upstream():
    return pytest.importorskip("torch_structured.butterfly")


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def inputs(layer, batch=9):
    x = torch.randn(batch, layer.in_size)
    return x.to(layer.twiddle.dtype) if layer.twiddle.is_complex() else x


@pytest.mark.parametrize("cfg", CONFIGS)
def test_seeded_init_matches_upstream(cfg):
    T = upstream()
    in_size, out_size, kw = cfg
    torch.manual_seed(3)
    u = T.Butterfly(in_size, out_size, **kw)
    torch.manual_seed(3)
    o = structops.nn.Butterfly(in_size, out_size, **kw)
    su, so = u.state_dict(), o.state_dict()
    assert su.keys() == so.keys()
    for k in su:
        assert su[k].shape == so[k].shape and su[k].dtype == so[k].dtype, k
        # fft inits: ours computed in complex128 and rounded once, upstream in complex64
        assert (su[k] - so[k]).abs().max() <= (2e-6 if "fft" in str(kw.get("init")) else 0.0), k
    assert o.twiddle._is_structured is True


@pytest.mark.parametrize("cfg", CONFIGS)
def test_state_dict_round_trip_and_outputs_match_upstream(cfg):
    T = upstream()
    in_size, out_size, kw = cfg
    u = T.Butterfly(in_size, out_size, **kw)
    o = structops.nn.Butterfly(in_size, out_size, **{**kw, "init": "randn"} if "init" in kw else kw)
    o.load_state_dict(u.state_dict())  # theirs -> ours
    back = T.Butterfly(in_size, out_size, **kw)
    back.load_state_dict(o.state_dict())  # ours -> theirs
    x = inputs(o)
    modes = [(False, False), (False, True)] + ([(True, False), (True, True)] if in_size == out_size else [])
    for transpose, conjugate in modes:
        a = u(x, transpose=transpose, conjugate=conjugate)
        b = o(x, transpose=transpose, conjugate=conjugate)
        assert a.shape == b.shape
        assert rel(b, a) < 1e-5, (transpose, conjugate)
        assert rel(back(x, transpose=transpose, conjugate=conjugate), a) == 0.0


def test_leading_dims_and_subtwiddle_match_upstream():
    T = upstream()
    u = T.Butterfly(64, 64, nblocks=2)
    o = structops.nn.Butterfly(64, 64, nblocks=2)
    o.load_state_dict(u.state_dict())
    x = torch.randn(2, 3, 64)
    assert rel(o(x), u(x)) < 1e-5 and o(x).shape == (2, 3, 64)
    xs = torch.randn(5, 16)  # subtwiddle: a prefix of the twiddle for smaller inputs
    assert rel(o(xs, subtwiddle=True), u(xs, subtwiddle=True)) < 1e-5


@pytest.mark.parametrize("cfg", CONFIGS)
def test_to_dense(cfg):
    in_size, out_size, kw = cfg
    layer = structops.nn.Butterfly(in_size, out_size, **kw)
    x = inputs(layer)
    m = layer.to_dense()
    assert m.shape == (out_size, in_size)
    want = x @ m.T + (layer.bias if layer.bias is not None else 0)
    assert rel(layer(x), want) < 1e-5


def test_inits_have_their_structure():
    torch.manual_seed(0)
    tw = structops.nn.Butterfly(1024, 1024, nblocks=2).twiddle
    assert abs(tw.std().item() - 1 / math.sqrt(2)) < 0.01 and abs(tw.mean().item()) < 0.01
    for complex_ in (False, True):
        t = structops.nn.Butterfly(64, 64, complex=complex_, init="ortho").twiddle.detach()
        eye = torch.eye(2, dtype=t.dtype)
        assert (t @ t.mH - eye).abs().max() < 1e-5  # every 2x2 factor orthogonal / unitary
        layer = structops.nn.Butterfly(64, 64, bias=False, complex=complex_, init="ortho")
        m = layer.to_dense()
        assert (m @ m.mH - torch.eye(64, dtype=m.dtype)).abs().max() < 1e-4
    ident = structops.nn.Butterfly(40, 100, bias=False, init="identity")  # padding + 2 stacks
    x = torch.randn(3, 40)
    y = ident(x)
    assert torch.equal(y[:, :40], x) and torch.equal(y[:, 64:104 - 4], x[:, :36])
    with pytest.raises(ValueError, match="needs complex=True"):
        structops.nn.Butterfly(8, 8, init="fft_no_br")


def test_fft_no_br_init_is_the_unitary_dft_with_bit_reversal():
    layer = structops.nn.Butterfly(64, 64, bias=False, complex=True, init="fft_no_br")
    x = torch.randn(5, 64, dtype=torch.complex64)
    br = structops.butterfly.bitreversal_permutation(64)
    assert rel(layer(x[:, br]), torch.fft.fft(x, norm="ortho")) < 2e-6


def test_butterfly_unitary_matches_upstream_and_is_unitary():
    T = upstream()
    u = T.ButterflyUnitary(32, 32, nblocks=2)
    o = structops.nn.ButterflyUnitary(32, 32, nblocks=2)
    o.load_state_dict(u.state_dict())
    x = torch.randn(6, 32, dtype=torch.complex64)
    for transpose in (False, True):
        assert rel(o(x, transpose=transpose), u(x, transpose=transpose)) < 1e-5
    bias, o.bias = o.bias, None
    m = o.to_dense()
    o.bias = bias
    assert (m @ m.mH - torch.eye(32, dtype=m.dtype)).abs().max() < 1e-5
    # gradients reach the angles
    o(x).abs().sum().backward()
    assert o.twiddle.grad is not None and o.twiddle.grad.abs().sum() > 0


def test_butterfly_bmm_matches_upstream():
    T = upstream()
    torch.manual_seed(5)
    u = T.ButterflyBmm(20, 40, matrix_batch=3, nblocks=2)
    torch.manual_seed(5)
    o = structops.nn.ButterflyBmm(20, 40, matrix_batch=3, nblocks=2)
    assert u.state_dict().keys() == o.state_dict().keys()
    for k, v in u.state_dict().items():  # seeded init identical (same RNG consumption)
        assert torch.equal(v, o.state_dict()[k]), k
    o.load_state_dict(u.state_dict())
    x = torch.randn(7, 3, 20)
    assert rel(o(x), u(x)) < 1e-5
    m = o.to_dense()
    assert m.shape == (3, 40, 20)
    assert rel(o(x), torch.einsum("bki,koi->bko", x, m) + o.bias) < 1e-5
    with pytest.raises(ValueError, match="matrix_batch=3"):
        o(torch.randn(7, 2, 20))


def test_training_step_updates_twiddle_and_matches_reference_gradients():
    layer = structops.nn.Butterfly(48, 80, nblocks=2)
    x = torch.randn(16, 48)
    layer(x).square().mean().backward()
    g_ours = layer.twiddle.grad.clone()
    layer.twiddle.grad = None
    from structops import reference

    xs = layer.pre_process(x)
    out = reference.butterfly_multiply(layer.twiddle, xs, layer.increasing_stride, None)
    layer.post_process(x, out).square().mean().backward()
    assert rel(g_ours, layer.twiddle.grad) < 1e-5


def test_layer_bad_arguments():
    with pytest.raises(ValueError, match="in_size must be a positive int"):
        structops.nn.Butterfly(0, 4)
    with pytest.raises(ValueError, match="init must be a tensor or one of"):
        structops.nn.Butterfly(8, 8, init="xavier")
    with pytest.raises(ValueError, match="init tensor must have shape"):
        structops.nn.Butterfly(8, 8, init=torch.zeros(1, 1, 3, 4, 2))
    with pytest.raises(ValueError, match="0-d tensor"):
        structops.nn.Butterfly(8, 8)(torch.tensor(1.0))


def test_compat_module_exports_upstream_names():
    tw = torch.randn(1, 1, 3, 4, 2, 2)
    x = torch.randn(2, 1, 8)
    assert torch.equal(tb.butterfly_multiply(tw, x), structops.butterfly_multiply(tw, x))
    assert rel(tb.butterfly_multiply(tw, x, False, 5), tb.butterfly_multiply_torch(tw, x, False, 5)) < 1e-6
    assert tb.Butterfly is structops.nn.Butterfly and tb.special is special


def test_compile_fullgraph_layer():
    layer = structops.nn.Butterfly(100, 300, nblocks=2)
    x = torch.randn(8, 100, requires_grad=True)
    cf = torch.compile(layer, fullgraph=True, backend="aot_eager")
    y = cf(x)
    assert rel(y, layer(x)) < 1e-6
    y.sum().backward()
    assert x.grad is not None and layer.twiddle.grad is not None


# ---- exact transforms ------------------------------------------------------------------------------
def frob(a, b):
    return ((a.to(b.dtype) - b).norm() / b.norm()).item()


SIZES = [2, 16, 256, 4096]


@pytest.mark.parametrize("n", SIZES)
def test_fft_ifft_match_torch_fft(n):
    x = torch.randn(8, n, dtype=torch.complex64)
    xd = x.to(torch.complex128)
    for normalized in (False, True):
        norm = "ortho" if normalized else "backward"
        for br_first in (True, False):
            assert frob(special.fft(n, normalized, br_first)(x), torch.fft.fft(xd, norm=norm)) <= 2e-6
            assert frob(special.ifft(n, normalized, br_first)(x), torch.fft.ifft(xd, norm=norm)) <= 2e-6


@pytest.mark.parametrize("n", SIZES)
def test_dct_dst_match_scipy(n):
    scipy_fft = pytest.importorskip("scipy.fft")
    x = torch.randn(8, n)
    xn = x.double().numpy()
    for normalized in (False, True):
        norm = "ortho" if normalized else None
        for t in (2, 3, 4):
            assert frob(special.dct(n, t, normalized)(x), torch.from_numpy(scipy_fft.dct(xn, type=t, norm=norm))) <= 2e-6, t
        for t in (2, 4):
            assert frob(special.dst(n, t, normalized)(x), torch.from_numpy(scipy_fft.dst(xn, type=t, norm=norm))) <= 2e-6, t


def sylvester(n):
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    return h


@pytest.mark.parametrize("n", SIZES)
def test_hadamard_matches_explicit_matrix(n):
    x = torch.randn(8, n)
    for normalized in (False, True):
        h = sylvester(n) / (math.sqrt(n) if normalized else 1.0)
        for inc in (True, False):
            assert frob(special.hadamard(n, normalized, inc)(x), x.double() @ h.T) <= 2e-6


@pytest.mark.parametrize("n", [1, 5, 8, 100, 4096])
def test_circulant_and_toeplitz_match_explicit_matrices(n):
    for complex_ in (False, True):
        col = torch.randn(n, dtype=torch.complex64 if complex_ else torch.float32)
        c = torch.stack([torch.roll(col, i) for i in range(n)], 1)  # C[r, i] = col[(r - i) % n]
        x = torch.randn(4, n, dtype=col.dtype)
        for transposed in (False, True):
            m = c.T if transposed else c
            want = x.to(torch.complex128) @ m.to(torch.complex128).T
            for sep in (True, False):
                assert frob(special.circulant(col, transposed, sep)(x), want) <= 2e-6
    scipy_linalg = pytest.importorskip("scipy.linalg")
    col, row = torch.randn(5), torch.randn(7)
    row[0] = col[0]
    t = torch.from_numpy(scipy_linalg.toeplitz(col.numpy(), row.numpy())).double()
    x = torch.randn(3, 7)
    for sep in (True, False):
        assert frob(special.toeplitz(col, row, sep)(x), x.double() @ t.T) <= 2e-6


def test_special_twiddles_match_upstream():
    S = pytest.importorskip("torch_structured.butterfly.special")
    for n in (8, 64):
        for br_first in (True, False):
            for normalized in (False, True):
                a = special.fft(n, normalized, br_first, with_br_perm=False).twiddle
                b = S.fft(n, normalized, br_first, with_br_perm=False).twiddle
                assert (a - b).abs().max() < 1e-6
                a = special.ifft(n, normalized, br_first, with_br_perm=False).twiddle
                b = S.ifft(n, normalized, br_first, with_br_perm=False).twiddle
                assert (a - b).abs().max() < 1e-6
        assert torch.equal(special.hadamard(n).twiddle, S.hadamard(n).twiddle)


def test_special_bad_sizes():
    with pytest.raises(ValueError, match="power of 2"):
        special.fft(100)
    with pytest.raises(ValueError, match="type must be 2, 3 or 4"):
        special.dct(8, type=1)
    with pytest.raises(ValueError, match="1-D"):
        special.circulant(torch.randn(2, 2))


# ---- the paper's headline: learning the DFT --------------------------------------------------------
@pytest.mark.parametrize("n", [8, 16, 32, 64])
def test_learn_dft_recovers_it(n):
    from structops.butterfly.learn_transform import learn_transform

    res = learn_transform("dft", n, restarts=2)
    assert res["success"] and res["rel_err"] <= 1e-4, res["rel_err"]
    # the learned module really computes the DFT (independently of the training loss)
    x = torch.randn(4, n, dtype=torch.complex128)
    br = structops.butterfly.bitreversal_permutation(n)
    assert frob(res["model"](x[:, br]), torch.fft.fft(x, norm="ortho")) <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("n", [128, 256, 512])
def test_learn_dft_recovers_it_large(n):
    from structops.butterfly.learn_transform import learn_transform

    res = learn_transform("dft", n, restarts=3)
    assert res["success"], res["rel_err"]


def test_learn_transform_cli_writes_png_and_json(tmp_path):
    from structops.butterfly import learn_transform as lt

    png, js = tmp_path / "loss.png", tmp_path / "r.json"
    rc = lt.main(["--transform", "hadamard", "--n", "16", "--steps", "600", "--no-progress", "--png", str(png), "--json", str(js)])
    assert rc == 0 and png.stat().st_size > 1000
    import json

    out = json.loads(js.read_text())
    assert out["success"] and out["rel_err"] <= 1e-4 and len(out["losses"]) == 600
    with pytest.raises(ValueError, match="power of 2"):
        lt.learn_transform("dft", 12)
