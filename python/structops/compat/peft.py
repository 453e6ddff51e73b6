"""peft 0.21.2 interop for the random-basis family (RandLoRA, VeRA).

* ``accelerate(peft_model, strategy="auto") -> peft_model`` swaps the ``forward`` of every peft
  RandLoRA / VeRA ``Linear`` layer for the fused structops op, in place.  Module names,
  parameters, buffers and the adapter bookkeeping are untouched, so ``save_pretrained``,
  ``merge_and_unload``, optimizers and ``Trainer`` keep working; ``restore(peft_model)`` undoes it.
  A bitsandbytes 8-bit / 4-bit base runs its own forward and the fused op adds the adapter branch.
  A call the fused path does not cover runs peft's own forward: adapters disabled or merged,
  more than one active adapter, extra forward arguments, ``fan_in_fan_out`` (Conv1D) or another
  base layer type, and dropout > 0 in training mode.
  Deliberate difference: the fused path computes the adapter in the base layer's dtype
  (float32 accumulation inside the GEMMs); peft casts x and the bases to float32 for RandLoRA
  (the fp32 input copy it keeps for backward is exactly what this avoids).  On float32 models
  the two agree to rounding (tested to 1e-6 relative).
* ``merge_and_unload(peft_model) -> base model``: merges every RandLoRA / VeRA adapter with the
  *layer* formula (``structops.randbasis.merge``) — also into bitsandbytes 8-bit / 4-bit base
  layers (dequantize, add dW, requantize), where peft 0.21.2's own RandLoRA merge computes
  ``update_B @ update_A`` (a shape error on non-square layers, a wrong matrix on square ones) —
  then peft's ``unload()``.  Every merged weight is formed and checked first: a non-finite one
  raises before any layer is changed.
* ``save_pretrained(peft_model, save_directory, **kwargs)`` runs peft's ``save_pretrained`` and
  then rewrites each ``adapter_model.safetensors`` with the shared RandLoRA bases stored once
  (peft 0.21.2 writes them once per adapted layer plus once at model level; its own loader
  only needs ``base_model.randlora_A/B``), and, when every basis value is exactly a bfloat16
  (peft draws dense bases in bfloat16), in bfloat16.  Stock peft 0.21.2 loads the result with
  0 output error (tested).  Returns {file: (bytes before, bytes after)}.
"""

from __future__ import annotations

import os
import types

import torch
from torch import nn

from ..ops.randbasis import STRATEGIES, randlora_linear, vera_linear
from ..randbasis.merge import _bnb_kind, dequantized_weight, randlora_delta_weight, set_weight, vera_delta_weight

__all__ = ["accelerate", "restore", "merge_and_unload", "save_pretrained"]


def _peft_layer_types():
    """peft's RandLoRA and VeRA layer bases (their Linear and bitsandbytes Linear8bitLt /
    Linear4bit layers all derive from them)."""
    try:
        from peft.tuners.randlora.layer import RandLoraLayer
        from peft.tuners.vera.layer import VeraLayer
    except ImportError as e:  # pragma: no cover - peft is a test dependency
        raise ImportError("structops.compat.peft needs peft (pip install peft==0.21.2)") from e
    return RandLoraLayer, VeraLayer


def _fused_ok(layer, x, args, kwargs, names) -> str | None:
    """The adapter name the fused path can run, or None to fall back to peft's forward."""
    if args or kwargs or layer.disable_adapters or layer.merged:
        return None
    if getattr(layer, "fan_in_fan_out", False):
        return None
    base = layer.get_base_layer()
    if not (type(base) is nn.Linear and base.weight.is_floating_point()) and _bnb_kind(base) is None:
        return None
    active = [a for a in layer.active_adapters if a in getattr(layer, names)]
    if len(active) != 1:
        return None
    name = active[0]
    drop = layer.randlora_dropout[name] if names == "randlora_lambda" else layer.vera_dropout[name]
    if layer.training and isinstance(drop, nn.Dropout) and drop.p > 0:
        return None
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return None
    return name


def _fused(base, x, op):
    """op(x_c, weight, bias) in the base weight's dtype; for a bitsandbytes base, its own forward
    plus op(x_c, None, None) in the adapter's dtype (peft keeps the vectors in float32)."""
    w = base.weight
    if w.is_floating_point() and _bnb_kind(base) is None:
        return op(x.to(w.dtype), w, base.bias, w.dtype).to(x.dtype)
    y0 = base(x)
    return (y0 + op(x.float(), None, None, torch.float32).to(y0.dtype)).to(x.dtype)


def _randlora_forward(self, x, *args, **kwargs):
    name = _fused_ok(self, x, args, kwargs, "randlora_lambda")
    if name is None:
        return self._structops_peft_forward(x, *args, **kwargs)
    d_min, d_max = min(self.in_features, self.out_features), max(self.in_features, self.out_features)
    a0 = self.randlora_A[name][:, 0, :d_min]
    b0 = self.randlora_B[name][:d_max, : self.num_bases, :].flatten(1)

    def op(xc, w, bias, dt):
        return randlora_linear(xc, w, bias, a0.to(dt), b0.to(dt), self.randlora_lambda[name], self.randlora_gamma[name],
                               self.scaling[name], self._structops_strategy)

    return _fused(self.get_base_layer(), x, op)


def _vera_forward(self, x, *args, **kwargs):
    name = _fused_ok(self, x, args, kwargs, "vera_lambda_d")
    if name is None:
        return self._structops_peft_forward(x, *args, **kwargs)
    a0 = self.vera_A[name][:, : self.in_features]
    b0 = self.vera_B[name][: self.out_features, :]

    def op(xc, w, bias, dt):
        return vera_linear(xc, w, bias, a0.to(dt), b0.to(dt), self.vera_lambda_d[name], self.vera_lambda_b[name],
                           self._structops_strategy)

    return _fused(self.get_base_layer(), x, op)


def accelerate(peft_model: nn.Module, strategy: str = "auto") -> nn.Module:
    """Fused forward for every peft RandLoRA / VeRA Linear in ``peft_model`` (in place; see module doc)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"accelerate: strategy must be one of {sorted(STRATEGIES)}, got {strategy!r}")
    if not isinstance(peft_model, nn.Module):
        raise ValueError(f"accelerate: expected a peft model (torch.nn.Module), got {type(peft_model).__name__}")
    rl, vl = _peft_layer_types()
    found = 0
    for mod in peft_model.modules():
        fwd = _randlora_forward if isinstance(mod, rl) else _vera_forward if isinstance(mod, vl) else None
        if fwd is None:
            continue
        found += 1
        if not hasattr(mod, "_structops_peft_forward"):
            mod._structops_peft_forward = mod.forward
        mod._structops_strategy = strategy
        mod.forward = types.MethodType(fwd, mod)
    if found == 0:
        raise ValueError("accelerate: no peft RandLoRA or VeRA Linear layer found in the model (nothing was changed)")
    return peft_model


def restore(peft_model: nn.Module) -> nn.Module:
    """Undoes ``accelerate``: peft's own forward on every layer again."""
    for mod in peft_model.modules():
        if hasattr(mod, "_structops_peft_forward"):
            mod.forward = mod._structops_peft_forward
            del mod._structops_peft_forward, mod._structops_strategy
    return peft_model


def _layer_delta(layer, name: str):
    """dW (out, in) of one peft RandLoRA / VeRA layer's adapter `name`, the layer formula."""
    RandLoraLayer, VeraLayer = _peft_layer_types()

    if isinstance(layer, RandLoraLayer):
        d_min, d_max = min(layer.in_features, layer.out_features), max(layer.in_features, layer.out_features)
        dw = randlora_delta_weight(layer.randlora_A[name][:, 0, :d_min], layer.randlora_B[name][:d_max, : layer.num_bases, :].flatten(1),
                                   layer.randlora_lambda[name], layer.randlora_gamma[name], layer.scaling[name],
                                   layer.in_features, layer.out_features)
    elif isinstance(layer, VeraLayer):
        dw = vera_delta_weight(layer.vera_A[name][:, : layer.in_features], layer.vera_B[name][: layer.out_features, :],
                               layer.vera_lambda_d[name], layer.vera_lambda_b[name])
    else:
        return None
    return dw.t() if getattr(layer, "fan_in_fan_out", False) else dw


def merge_and_unload(peft_model):
    """Merges every active, unmerged RandLoRA / VeRA adapter with the layer formula (also into
    bitsandbytes 8/4-bit bases), then returns peft's ``unload()`` (see module doc)."""
    RandLoraLayer, VeraLayer = _peft_layer_types()
    todo = []
    for mod in peft_model.modules():
        if isinstance(mod, (RandLoraLayer, VeraLayer)) and not mod.merged and not mod.disable_adapters:
            names = [a for a in mod.active_adapters if a in (mod.randlora_lambda if isinstance(mod, RandLoraLayer) else mod.vera_lambda_d)]
            with torch.no_grad():
                dw = sum(_layer_delta(mod, a) for a in names) if names else None
            if dw is not None:
                if not torch.isfinite(dw).all():
                    raise RuntimeError("merge_and_unload: a non-finite adapter delta; nothing was merged")
                todo.append((mod, dw))
    if not todo:
        raise ValueError("merge_and_unload: no active, unmerged peft RandLoRA or VeRA layer found")
    with torch.no_grad():
        # every merged weight is formed and checked before the first one is written
        new = []
        for mod, dw in todo:
            w = dequantized_weight(mod.get_base_layer()).to(dw.dtype) + dw
            if not torch.isfinite(w).all():
                raise RuntimeError("merge_and_unload: a merged weight is not finite; nothing was merged")
            new.append((mod.get_base_layer(), w))
        for base, w in new:
            set_weight(base, w)
    return peft_model.unload()


def _dedupe_file(path: str) -> tuple[int, int]:
    from safetensors import safe_open
    from safetensors.torch import save_file

    before = os.path.getsize(path)
    with safe_open(path, "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    shared = {k for k in tensors if k in ("base_model.randlora_A", "base_model.randlora_B")}
    if not shared:
        return before, before
    out = {}
    for k, t in tensors.items():
        leaf = k.rsplit(".", 1)[-1]
        if leaf in ("randlora_A", "randlora_B") and k not in shared:
            if not torch.equal(t, tensors[f"base_model.{leaf}"]):
                raise RuntimeError(f"save_pretrained: {k} differs from the shared base_model.{leaf}; not deduplicating")
            continue  # a per-layer copy of the shared basis
        if k in shared and t.dtype == torch.float32 and torch.equal(t.to(torch.bfloat16).to(torch.float32), t):
            t = t.to(torch.bfloat16)  # lossless: peft draws dense bases in bfloat16
        out[k] = t.contiguous()
    save_file(out, path, metadata=meta)
    return before, os.path.getsize(path)


def save_pretrained(peft_model, save_directory: str, **kwargs) -> dict:
    """peft's ``save_pretrained`` with the shared RandLoRA bases written once (see module doc)."""
    peft_model.save_pretrained(save_directory, **kwargs)
    sizes = {}
    for root, _, files in os.walk(save_directory):
        for fn in files:
            if fn == "adapter_model.safetensors":
                p = os.path.join(root, fn)
                sizes[p] = _dedupe_file(p)
    return sizes
