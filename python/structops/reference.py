"""Pure-torch references for every public op (test oracles), same signatures.

* ``blockdiag_matmul`` / ``monarch_matmul``: einsum formulations (any dtype incl. complex,
  differentiable to any order).
* ``blockdiag_dense`` / ``monarch_dense``: the explicit dense matrix ``M`` with ``y = x @ M.T``,
  built from permutation matrices exactly as the formula ``P_out BD(w2) P_mid BD(w1)`` reads —
  an independent oracle for the index arithmetic.
* ``monarch_matmul_bmm``: the fly-style implementation (two ``torch.bmm`` + transposed copies,
  hand-written backward) that most Monarch users run today; the benchmark baseline.
* ``butterfly_multiply``: torch_butterfly's op written stage by stage from the index formula of
  docs/ARCHITECTURE.md (gathers, any dtype, differentiable to any order); ``butterfly_dense``:
  the explicit (nstacks, out, in) matrix as a product of the per-stage sparse matrices.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "blockdiag_matmul",
    "monarch_matmul",
    "blockdiag_dense",
    "monarch_dense",
    "monarch_matmul_bmm",
    "mid_permutation",
    "out_permutation",
    "butterfly_multiply",
    "butterfly_dense",
    "butterfly_stage_order",
    "block_butterfly_multiply",
    "randlora_delta_weight",
    "randlora_linear",
    "vera_delta_weight",
    "vera_linear",
    "sparse_lowrank_weight",
    "sparse_lowrank_linear",
]


def blockdiag_matmul(x: Tensor, w: Tensor) -> Tensor:
    k, q, p = w.shape
    xb = x.reshape(*x.shape[:-1], k, p)
    return torch.einsum("...kp,kqp->...kq", xb, w).reshape(*x.shape[:-1], k * q)


def monarch_matmul(x: Tensor, w1: Tensor, w2: Tensor) -> Tensor:
    k, q, p = w1.shape
    l, s, r = w2.shape
    lead = x.shape[:-1]
    u = torch.einsum("...kp,kqp->...kq", x.reshape(*lead, k, p), w1).reshape(*lead, r, l)
    v = u.transpose(-1, -2)  # (..., l, r): P_mid
    w = torch.einsum("...lr,lsr->...ls", v, w2)  # (..., l, s)
    return w.transpose(-1, -2).reshape(*lead, s * l)  # P_out


def _perm_matrix(perm: Tensor, dtype, device) -> Tensor:
    """P with (P @ v)[i] = v[perm[i]]."""
    n = perm.numel()
    P = torch.zeros(n, n, dtype=dtype, device=device)
    P[torch.arange(n, device=device), perm.to(device)] = 1
    return P


def mid_permutation(k: int, q: int, l: int, r: int) -> Tensor:
    """perm with v[j] = u[perm[j]]: v[lm*r + rh] = u[rh*l + lm] (view u as (r, l), transpose)."""
    assert k * q == l * r
    return torch.arange(l * r).reshape(r, l).t().reshape(-1)


def out_permutation(l: int, s: int) -> Tensor:
    """perm with y[i] = w[perm[i]]: y[sg*l + lm] = w[lm*s + sg] (view w as (l, s), transpose)."""
    return torch.arange(l * s).reshape(l, s).t().reshape(-1)


def blockdiag_dense(w: Tensor) -> Tensor:
    """BD(w): (k*q, k*p) with block i = w[i]."""
    return torch.block_diag(*w.unbind(0))


def monarch_dense(w1: Tensor, w2: Tensor) -> Tensor:
    """M = P_out BD(w2) P_mid BD(w1), shape (l*s, k*p); monarch_matmul(x) == x @ M.T."""
    k, q, p = w1.shape
    l, s, r = w2.shape
    P_mid = _perm_matrix(mid_permutation(k, q, l, r), w1.dtype, w1.device)
    P_out = _perm_matrix(out_permutation(l, s), w1.dtype, w1.device)
    return P_out @ blockdiag_dense(w2) @ P_mid @ blockdiag_dense(w1)


class _MonarchBmm(torch.autograd.Function):
    """fly's blockdiag_butterfly_multiply algorithm: bmm, transposed copy, bmm (re-implemented).
    Saves the permuted intermediate (batch*k*q elements) for the backward."""

    @staticmethod
    def forward(ctx, x, w1, w2):
        lead, n = x.shape[:-1], x.shape[-1]
        B = x.numel() // n if n else 0
        k, q, p = w1.shape
        l, s, r = w2.shape
        xk = x.reshape(B, k, p).transpose(0, 1)  # (k, B, p) view
        u = torch.empty(B, k, q, device=x.device, dtype=x.dtype).transpose(0, 1)
        torch.bmm(xk, w1.transpose(-1, -2), out=u)
        v = u.transpose(0, 1).reshape(B, r, l).transpose(-1, -2).contiguous().transpose(0, 1)  # (l, B, r)
        w = torch.empty(B, l, s, device=x.device, dtype=x.dtype).transpose(0, 1)
        torch.bmm(v, w2.transpose(-1, -2), out=w)
        ctx.save_for_backward(x, w1, w2, v)
        return w.permute(1, 2, 0).reshape(*lead, s * l)

    @staticmethod
    def backward(ctx, dy):
        x, w1, w2, v = ctx.saved_tensors
        n = x.shape[-1]
        B = x.numel() // n if n else 0
        k, q, p = w1.shape
        l, s, r = w2.shape
        dyl = dy.reshape(B, s, l).transpose(-1, -2).contiguous().transpose(0, 1)  # (l, B, s)
        dx = dw1 = dw2 = None
        if ctx.needs_input_grad[2]:
            dw2 = torch.bmm(dyl.transpose(-1, -2), v)
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            dv = torch.empty(B, l, r, device=x.device, dtype=x.dtype).transpose(0, 1)
            torch.bmm(dyl, w2, out=dv)
            du = dv.transpose(0, 1).transpose(-1, -2).contiguous().reshape(B, k, q).transpose(0, 1)
            if ctx.needs_input_grad[0]:
                dxb = torch.empty(B, k, p, device=x.device, dtype=x.dtype)
                torch.bmm(du, w1, out=dxb.transpose(0, 1))
                dx = dxb.reshape(x.shape)
            if ctx.needs_input_grad[1]:
                dw1 = torch.bmm(du.transpose(-1, -2), x.reshape(B, k, p).transpose(0, 1))
        return dx, dw1, dw2


def monarch_matmul_bmm(x: Tensor, w1: Tensor, w2: Tensor) -> Tensor:
    """fly-style Monarch matmul (two bmm + a transposed copy); x needs >= 1 leading dim."""
    return _MonarchBmm.apply(x, w1, w2)


# ----------------------------------------------------------------------------------------------
# butterfly (torch_butterfly semantics)
# ----------------------------------------------------------------------------------------------
def butterfly_stage_order(nblocks: int, log_n: int, increasing_stride: bool):
    """[(block, stage, log2 stride)] in application order: the direction starts at
    ``increasing_stride`` and flips after every block."""
    order = []
    inc = increasing_stride
    for b in range(nblocks):
        for t in range(log_n):
            order.append((b, t, t if inc else log_n - 1 - t))
        inc = not inc
    return order


def _stage_indices(n: int, log_stride: int, device):
    """For every element e: its partner index and the twiddle row rho, and whether e is the
    upper (i = 0) or lower (i = 1) element of its pair."""
    s = 1 << log_stride
    e = torch.arange(n, device=device)
    i = (e >> log_stride) & 1
    rho = (e >> (log_stride + 1)) * s + (e & (s - 1))
    first = e - i * s  # j = 0 element of the pair
    return first, first + s, rho, i


def butterfly_multiply(twiddle: Tensor, x: Tensor, increasing_stride: bool = True, output_size=None) -> Tensor:
    """torch_butterfly's ``butterfly_multiply``: twiddle (nstacks, nblocks, log_n, n/2, 2, 2),
    x (batch, nstacks, in_size) -> (batch, nstacks, output_size or n)."""
    nstacks, nblocks, log_n = twiddle.shape[:3]
    n = 1 << log_n
    in_size = x.shape[-1]
    z = torch.nn.functional.pad(x, (0, n - in_size)) if in_size < n else x[..., :n]
    for b, t, ls in butterfly_stage_order(nblocks, log_n, increasing_stride):
        j0, j1, rho, i = _stage_indices(n, ls, x.device)
        tw = twiddle[:, b, t]  # (nstacks, n/2, 2, 2)
        # z'[e] = T[rho(e), i(e), 0] z[j0(e)] + T[rho(e), i(e), 1] z[j1(e)]
        c0 = tw[:, rho, i, 0]  # (nstacks, n)
        c1 = tw[:, rho, i, 1]
        z = c0 * z[..., j0] + c1 * z[..., j1]
    out = n if output_size is None else output_size
    return z[..., :out]


def butterfly_dense(twiddle: Tensor, increasing_stride: bool = True, in_size=None, output_size=None) -> Tensor:
    """The matrices M (nstacks, output_size, in_size) with
    ``butterfly_multiply(twiddle, x)[:, s] == x[:, s] @ M[s].T``: the ordered product of the
    per-stage (n, n) matrices, each built entry by entry from its pairs."""
    nstacks, nblocks, log_n = twiddle.shape[:3]
    n = 1 << log_n
    in_size = n if in_size is None else in_size
    output_size = n if output_size is None else output_size
    m = torch.eye(n, dtype=twiddle.dtype, device=twiddle.device).expand(nstacks, n, n)
    for b, t, ls in butterfly_stage_order(nblocks, log_n, increasing_stride):
        s = 1 << ls
        stage = torch.zeros(nstacks, n, n, dtype=twiddle.dtype, device=twiddle.device)
        for d in range(n // (2 * s)):
            for tau in range(s):
                rho = d * s + tau
                for i in range(2):
                    for j in range(2):
                        stage[:, d * 2 * s + i * s + tau, d * 2 * s + j * s + tau] = twiddle[:, b, t, rho, i, j]
        m = stage @ m
    # padding: input columns beyond n do not exist (trimmed), columns in [in_size, n) meet zeros
    cols = m[:, :output_size, : min(in_size, n)]
    if in_size > n:
        cols = torch.nn.functional.pad(cols, (0, in_size - n))
    return cols


def block_butterfly_multiply(twiddle: Tensor, x: Tensor, increasing_stride: bool = True, output_size=None) -> Tensor:
    """fly's ``block_butterfly_multiply``: twiddle (nstacks, nblocks, log_n, n/2, 2, 2, bs, bs),
    x (batch, nstacks, in_size) padded/trimmed to N = bs*n -> (batch, nstacks, output_size or N).
    Stage by stage from the index formula with bs-vector elements and bs x bs twiddles."""
    nstacks, nblocks, log_n = twiddle.shape[:3]
    bs = twiddle.shape[-1]
    n = 1 << log_n
    full = bs * n
    in_size = x.shape[-1]
    z = torch.nn.functional.pad(x, (0, full - in_size)) if in_size < full else x[..., :full]
    z = z.reshape(x.shape[0], nstacks, n, bs)
    for b, t, ls in butterfly_stage_order(nblocks, log_n, increasing_stride):
        j0, j1, rho, i = _stage_indices(n, ls, x.device)
        tw = twiddle[:, b, t]  # (nstacks, n/2, 2, 2, bs, bs)
        c0 = tw[:, rho, i, 0]  # (nstacks, n, bs, bs): block multiplying partner j = 0
        c1 = tw[:, rho, i, 1]
        # z'[e] = T[rho(e), i(e), 0] @ z[j0(e)] + T[rho(e), i(e), 1] @ z[j1(e)]   (bs-vectors)
        z = torch.einsum("sekl,bsel->bsek", c0, z[:, :, j0]) + torch.einsum("sekl,bsel->bsek", c1, z[:, :, j1])
    out = full if output_size is None else output_size
    return z.reshape(x.shape[0], nstacks, full)[..., :out]


# ---------------------------------------------------------------------------------------------
# Random-basis family (RandLoRA, VeRA): peft 0.21.2's maths written out term by term
# ---------------------------------------------------------------------------------------------
def randlora_delta_weight(basis_A: Tensor, basis_B: Tensor, lam: Tensor, gamma: Tensor, scaling: float,
                          in_features: int, out_features: int) -> Tensor:
    """dW (out, in) of a RandLoRA layer as a sum over bases and ranks: with c = b*r + k the column
    of basis_B (d_max, r*n) paired with Ahat's row k*n + b, dW_oriented = scaling *
    sum_c basis_B[:, c] (x) (lam[kk, bb] * A[kk] * gamma[bb]) where (kk, bb) = divmod(c, n) — peft's
    rank-major / basis-major pairing — and dW = dW_oriented if in == d_min else its transpose."""
    r, n = lam.shape
    d_min = min(in_features, out_features)
    ahat = torch.stack([lam[c // n, c % n] * basis_A[c // n] * gamma[c % n] for c in range(r * n)])  # (R, d_min)
    dw = scaling * torch.einsum("oc,cj->oj", basis_B, ahat)
    return dw if in_features == d_min else dw.t()


def randlora_linear(x: Tensor, weight: Tensor, bias, basis_A: Tensor, basis_B: Tensor, lam: Tensor, gamma: Tensor,
                    scaling: float) -> Tensor:
    """Pure-torch RandLoRA linear (differentiable, any order): x weight^T + bias + x dW^T."""
    dw = randlora_delta_weight(basis_A, basis_B, lam, gamma, scaling, weight.shape[1], weight.shape[0])
    y = x @ (weight + dw.to(weight.dtype)).t()
    return y if bias is None else y + bias


def vera_delta_weight(vera_A: Tensor, vera_B: Tensor, lambda_d: Tensor, lambda_b: Tensor) -> Tensor:
    """VeRA dW (out, in) = diag(lambda_b) B diag(lambda_d) A."""
    return torch.diag(lambda_b) @ vera_B @ torch.diag(lambda_d) @ vera_A


def vera_linear(x: Tensor, weight: Tensor, bias, vera_A: Tensor, vera_B: Tensor, lambda_d: Tensor,
                lambda_b: Tensor) -> Tensor:
    """Pure-torch VeRA linear (differentiable, any order)."""
    y = x @ (weight + vera_delta_weight(vera_A, vera_B, lambda_d, lambda_b).to(weight.dtype)).t()
    return y if bias is None else y + bias


# ---------------------------------------------------------------------------------------------
# Sparse plus low-rank (SLTrain): the materialise-W algorithm of SLTrain's own code
# ---------------------------------------------------------------------------------------------
def sparse_lowrank_weight(B: Tensor, A: Tensor, values: Tensor, indices: Tensor, scale: float,
                          base_weight=None) -> Tensor:
    """W = W0 + scale * B A + S (out, in), S scattered from (values, flat row-major indices)."""
    w = scale * (B @ A)
    if base_weight is not None:
        w = w + base_weight
    return w.reshape(-1).index_add(0, indices.long(), values).reshape(B.shape[0], A.shape[1])


def sparse_lowrank_linear(x: Tensor, B: Tensor, A: Tensor, values: Tensor, indices: Tensor, scale: float,
                          bias=None, base_weight=None) -> Tensor:
    """Pure-torch SLTrain linear (materialises W; differentiable, any order)."""
    return torch.nn.functional.linear(x, sparse_lowrank_weight(B, A, values, indices, scale, base_weight), bias)
