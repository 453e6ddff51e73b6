"""dW of RandLoRA / VeRA and merging it into a base layer, plain or quantized.

* ``randlora_delta_weight(basis_A, basis_B, lam, gamma, scaling, in_features, out_features)`` and
  ``vera_delta_weight(vera_A, vera_B, lambda_d, lambda_b)``: dW (out, in) in float32 (float64 if
  any input is), peft's *layer* formula (``peft/tuners/randlora/layer.py``), vectorised.  (peft
  0.21.2's bitsandbytes RandLoRA layers use a different formula, ``update_B @ update_A``, which
  is a shape error on non-square layers and a wrong matrix on square ones — reproduced in
  ``tests/test_randbasis.py``.)
* ``is_quantized(layer)``: a bitsandbytes ``Linear8bitLt`` / ``Linear4bit`` (int8 / packed 4-bit
  weight).  ``dequantized_weight(layer)`` -> (out, in) float32; ``set_weight(layer, w)`` writes
  w into the layer — in place for a floating weight, re-quantized with the layer's own settings
  (8-bit: row-wise absmax; 4-bit: quant_type, blocksize, compress_statistics, quant_storage) for
  a quantized one.  ``merge_delta(layer, dw, sign=+1)`` = dequantize, add, requantize; the
  caller's layer is unchanged if the result is not finite.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["randlora_delta_weight", "vera_delta_weight", "is_quantized", "dequantized_weight", "set_weight",
           "merge_delta"]


def _wide(*ts) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


def randlora_delta_weight(basis_A: Tensor, basis_B: Tensor, lam: Tensor, gamma: Tensor, scaling: float,
                          in_features: int, out_features: int) -> Tensor:
    """dW (out, in): basis_A (r, d_min), basis_B (d_max, r*n), lam (r, n), gamma (n, d_min)."""
    dt = _wide(basis_A, basis_B, lam, gamma)
    r, n = lam.shape
    ahat = lam.to(dt).unsqueeze(2) * basis_A.to(dt).unsqueeze(1) * gamma.to(dt).unsqueeze(0)  # (r, n, d_min)
    dw = scaling * (basis_B.to(dt) @ ahat.reshape(r * n, -1))  # (d_max, d_min)
    return dw if in_features <= out_features else dw.t()


def vera_delta_weight(vera_A: Tensor, vera_B: Tensor, lambda_d: Tensor, lambda_b: Tensor) -> Tensor:
    """dW (out, in) = diag(lambda_b) B diag(lambda_d) A; vera_A (r, in), vera_B (out, r)."""
    dt = _wide(vera_A, vera_B, lambda_d, lambda_b)
    return (lambda_b.to(dt).unsqueeze(1) * vera_B.to(dt)) @ (lambda_d.to(dt).unsqueeze(1) * vera_A.to(dt))


def _bnb_kind(layer) -> str | None:
    """'8bit' / '4bit' for a bitsandbytes Linear8bitLt / Linear4bit (or subclass), else None;
    bitsandbytes itself is not imported."""
    for cls in type(layer).__mro__:
        if cls.__module__.startswith("bitsandbytes") and cls.__name__ in ("Linear8bitLt", "Linear4bit"):
            return "8bit" if cls.__name__ == "Linear8bitLt" else "4bit"
    return None


def is_quantized(layer) -> bool:
    """A bitsandbytes Linear8bitLt / Linear4bit whose weight is stored quantized."""
    return _bnb_kind(layer) is not None and not layer.weight.is_floating_point()


def dequantized_weight(layer) -> Tensor:
    """The layer's weight (out, in) in float32 (dequantized for a bitsandbytes layer)."""
    kind = _bnb_kind(layer)
    w = layer.weight
    if kind is None or w.is_floating_point():
        return w.detach().float()
    if kind == "8bit":
        scb = getattr(w, "SCB", None)
        if scb is None:
            scb = layer.state.SCB
        if scb is None:
            raise RuntimeError("dequantized_weight: this Linear8bitLt has no row scales (SCB) yet; move it to its device first")
        return w.detach().float() * (scb.float().unsqueeze(1) / 127.0)
    import bitsandbytes.functional as bf

    return bf.dequantize_4bit(w.data, w.quant_state).float().reshape(layer.out_features, layer.in_features)


def set_weight(layer, w: Tensor) -> None:
    """Write w (out, in) into the layer: in place for a floating weight, re-quantized with the
    layer's own settings for a bitsandbytes one."""
    kind = _bnb_kind(layer)
    old = layer.weight
    if kind is None or old.is_floating_point():
        with torch.no_grad():
            old.copy_(w.to(old.dtype))
        return
    import bitsandbytes as bnb

    dev = old.device
    if kind == "8bit":
        layer.weight = bnb.nn.Int8Params(w.detach().to("cpu", torch.float16 if dev.type == "cuda" else torch.float32),
                                         requires_grad=False, has_fp16_weights=False).to(dev)
        layer.state.reset_grads()
        layer.state.SCB = None
    else:
        layer.weight = bnb.nn.Params4bit(w.detach().to("cpu"), requires_grad=False, quant_type=old.quant_type,
                                         blocksize=old.blocksize, compress_statistics=old.compress_statistics,
                                         quant_storage=old.quant_storage).to(dev)


def merge_delta(layer, dw: Tensor, sign: float = 1.0) -> None:
    """layer.weight (+)= sign * dw, dequantizing / requantizing a bitsandbytes weight.  Raises
    RuntimeError (layer unchanged) if the result is not finite."""
    w = dequantized_weight(layer)
    new = w.to(dw.dtype) + sign * dw
    if not torch.isfinite(new).all():
        raise RuntimeError("merge: the merged weight is not finite; the base layer was left unchanged")
    set_weight(layer, new)
