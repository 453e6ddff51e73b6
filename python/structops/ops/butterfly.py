"""Public butterfly operator, its fake (meta) kernel and autograd formula.

Semantics are exactly torch_butterfly's ``butterfly_multiply`` (docs/ARCHITECTURE.md,
"Butterfly"):

* ``twiddle`` (nstacks, nblocks, log_n, n/2, 2, 2) with n = 2^log_n; ``x`` (batch, nstacks,
  in_size), zero-padded (in_size < n) or trimmed (in_size > n) to n; output (batch, nstacks,
  output_size) with output_size <= n (default n).
* Block b, stage t: stride s = 2^t while the direction is increasing, else 2^(log_n-1-t); the
  direction starts at ``increasing_stride`` and flips after every block.  With e = d*2s + j*s + tau
  and rho = d*s + tau: ``z'[d*2s + i*s + tau] = sum_j twiddle[stack, b, t, rho, i, j] * z[e]``.

dtypes: CPU float32/float64/complex64/complex128 natively (bfloat16/float16 computed in float32);
CUDA float32/bfloat16/float16 (float32 accumulation) and complex64.  Gradients for twiddle and x
(torch's complex convention).  Double backward raises a clear error (use
``structops.reference.butterfly_multiply``).

``block_butterfly_multiply`` is fly's block butterfly (Pixelfly): twiddle (nstacks, nblocks,
log_n, n/2, 2, 2, bs, bs), every element a bs-vector, dimension N = bs*n.  CPU: batched ATen
GEMMs (any floating / complex dtype); CUDA: the tensor-core GEMM engine (float32 (TF32 when
allowed), bfloat16, float16, float64).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_same_device_and_dtype, check_tensors, shape_of

__all__ = ["butterfly_multiply", "block_butterfly_multiply"]

_ops = torch.ops.structops


def _check_args(op: str, twiddle, x, increasing_stride, output_size, block: bool = False) -> None:
    """Shapes of butterfly_multiply (twiddle 6-D) or, with block=True, block_butterfly_multiply
    (twiddle 8-D, entries bs x bs blocks)."""
    check_tensors(op, {"twiddle": twiddle, "x": x})
    layout = "(nstacks, nblocks, log_n, n/2, 2, 2, bs, bs)" if block else "(nstacks, nblocks, log_n, n/2, 2, 2)"
    if twiddle.dim() != (8 if block else 6):
        raise ValueError(f"{op}: twiddle must be a {8 if block else 6}-D tensor {layout}, got shape {shape_of(twiddle)}")
    nstacks, nblocks, log_n = twiddle.shape[:3]
    if log_n > 30:
        raise ValueError(f"{op}: twiddle.shape[2] (log_n) must be at most 30, got {log_n}")
    n = 1 << log_n
    bs = twiddle.shape[-1] if block else 1
    want = (nstacks, nblocks, log_n, n // 2, 2, 2) + ((bs, bs) if block else ())
    if tuple(twiddle.shape) != want or bs < 1:
        raise ValueError(f"{op}: twiddle must have shape {layout} with n = 2^log_n = {n}, i.e. {want}, got {shape_of(twiddle)}")
    if x.dim() != 3:
        raise ValueError(f"{op}: x must be a 3-D tensor (batch, nstacks, in_size), got shape {shape_of(x)}")
    if x.shape[1] != nstacks:
        raise ValueError(
            f"{op}: x.shape[1] must equal nstacks = twiddle.shape[0] = {nstacks}, got x of shape {shape_of(x)}"
        )
    if not isinstance(increasing_stride, bool):
        raise TypeError(f"{op}: increasing_stride must be a bool, got {type(increasing_stride).__name__}")
    if output_size is not None:
        if isinstance(output_size, bool) or not isinstance(output_size, int):
            raise TypeError(f"{op}: output_size must be an int or None, got {type(output_size).__name__}")
        if not 0 <= output_size <= bs * n:
            where = f"[0, bs*n] = [0, {bs * n}]" if block else f"[0, n] with n = 2^log_n = {n}"
            raise ValueError(f"{op}: output_size must be in {where}, got {output_size}")
    check_same_device_and_dtype(op, {"twiddle": twiddle, "x": x}, complex_ok_on=("cpu",) if block else ("cpu", "cuda"))


def butterfly_multiply(twiddle: Tensor, x: Tensor, increasing_stride: bool = True, output_size=None) -> Tensor:
    """Product of ``nblocks * log_n`` butterfly factors applied to x, all stages fused
    (torch_butterfly's ``butterfly_multiply``).

    Args:
        twiddle: (nstacks, nblocks, log_n, n/2, 2, 2) factors, n = 2^log_n.
        x: (batch, nstacks, in_size); padded with zeros or trimmed to n.
        increasing_stride: direction of the first block (strides 1, 2, ..., n/2 if True); the
            direction flips after every block.
        output_size: keep the first output_size <= n outputs (default n).
    Returns:
        (batch, nstacks, output_size), x's dtype.
    """
    _check_args("butterfly_multiply", twiddle, x, increasing_stride, output_size)
    if torch.is_autocast_enabled(x.device.type) and not x.is_complex():
        dt = torch.get_autocast_dtype(x.device.type)
        twiddle, x = twiddle.to(dt), x.to(dt)
    return _ops.butterfly_multiply(twiddle, x, increasing_stride, output_size)


def block_butterfly_multiply(twiddle: Tensor, x: Tensor, increasing_stride: bool = True, output_size=None) -> Tensor:
    """fly's ``block_butterfly_multiply``: the butterfly whose twiddle entries are bs x bs blocks.

    Args:
        twiddle: (nstacks, nblocks, log_n, n/2, 2, 2, bs, bs).
        x: (batch, nstacks, in_size); padded with zeros or trimmed to N = bs * 2^log_n.
        increasing_stride, output_size: as ``butterfly_multiply`` (output_size <= N).
    Returns:
        (batch, nstacks, output_size or N).
    """
    _check_args("block_butterfly_multiply", twiddle, x, increasing_stride, output_size, block=True)
    if torch.is_autocast_enabled(x.device.type) and not x.is_complex():
        dt = torch.get_autocast_dtype(x.device.type)
        twiddle, x = twiddle.to(dt), x.to(dt)
    return _ops.block_butterfly_multiply(twiddle, x, increasing_stride, output_size)


# ----------------------------------------------------------------------------------------------
# fake (meta) kernels
# ----------------------------------------------------------------------------------------------
@torch.library.register_fake("structops::butterfly_multiply")
def _butterfly_multiply_fake(twiddle, x, increasing_stride=True, output_size=None):
    torch._check(twiddle.dim() == 6, lambda: f"twiddle must be 6-D, got {shape_of(twiddle)}")
    torch._check(x.dim() == 3, lambda: f"x must be 3-D, got {shape_of(x)}")
    torch._check(x.shape[1] == twiddle.shape[0], lambda: "x.shape[1] must equal twiddle.shape[0]")
    n = 1 << twiddle.shape[2]
    out = n if output_size is None else output_size
    return x.new_empty((x.shape[0], x.shape[1], out))


@torch.library.register_fake("structops::butterfly_multiply_backward")
def _butterfly_multiply_backward_fake(grad, twiddle, x, increasing_stride, output_mask):
    dt = twiddle.new_empty(twiddle.shape) if output_mask[0] else x.new_empty((0,))
    dx = x.new_empty(x.shape) if output_mask[1] else x.new_empty((0,))
    return dt, dx


@torch.library.register_fake("structops::block_butterfly_multiply")
def _block_butterfly_multiply_fake(twiddle, x, increasing_stride=True, output_size=None):
    torch._check(twiddle.dim() == 8, lambda: f"twiddle must be 8-D, got {shape_of(twiddle)}")
    torch._check(x.dim() == 3, lambda: f"x must be 3-D, got {shape_of(x)}")
    torch._check(x.shape[1] == twiddle.shape[0], lambda: "x.shape[1] must equal twiddle.shape[0]")
    full = twiddle.shape[-1] * (1 << twiddle.shape[2])
    out = full if output_size is None else output_size
    return x.new_empty((x.shape[0], x.shape[1], out))


@torch.library.register_fake("structops::block_butterfly_multiply_backward")
def _block_butterfly_multiply_backward_fake(grad, twiddle, x, increasing_stride, output_mask):
    dt = twiddle.new_empty(twiddle.shape) if output_mask[0] else x.new_empty((0,))
    dx = x.new_empty(x.shape) if output_mask[1] else x.new_empty((0,))
    return dt, dx


# ----------------------------------------------------------------------------------------------
# autograd
# ----------------------------------------------------------------------------------------------
def _setup(ctx, inputs, output):
    twiddle, x, increasing_stride, _ = inputs
    ctx.increasing_stride = increasing_stride
    ctx.x_shape = x.shape
    # x is read only for the twiddle gradient
    ctx.save_for_backward(twiddle, x if ctx.needs_input_grad[0] else None)


def _make_backward(backward_op):
    """Autograd backward of a butterfly op: its ``*_backward`` op with the requested gradients."""

    def backward(ctx, grad):
        twiddle, x = ctx.saved_tensors
        if x is None:
            x = twiddle.new_zeros(()).expand(ctx.x_shape)
        mask = [bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])]
        dt, dx = backward_op(grad, twiddle, x, ctx.increasing_stride, mask)
        return (dt if mask[0] else None, dx if mask[1] else None, None, None)

    return backward


torch.library.register_autograd(
    "structops::butterfly_multiply", _make_backward(_ops.butterfly_multiply_backward), setup_context=_setup
)
torch.library.register_autograd(
    "structops::block_butterfly_multiply", _make_backward(_ops.block_butterfly_multiply_backward), setup_context=_setup
)


def _no_double_backward(op: str):
    def backward(ctx, *grads):
        raise RuntimeError(
            f"structops: double backward through structops::{op}_backward is not supported (the first "
            f"backward is a fused kernel without a derivative). Use the pure-torch structops.reference.{op} "
            "for higher-order gradients."
        )

    torch.library.register_autograd(
        f"structops::{op}_backward", backward, setup_context=lambda ctx, inputs, output: None
    )


_no_double_backward("butterfly_multiply")
_no_double_backward("block_butterfly_multiply")
