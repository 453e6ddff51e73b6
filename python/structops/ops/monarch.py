"""Public block-diagonal / Monarch operators, their fake (meta) kernels and autograd formulas.

Semantics are exactly HazyResearch/fly's ``blockdiag_multiply`` and
``blockdiag_butterfly_multiply`` (see docs/ARCHITECTURE.md):

* ``blockdiag_matmul(x, w)``: x (..., k*p), w (k, q, p) -> (..., k*q);
  ``y[..., i*q + a] = sum_c w[i, a, c] * x[..., i*p + c]``, i.e. ``y = x @ BD(w).T``.
* ``monarch_matmul(x, w1, w2)``: w1 (k, q, p), w2 (l, s, r) with n = k*p and k*q = l*r;
  output (..., l*s); ``y = x @ M.T`` with ``M = P_out @ BD(w2) @ P_mid @ BD(w1)`` where P_mid
  views the intermediate (length k*q) as an (r, l) matrix and transposes it, and P_out views the
  (l, s) result as such and transposes it.

Any leading dims (including none: a 1-D x, and empty batches), non-contiguous x.
dtypes: CPU float32/float64 natively (bfloat16/float16 computed in float32) and
complex64/complex128 (as fly; gradients follow torch's complex autograd convention), CUDA
float32/bfloat16/float16 with float32 accumulation (and float64; complex is CPU-only).  Under
``torch.autocast`` the inputs are cast to the active autocast dtype.

Each op has a fake kernel (torch.compile / meta tensors) and autograd; every backward is its own
operator (``torch.ops.structops.*_backward``).  Double backward raises a clear error.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_same_device_and_dtype, check_tensors, shape_of

__all__ = ["blockdiag_matmul", "monarch_matmul"]

_ops = torch.ops.structops
_shape = shape_of


# ----------------------------------------------------------------------------------------------
# argument checks (same wording as the C++ checks in csrc/torch/monarch_common.h)
# ----------------------------------------------------------------------------------------------
def _check_args(op: str, x, weights: dict) -> None:
    check_tensors(op, {"x": x, **weights})
    if x.dim() == 0:
        raise ValueError(f"{op}: x must have shape (..., n) with at least 1 dimension, got a 0-d tensor")
    names = list(weights)
    w1 = weights[names[0]]
    if w1.dim() != 3:
        raise ValueError(
            f"{op}: {names[0]} must be a 3-D tensor (k, q, p) = (nblocks, block_out, block_in), "
            f"got shape {_shape(w1)}"
        )
    k, q, p = w1.shape
    if x.shape[-1] != k * p:
        raise ValueError(
            f"{op}: x.shape[-1] must equal k*p = {k}*{p} = {k * p} for {names[0]} of shape "
            f"(k, q, p) = {_shape(w1)}, got x of shape {_shape(x)}"
        )
    if len(names) > 1:
        w2 = weights[names[1]]
        if w2.dim() != 3:
            raise ValueError(f"{op}: w2 must be a 3-D tensor (l, s, r), got shape {_shape(w2)}")
        l, s, r = w2.shape
        if l * r != k * q:
            raise ValueError(
                f"{op}: w2 of shape (l, s, r) = {_shape(w2)} needs l*r == k*q = {k * q} "
                f"(w1 of shape {_shape(w1)}), got l*r = {l * r}"
            )
    check_same_device_and_dtype(op, {"x": x, **weights}, complex_ok_on=("cpu",))


# ----------------------------------------------------------------------------------------------
# public functions
# ----------------------------------------------------------------------------------------------
def blockdiag_matmul(x: Tensor, w: Tensor) -> Tensor:
    """Block-diagonal matmul ``y = x @ BD(w).T`` (fly's ``blockdiag_multiply``).

    Args:
        x: (..., k*p) input; any leading dims (also none), may be non-contiguous.
        w: (k, q, p) blocks; block i maps x[..., i*p:(i+1)*p] to y[..., i*q:(i+1)*q].
    Returns:
        (..., k*q), same dtype as x (or the autocast dtype).
    """
    _check_args("blockdiag_matmul", x, {"w": w})
    return _ops.blockdiag_matmul(x, w)


def monarch_matmul(x: Tensor, w1: Tensor, w2: Tensor, *, recompute: bool = False) -> Tensor:
    """Monarch matmul ``y = x @ (P_out BD(w2) P_mid BD(w1)).T`` (fly's
    ``blockdiag_butterfly_multiply``), fused: no permuted copy is ever materialised.

    Args:
        x: (..., n) input, n = k*p; any leading dims (also none), may be non-contiguous.
        w1: (k, q, p) first block-diagonal factor.
        w2: (l, s, r) second factor, with l*r == k*q.
        recompute: if True, the backward recomputes the (..., k*q) intermediate instead of
            saving it (less activation memory, one first-factor GEMM more work).  The default
            saves it, as fly does; it was the faster choice at every benchmarked shape on CPU
            (docs/BENCHMARKS.md).  None means the default.
    Returns:
        (..., l*s).
    """
    _check_args("monarch_matmul", x, {"w1": w1, "w2": w2})
    if (
        not recompute
        and torch.is_grad_enabled()
        and (x.requires_grad or w1.requires_grad or w2.requires_grad)
    ):
        return _ops.monarch_matmul_fwd(x, w1, w2)[0]
    return _ops.monarch_matmul(x, w1, w2)


# ----------------------------------------------------------------------------------------------
# fake (meta) kernels: shape functions for torch.compile / FakeTensor
# ----------------------------------------------------------------------------------------------
def _fake_check(x: Tensor, w1: Tensor, w2: Tensor | None = None):
    torch._check(x.dim() >= 1, lambda: "x must have at least 1 dimension")
    torch._check(w1.dim() == 3, lambda: f"w1 must be 3-D, got {_shape(w1)}")
    k, q, p = w1.shape
    torch._check(x.shape[-1] == k * p, lambda: f"x.shape[-1] must equal k*p, got {_shape(x)} and {_shape(w1)}")
    if w2 is None:
        return k, q, p, None
    torch._check(w2.dim() == 3, lambda: f"w2 must be 3-D, got {_shape(w2)}")
    l, s, r = w2.shape
    torch._check(l * r == k * q, lambda: f"w2 needs l*r == k*q, got {_shape(w1)} and {_shape(w2)}")
    return k, q, p, (l, s, r)


@torch.library.register_fake("structops::blockdiag_matmul")
def _blockdiag_matmul_fake(x, w):
    k, q, _, _ = _fake_check(x, w)
    return x.new_empty((*x.shape[:-1], k * q))


@torch.library.register_fake("structops::blockdiag_matmul_backward")
def _blockdiag_matmul_backward_fake(grad, x, w, output_mask):
    _fake_check(x, w)
    dx = x.new_empty(x.shape) if output_mask[0] else x.new_empty((0,))
    dw = w.new_empty(w.shape) if output_mask[1] else x.new_empty((0,))
    return dx, dw


@torch.library.register_fake("structops::monarch_matmul")
def _monarch_matmul_fake(x, w1, w2):
    _, _, _, (l, s, _) = _fake_check(x, w1, w2)
    return x.new_empty((*x.shape[:-1], l * s))


@torch.library.register_fake("structops::monarch_matmul_fwd")
def _monarch_matmul_fwd_fake(x, w1, w2):
    k, q, _, (l, s, _) = _fake_check(x, w1, w2)
    return x.new_empty((*x.shape[:-1], l * s)), x.new_empty((*x.shape[:-1], k * q))


@torch.library.register_fake("structops::monarch_matmul_backward")
def _monarch_matmul_backward_fake(grad, x, w1, w2, u, output_mask):
    _fake_check(x, w1, w2)
    dx = x.new_empty(x.shape) if output_mask[0] else x.new_empty((0,))
    dw1 = w1.new_empty(w1.shape) if output_mask[1] else x.new_empty((0,))
    dw2 = w2.new_empty(w2.shape) if output_mask[2] else x.new_empty((0,))
    return dx, dw1, dw2


# ----------------------------------------------------------------------------------------------
# autograd
# ----------------------------------------------------------------------------------------------
def _x_placeholder(shape, like: Tensor) -> Tensor:
    """A zero-stride stand-in with x's shape/dtype/device: the backward reads x only for dw1 (or
    to recompute u), so we do not keep the activation alive otherwise."""
    return like.new_zeros(()).expand(shape)


def _blockdiag_setup(ctx, inputs, output):
    x, w = inputs
    ctx.x_shape = x.shape
    ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, w)


def _blockdiag_backward(ctx, grad):
    x, w = ctx.saved_tensors
    if x is None:
        x = _x_placeholder(ctx.x_shape, w)
    mask = [bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])]
    dx, dw = _ops.blockdiag_matmul_backward(grad, x, w, mask)
    return (dx if mask[0] else None, dw if mask[1] else None)


torch.library.register_autograd(
    "structops::blockdiag_matmul", _blockdiag_backward, setup_context=_blockdiag_setup
)


def _monarch_backward_common(ctx, grad):
    x, w1, w2, u = ctx.saved_tensors
    if x is None:
        x = _x_placeholder(ctx.x_shape, w1)
    mask = [bool(ctx.needs_input_grad[i]) for i in range(3)]
    dx, dw1, dw2 = _ops.monarch_matmul_backward(grad, x, w1, w2, u, mask)
    return (dx if mask[0] else None, dw1 if mask[1] else None, dw2 if mask[2] else None)


def _monarch_recompute_setup(ctx, inputs, output):
    # monarch_matmul: nothing but the inputs is saved; u is recomputed when dw2 is needed.
    x, w1, w2 = inputs
    ctx.x_shape = x.shape
    need_x = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
    ctx.save_for_backward(x if need_x else None, w1, w2, None)


def _monarch_recompute_backward(ctx, grad):
    return _monarch_backward_common(ctx, grad)


torch.library.register_autograd(
    "structops::monarch_matmul", _monarch_recompute_backward, setup_context=_monarch_recompute_setup
)


def _monarch_saved_setup(ctx, inputs, output):
    # monarch_matmul_fwd: u (the first factor's output) is saved for dw2.
    x, w1, w2 = inputs
    _, u = output
    ctx.mark_non_differentiable(u)
    # u never receives a gradient; without this autograd would allocate and zero-fill one the
    # size of the activation on every backward pass (~10% of the step for large layers).
    ctx.set_materialize_grads(False)
    ctx.x_shape = x.shape
    ctx.save_for_backward(
        x if ctx.needs_input_grad[1] else None, w1, w2, u if ctx.needs_input_grad[2] else None
    )


def _monarch_saved_backward(ctx, grad, _grad_u):
    if grad is None:  # not materialised (see _monarch_saved_setup): y received no gradient
        return None, None, None
    return _monarch_backward_common(ctx, grad)


torch.library.register_autograd(
    "structops::monarch_matmul_fwd", _monarch_saved_backward, setup_context=_monarch_saved_setup
)


def _no_double_backward(op: str):
    def setup(ctx, inputs, output):
        pass

    def backward(ctx, *grads):
        raise RuntimeError(
            f"structops: double backward through {op} is not supported (the first backward is a "
            "fused kernel without a derivative). Use the pure-torch structops.reference."
            f"{op.split('::')[1].replace('_backward', '')} for higher-order gradients."
        )

    torch.library.register_autograd(op, backward, setup_context=setup)


_no_double_backward("structops::blockdiag_matmul_backward")
_no_double_backward("structops::monarch_matmul_backward")
