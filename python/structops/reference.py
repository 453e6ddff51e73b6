"""Pure-torch references for every public op (test oracles), same signatures.

* ``blockdiag_matmul`` / ``monarch_matmul``: einsum formulations (any dtype incl. complex,
  differentiable to any order).
* ``blockdiag_dense`` / ``monarch_dense``: the explicit dense matrix ``M`` with ``y = x @ M.T``,
  built from permutation matrices exactly as the formula ``P_out BD(w2) P_mid BD(w1)`` reads —
  an independent oracle for the index arithmetic.
* ``monarch_matmul_bmm``: the fly-style implementation (two ``torch.bmm`` + transposed copies,
  hand-written backward) that most Monarch users run today; the benchmark baseline.
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
