"""Sparse plus low-rank (SLTrain) linear: ``y = x (W0 + scale * B A + S)^T + bias``.

* ``x`` (..., in); ``B`` (out, r); ``A`` (r, in); ``S`` = ``values`` (nnz) at ``indices`` (nnz):
  flat row-major positions i * in + j, int32, strictly increasing (sorted, no duplicates);
  ``base_weight`` W0 (out, in) optional (the fine-tuning variant; frozen or trained);
  ``scale`` = SLTrain's lora_alpha / r.
* Neither W = W0 + s B A + S nor the dense weight gradient G = g^T x is ever formed:
  forward x W0^T + s (x A^T) B^T + x S^T; backward grad_x = g W0 + s (g B) A + g S,
  grad_A = s (g B)^T x, grad_B = s g^T (x A^T), grad_values = G at the support, computed
  directly (sampled dense-dense product).  Autograd saves x and references to the parameters.
* dtypes: float32 / float64 natively, bfloat16 / float16 computed in float32 and cast back.  CPU:
  torch-free per-ISA sparse kernels; CUDA: ATen's sparse CSR ops (cuSPARSE SpMM / SDDMM; compiled,
  not yet run on a GPU), also selectable on the CPU with STRUCTOPS_SPARSE_KERNEL=aten.  Double backward raises (use ``structops.reference.sparse_lowrank_linear``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_tensors, shape_of

__all__ = ["sparse_lowrank_linear"]

_ops = torch.ops.structops


def sparse_lowrank_linear(x: Tensor, B: Tensor, A: Tensor, values: Tensor, indices: Tensor, scale: float,
                          bias: Tensor | None = None, base_weight: Tensor | None = None) -> Tensor:
    """SLTrain linear; x (..., in) -> (..., out).  See the module doc."""
    op = "sparse_lowrank_linear"
    check_tensors(op, {"x": x, "B": B, "A": A, "values": values, "indices": indices})
    for name, t in (("bias", bias), ("base_weight", base_weight)):
        if t is not None:
            check_tensors(op, {name: t})
    if B.dim() != 2 or A.dim() != 2 or B.shape[1] != A.shape[0]:
        raise ValueError(f"{op}: B must be (out, r) and A (r, in) with the same r, got B {shape_of(B)}, A {shape_of(A)}")
    out_f, in_f = B.shape[0], A.shape[1]
    if x.dim() < 1 or x.shape[-1] != in_f:
        raise ValueError(f"{op}: x must be (..., in_features = A.shape[1] = {in_f}), got {shape_of(x)}")
    if values.dim() != 1 or indices.dim() != 1 or values.shape != indices.shape:
        raise ValueError(f"{op}: values and indices must be 1-D of the same length (nnz), got values "
                         f"{shape_of(values)}, indices {shape_of(indices)}")
    if indices.dtype != torch.int32:
        raise RuntimeError(f"{op}: indices must be int32 flat row-major positions, got {indices.dtype}")
    if base_weight is not None and tuple(base_weight.shape) != (out_f, in_f):
        raise ValueError(f"{op}: base_weight must be (out, in) = {(out_f, in_f)}, got {shape_of(base_weight)}")
    if bias is not None and tuple(bias.shape) != (out_f,):
        raise ValueError(f"{op}: bias must be ({out_f},), got {shape_of(bias)}")
    for name, t in (("B", B), ("A", A), ("values", values), ("bias", bias), ("base_weight", base_weight)):
        if t is not None and (t.dtype != x.dtype or t.device != x.device):
            raise RuntimeError(f"{op}: {name} must have x's dtype and device ({x.dtype}, {x.device}), got {t.dtype}, {t.device}")
    if indices.requires_grad:
        raise ValueError(f"{op}: indices cannot require grad")
    lead = x.shape[:-1]
    y = _ops.sparse_lowrank_linear(x.reshape(-1, in_f), B, A, values, indices, float(scale), bias, base_weight)
    return y.reshape(*lead, out_f)


@torch.library.register_fake("structops::sparse_lowrank_linear")
def _fake(x, B, A, values, indices, scale, bias=None, base_weight=None):
    torch._check(x.dim() == 2, lambda: "x must be 2-D")
    return x.new_empty((x.shape[0], B.shape[0]))


@torch.library.register_fake("structops::sparse_lowrank_linear_backward")
def _backward_fake(grad, x, B, A, values, indices, scale, base_weight, output_mask):
    e = x.new_empty((0,))
    shapes = (x.shape, B.shape, A.shape, values.shape, (B.shape[0], A.shape[1]))
    return tuple(x.new_empty(sh) if m else e for m, sh in zip(output_mask, shapes))


def _needs(ctx) -> list:
    """needs_input_grad padded to the 8 schema arguments (trailing defaults may be absent)."""
    ni = [bool(v) for v in ctx.needs_input_grad]
    return ni + [False] * (8 - len(ni))


def _setup(ctx, inputs, output):
    x, B, A, values, indices, scale, bias, base_weight = inputs
    ctx.scale, ctx.x_shape = scale, x.shape
    ni = _needs(ctx)
    need_x = ni[1] or ni[2] or ni[3] or ni[7]  # weight-side gradients read x
    ctx.save_for_backward(x if need_x else None, B, A, values, indices, base_weight)


def _backward(ctx, grad):
    x, B, A, values, indices, base_weight = ctx.saved_tensors
    if x is None:
        x = A.new_zeros(()).expand(ctx.x_shape)
    ni = _needs(ctx)
    mask = [ni[0], ni[1], ni[2], ni[3], ni[7]]
    dx, dB, dA, dv, dW = _ops.sparse_lowrank_linear_backward(grad, x, B, A, values, indices, ctx.scale, base_weight, mask)
    dbias = grad.sum(0) if ni[6] else None
    return (dx if mask[0] else None, dB if mask[1] else None, dA if mask[2] else None, dv if mask[3] else None,
            None, None, dbias, dW if mask[4] else None)


torch.library.register_autograd("structops::sparse_lowrank_linear", _backward, setup_context=_setup)


def _no_double_backward(ctx, *grads):
    raise RuntimeError("structops: double backward through structops::sparse_lowrank_linear_backward is not supported; "
                       "use the pure-torch structops.reference.sparse_lowrank_linear for higher-order gradients.")


torch.library.register_autograd("structops::sparse_lowrank_linear_backward", _no_double_backward,
                                setup_context=lambda ctx, inputs, output: None)
