"""Random-basis diagonal-scaled sums: RandLoRA and VeRA linear layers as fused ops.

Semantics are peft 0.21.2's (``../shared/reference/finetune.md`` §2–3; docs/ARCHITECTURE.md,
"Random-basis"):

* ``randlora_linear(x, weight, bias, basis_A, basis_B, lam, gamma, scaling)``:
  ``y = x weight^T + bias + scaling * x dW^T`` with d_min = min(in, out), d_max = max(in, out),
  ``basis_A`` (r, d_min) (peft's ``randlora_A[:, 0, :d_min]``), ``basis_B`` (d_max, r*n) (peft's
  ``randlora_B[:d_max, :n, :].flatten(1)``), ``lam`` (r, n), ``gamma`` (n, d_min);
  Ahat[k*n + b, j] = lam[k, b] * A[k, j] * gamma[b, j] (rank-major) paired with the basis-major
  columns of basis_B; dW = basis_B @ Ahat when in == d_min, else its transpose.
* ``vera_linear(x, weight, bias, vera_A, vera_B, lambda_d, lambda_b)``:
  ``y = x weight^T + bias + lambda_b * ((lambda_d * (x A^T)) B^T)``, A (r, in), B (out, r).

``weight`` may be None: the op is then the adapter branch alone (bias + x dW^T) — what a layer over
a quantized base (bnb ``Linear8bitLt`` / ``Linear4bit``) adds to the base's own output.

Gradients for x, weight (optional: frozen in PEFT), bias and the trained vectors; the bases are
frozen (passing a basis that requires grad is an error).  What autograd keeps: RandLoRA saves only
x in its own dtype (the scaled basis is rebuilt, never saved) — or, when in > out and the base
weight is frozen, the smaller h = x Bbar (tokens, r*n) instead; VeRA saves h = x A^T (tokens, r),
and x only when the base weight is trained.

``strategy``: ``"auto"`` (cost model per phase, structops/randbasis.h), ``"factored"`` or
``"merged"`` (W0 + s dW built one ≈ 2 MiB panel of output rows at a time inside the GEMM loop).
dtypes: x, weight, bias and the bases share one dtype (float32/float64/bfloat16/float16); the
trained vectors may be that dtype or float32 (master weights).  CPU: MKL/oneDNN GEMMs; CUDA: the
same orchestration on cuBLAS (compiled, not yet run on a GPU).  Double backward raises.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_tensors, shape_of

__all__ = ["randlora_linear", "vera_linear", "randbasis_plan", "STRATEGIES"]

_ops = torch.ops.structops

STRATEGIES = {"auto": 0, "factored": 1, "merged": 2}
_STRATEGY_NAMES = {1: "factored", 2: "merged", 3: "mixed"}


def _strategy(op: str, strategy) -> int:
    if strategy not in STRATEGIES:
        raise ValueError(f"{op}: strategy must be one of {sorted(STRATEGIES)}, got {strategy!r}")
    return STRATEGIES[strategy]


def _check_common(op: str, x, weight, bias, bases: dict, vectors: dict) -> None:
    check_tensors(op, {"x": x, **bases, **vectors})
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            check_tensors(op, {name: t})
    if x.dim() < 1:
        raise ValueError(f"{op}: x must have at least 1 dimension (..., in_features), got shape {shape_of(x)}")
    if weight is not None and (weight.dim() != 2 or weight.shape[1] != x.shape[-1]):
        raise ValueError(
            f"{op}: weight must be 2-D (out_features, in_features) with in_features = x.shape[-1] = "
            f"{x.shape[-1]}, got {shape_of(weight)}"
        )
    if not x.is_floating_point():
        raise RuntimeError(f"{op}: expected a floating-point x, got {x.dtype}")
    for name, t in {"weight": weight, "bias": bias, **bases}.items():
        if t is None:
            continue
        if t.device != x.device:
            raise RuntimeError(f"{op}: {name} must be on x's device {x.device}, got {t.device}")
        if t.dtype != x.dtype:
            raise RuntimeError(f"{op}: {name} must have x's dtype {x.dtype} (the compute dtype), got {t.dtype}")
    for name, t in bases.items():
        if t.requires_grad:
            raise ValueError(f"{op}: {name} is a frozen random basis and must not require grad")
    v = list(vectors.items())
    for name, t in v:
        if t.device != x.device:
            raise RuntimeError(f"{op}: {name} must be on x's device {x.device}, got {t.device}")
        if not t.is_floating_point() or t.dtype not in (x.dtype, torch.float32, torch.float64):
            raise RuntimeError(f"{op}: {name} must have x's dtype {x.dtype} or float32/float64, got {t.dtype}")
    if v[0][1].dtype != v[1][1].dtype:
        raise RuntimeError(f"{op}: {v[0][0]} and {v[1][0]} must share one dtype, got {v[0][1].dtype}, {v[1][1].dtype}")


def randlora_linear(
    x: Tensor,
    weight: Tensor,
    bias,
    basis_A: Tensor,
    basis_B: Tensor,
    lam: Tensor,
    gamma: Tensor,
    scaling: float,
    strategy: str = "auto",
) -> Tensor:
    """RandLoRA linear layer (peft 0.21.2 maths); x (..., in) -> (..., out).  See the module doc."""
    op = "randlora_linear"
    _check_common(op, x, weight, bias, {"basis_A": basis_A, "basis_B": basis_B}, {"lam": lam, "gamma": gamma})
    if weight is not None:
        out_f, in_f = weight.shape
    else:  # adapter branch only (a quantized base computes x W0^T itself): out from the bases
        in_f = x.shape[-1]
        if basis_A.dim() != 2 or basis_B.dim() != 2 or in_f not in (basis_A.shape[1], basis_B.shape[0]):
            raise ValueError(f"{op}: without weight, x.shape[-1] = {in_f} must equal d_min = basis_A.shape[1] or "
                             f"d_max = basis_B.shape[0], got basis_A {shape_of(basis_A)}, basis_B {shape_of(basis_B)}")
        out_f = basis_B.shape[0] if in_f == basis_A.shape[1] else basis_A.shape[1]
    d_min, d_max = min(in_f, out_f), max(in_f, out_f)
    if lam.dim() != 2 or lam.shape[0] < 1 or lam.shape[1] < 1:
        raise ValueError(f"{op}: lam (randlora_lambda) must be 2-D (r, n), got {shape_of(lam)}")
    r, n = lam.shape
    if r * n < d_min:
        raise ValueError(f"{op}: r * n = {r * n} must be >= min(in, out) = {d_min} (n = ceil(d_min / r)), got lam {shape_of(lam)}")
    if tuple(basis_A.shape) != (r, d_min):
        raise ValueError(f"{op}: basis_A must have shape (r, d_min) = {(r, d_min)}, got {shape_of(basis_A)}")
    if tuple(basis_B.shape) != (d_max, r * n):
        raise ValueError(f"{op}: basis_B must have shape (d_max, r*n) = {(d_max, r * n)}, got {shape_of(basis_B)}")
    if tuple(gamma.shape) != (n, d_min):
        raise ValueError(f"{op}: gamma (randlora_gamma) must have shape (n, d_min) = {(n, d_min)}, got {shape_of(gamma)}")
    if bias is not None and tuple(bias.shape) != (out_f,):
        raise ValueError(f"{op}: bias must have shape ({out_f},), got {shape_of(bias)}")
    s = _strategy(op, strategy)
    lead = x.shape[:-1]
    # Basis on the output side (in > out): keep h = x Bbar (tokens, r*n) for backward instead of
    # x (tokens, in) when it is smaller and no weight gradient needs x.
    save_h = (in_f > out_f and r * n < in_f and torch.is_grad_enabled() and not (weight is not None and weight.requires_grad)
              and (lam.requires_grad or gamma.requires_grad))
    y, _ = _ops.randlora_linear(x.reshape(-1, in_f), weight, bias, basis_A, basis_B, lam, gamma, float(scaling), s, save_h)
    return y.reshape(*lead, out_f)


def vera_linear(
    x: Tensor,
    weight: Tensor,
    bias,
    vera_A: Tensor,
    vera_B: Tensor,
    lambda_d: Tensor,
    lambda_b: Tensor,
    strategy: str = "auto",
) -> Tensor:
    """VeRA linear layer (peft 0.21.2 maths); x (..., in) -> (..., out).  See the module doc."""
    op = "vera_linear"
    _check_common(op, x, weight, bias, {"vera_A": vera_A, "vera_B": vera_B}, {"lambda_d": lambda_d, "lambda_b": lambda_b})
    # without weight: the adapter branch only (a quantized base computes x W0^T itself)
    out_f, in_f = (weight.shape if weight is not None else (vera_B.shape[0] if vera_B.dim() == 2 else -1, x.shape[-1]))
    if lambda_d.dim() != 1 or lambda_d.shape[0] < 1:
        raise ValueError(f"{op}: lambda_d must be 1-D (r,), got {shape_of(lambda_d)}")
    r = lambda_d.shape[0]
    if tuple(vera_A.shape) != (r, in_f):
        raise ValueError(f"{op}: vera_A must have shape (r, in) = {(r, in_f)}, got {shape_of(vera_A)}")
    if tuple(vera_B.shape) != (out_f, r):
        raise ValueError(f"{op}: vera_B must have shape (out, r) = {(out_f, r)}, got {shape_of(vera_B)}")
    if tuple(lambda_b.shape) != (out_f,):
        raise ValueError(f"{op}: lambda_b must have shape ({out_f},), got {shape_of(lambda_b)}")
    if bias is not None and tuple(bias.shape) != (out_f,):
        raise ValueError(f"{op}: bias must have shape ({out_f},), got {shape_of(bias)}")
    s = _strategy(op, strategy)
    save_h = torch.is_grad_enabled() and (lambda_d.requires_grad or lambda_b.requires_grad)
    lead = x.shape[:-1]
    y, _ = _ops.vera_linear(x.reshape(-1, in_f), weight, bias, vera_A, vera_B, lambda_d, lambda_b, s, save_h)
    return y.reshape(*lead, out_f)


def randbasis_plan(method: str, tokens: int, in_features: int, out_features: int, rank: int,
                   strategy: str = "auto", grads=(True, False, True), elem_bytes: int = 4, from_h=None) -> dict:
    """The cost model's choice for one call (``method`` "randlora" with rank = r*n, or "vera"
    with rank = r): forward/backward strategy, panel rows and multiply-adds of each phase.
    ``grads`` = (x, weight, adapter); ``from_h`` (default: what ``randlora_linear`` does for a
    frozen weight, i.e. in > out and r*n < in) = the backward uses the saved h = x Bbar."""
    if from_h is None:
        from_h = method == "randlora" and in_features > out_features and rank < in_features and not grads[1] and grads[2]
    f, b, rows, fm, bm = _ops.randbasis_plan(method, tokens, in_features, out_features, rank,
                                              _strategy("randbasis_plan", strategy), list(grads) + [bool(from_h)],
                                              elem_bytes)
    return {"forward": _STRATEGY_NAMES[f], "backward": _STRATEGY_NAMES[b], "panel_rows": rows,
            "forward_macs": fm, "backward_macs": bm}


# ----------------------------------------------------------------------------------------------
# fake (meta) kernels
# ----------------------------------------------------------------------------------------------
def _randlora_out_features(x, weight, basis_A, basis_B):
    if weight is not None:
        return weight.shape[0]
    return basis_B.shape[0] if x.shape[1] == basis_A.shape[1] else basis_A.shape[1]


@torch.library.register_fake("structops::randlora_linear")
def _randlora_fake(x, weight, bias, basis_A, basis_B, lam, gamma, scaling, strategy=0, save_h=False):
    torch._check(x.dim() == 2, lambda: "x must be 2-D")
    h = x.new_empty((x.shape[0], basis_B.shape[1])) if save_h else x.new_empty((0,))
    return x.new_empty((x.shape[0], _randlora_out_features(x, weight, basis_A, basis_B))), h


@torch.library.register_fake("structops::randlora_linear_backward")
def _randlora_backward_fake(grad, x, h, weight, basis_A, basis_B, lam, gamma, scaling, strategy, output_mask):
    e, ev = x.new_empty((0,)), lam.new_empty((0,))
    return (x.new_empty(x.shape) if output_mask[0] else e,
            x.new_empty(weight.shape) if output_mask[1] and weight is not None else e,
            lam.new_empty(lam.shape) if output_mask[2] else ev, lam.new_empty(gamma.shape) if output_mask[3] else ev)


@torch.library.register_fake("structops::vera_linear")
def _vera_fake(x, weight, bias, vera_A, vera_B, lambda_d, lambda_b, strategy=0, save_h=True):
    torch._check(x.dim() == 2, lambda: "x must be 2-D")
    h = x.new_empty((x.shape[0], vera_A.shape[0])) if save_h else x.new_empty((0,))
    return x.new_empty((x.shape[0], vera_B.shape[0])), h


@torch.library.register_fake("structops::vera_linear_backward")
def _vera_backward_fake(grad, x, h, weight, vera_A, vera_B, lambda_d, lambda_b, strategy, output_mask):
    e, ev = grad.new_empty((0,)), lambda_d.new_empty((0,))
    return (grad.new_empty((grad.shape[0], vera_A.shape[1])) if output_mask[0] else e,
            grad.new_empty(weight.shape) if output_mask[1] and weight is not None else e,
            lambda_d.new_empty(lambda_d.shape) if output_mask[2] else ev,
            lambda_d.new_empty(lambda_b.shape) if output_mask[3] else ev)


# ----------------------------------------------------------------------------------------------
# autograd
# ----------------------------------------------------------------------------------------------
def _zero_like(shape, like: Tensor) -> Tensor:
    return like.new_zeros(()).expand(shape)


def _randlora_setup(ctx, inputs, output):
    x, weight, bias, basis_A, basis_B, lam, gamma, scaling, strategy, save_h = inputs
    ctx.scaling, ctx.strategy, ctx.x_shape = scaling, strategy, x.shape
    _, h = output
    # x is read only for the weight-side gradients (lam, gamma, weight), in its own dtype (never
    # an fp32 copy); with save_h the smaller h = x Bbar replaces it
    need_x = ctx.needs_input_grad[1] or (any(ctx.needs_input_grad[i] for i in (5, 6)) and not save_h)
    ctx.save_for_backward(x if need_x else None, h if save_h else None, weight, basis_A, basis_B, lam, gamma)
    ctx.set_materialize_grads(False)


def _randlora_backward(ctx, grad, _grad_h):
    x, h, weight, basis_A, basis_B, lam, gamma = ctx.saved_tensors
    if grad is None:
        return (None,) * 10
    if x is None:
        x = _zero_like(ctx.x_shape, basis_A)
    if h is None:
        h = basis_A.new_empty((0,))
    ni = ctx.needs_input_grad
    mask = [bool(ni[0]), bool(ni[1]), bool(ni[5]), bool(ni[6])]
    dx, dw, dlam, dgamma = _ops.randlora_linear_backward(
        grad, x, h, weight, basis_A, basis_B, lam, gamma, ctx.scaling, ctx.strategy, mask)
    dbias = grad.sum(0) if ni[2] else None
    return (dx if mask[0] else None, dw if mask[1] else None, dbias, None, None,
            dlam if mask[2] else None, dgamma if mask[3] else None, None, None, None)


def _vera_setup(ctx, inputs, output):
    x, weight, bias, vera_A, vera_B, lambda_d, lambda_b, strategy, save_h = inputs
    ctx.strategy, ctx.x_shape = strategy, x.shape
    _, h = output
    need_h = ctx.needs_input_grad[5] or ctx.needs_input_grad[6]
    ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, h if need_h else None,
                          weight, vera_A, vera_B, lambda_d, lambda_b)
    ctx.set_materialize_grads(False)


def _vera_backward(ctx, grad, _grad_h):
    x, h, weight, vera_A, vera_B, lambda_d, lambda_b = ctx.saved_tensors
    ni = ctx.needs_input_grad
    if grad is None:
        return (None,) * 9
    if x is None:
        x = _zero_like(ctx.x_shape, vera_A)
    if h is None:
        h = vera_A.new_empty((0,))
    mask = [bool(ni[0]), bool(ni[1]), bool(ni[5]), bool(ni[6])]
    dx, dw, dld, dlb = _ops.vera_linear_backward(
        grad, x, h, weight, vera_A, vera_B, lambda_d, lambda_b, ctx.strategy, mask)
    dbias = grad.sum(0) if ni[2] else None
    return (dx if mask[0] else None, dw if mask[1] else None, dbias, None, None,
            dld if mask[2] else None, dlb if mask[3] else None, None, None)


torch.library.register_autograd("structops::randlora_linear", _randlora_backward, setup_context=_randlora_setup)
torch.library.register_autograd("structops::vera_linear", _vera_backward, setup_context=_vera_setup)


def _no_double_backward(op: str):
    def backward(ctx, *grads):
        raise RuntimeError(
            f"structops: double backward through structops::{op}_backward is not supported (the first "
            f"backward is a fused GEMM orchestration without a derivative). Use the pure-torch "
            f"structops.reference.{op} for higher-order gradients."
        )

    torch.library.register_autograd(f"structops::{op}_backward", backward, setup_context=lambda ctx, inputs, output: None)


_no_double_backward("randlora_linear")
_no_double_backward("vera_linear")
