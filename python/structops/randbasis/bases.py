"""Frozen random bases with peft 0.21.2's exact recipes (``../shared/reference/finetune.md`` §2.3, §3).

RandLoRA (``RandLoraModel._init_randlora_A_randlora_B[_sparse]``), for the model-level maxima
OUT, IN of the targeted layers, D_max = max, D_min = min, N = ceil(D_min / r):

* dense: a CPU ``torch.Generator`` seeded with ``seed`` (peft's ``projection_prng_key``); A =
  ``kaiming_uniform_(a=sqrt(5))`` on an empty (r, 1, D_min) tensor of the *generation dtype*,
  then N draws of (D_max, 1, r) concatenated on dim 1 for B; each divided by its own ``std()``
  (in the generation dtype).  peft generates in bfloat16 when ``accelerate.is_bf16_available()``
  (always on a CPU-only machine; on CUDA when the GPU supports bf16) and in float16 otherwise:
  the dtypes draw *different* sequences, so regeneration is reproducible only on the same path
  (``peft_generation_dtype()`` mirrors accelerate's rule for CPU and CUDA).
* ``sparse``: float32 ``torch.rand`` from the same generator, A (r, 1, D_min) then B (D_max, N,
  r) in one call; u < 1/6 -> -1, u > 5/6 -> +1, else 0; each divided by its std.
  ``very_sparse``: threshold 1/(2 sqrt(D_min)) per side.

VeRA (``VeraModel._init_vera_A_vera_B``): float32, CPU generator seeded with ``seed``; A (r, IN)
then B (OUT, r), each ``uniform_(-b, b)`` with b = sqrt(3) * sqrt(2) / sqrt(fan_in), fan_in = IN
for A and r for B.

``shared_*`` return one tensor per (recipe, shape, seed, dtype, device) while any layer holds
it, so every layer of a model built with the same arguments shares one copy.
"""

from __future__ import annotations

import math
import weakref

import torch
from torch import Tensor

__all__ = ["peft_generation_dtype", "randlora_bases", "vera_bases", "shared_randlora_bases", "shared_vera_bases"]


def peft_generation_dtype() -> torch.dtype:
    """The dtype peft 0.21.2 draws dense RandLoRA bases in on this machine: bfloat16 if
    ``accelerate.utils.is_bf16_available()`` (CPU-only: always; CUDA: ``torch.cuda.is_bf16_supported()``),
    else float16.  TPU/MLU/XPU/MPS rules of accelerate are not mirrored."""
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


def _check_dims(fn: str, **dims) -> None:
    for name, v in dims.items():
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{fn}: {name} must be a positive int, got {v!r}")


def randlora_bases(out_features: int, in_features: int, r: int, seed: int = 0, sparse: bool = False,
                   very_sparse: bool = False, generation_dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """peft's RandLoRA bases for the (model-level maximum) shape: A (r, 1, D_min), B (D_max, N, r),
    in the generation dtype (dense; default ``peft_generation_dtype()``) or float32 (sparse)."""
    _check_dims("randlora_bases", out_features=out_features, in_features=in_features, r=r)
    d_max, d_min = max(out_features, in_features), min(out_features, in_features)
    n = -(-d_min // r)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    if sparse or very_sparse:
        s = math.sqrt(d_min) if very_sparse else 3
        a_u = torch.rand((r, 1, d_min), generator=gen)
        b_u = torch.rand((d_max, n, r), generator=gen)

        def ternary(u: Tensor) -> Tensor:
            t = torch.zeros(u.shape)
            t[u < 1 / (2 * s)] = -1
            t[u > 1 - 1 / (2 * s)] = 1
            return t

        a, b = ternary(a_u), ternary(b_u)
        return a / a.std(), b / b.std()
    dt = generation_dtype or peft_generation_dtype()
    if dt not in (torch.bfloat16, torch.float16, torch.float32, torch.float64):
        raise ValueError(f"randlora_bases: generation_dtype must be a floating dtype, got {dt}")
    with torch.no_grad():
        a = torch.nn.init.kaiming_uniform_(torch.empty((r, 1, d_min), dtype=dt), a=math.sqrt(5), generator=gen)
        b = torch.cat([torch.nn.init.kaiming_uniform_(torch.empty((d_max, 1, r), dtype=dt), a=math.sqrt(5),
                                                      generator=gen) for _ in range(n)], dim=1)
        return a / a.std(), b / b.std()


def vera_bases(out_features: int, in_features: int, r: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """peft's VeRA bases (float32): A (r, in_features), B (out_features, r)."""
    _check_dims("vera_bases", out_features=out_features, in_features=in_features, r=r)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    with torch.no_grad():
        a = torch.empty((r, in_features))
        a.uniform_(-math.sqrt(3.0) * math.sqrt(2) / math.sqrt(in_features),
                   math.sqrt(3.0) * math.sqrt(2) / math.sqrt(in_features), generator=gen)
        b = torch.empty((out_features, r))
        b.uniform_(-math.sqrt(3.0) * math.sqrt(2) / math.sqrt(r), math.sqrt(3.0) * math.sqrt(2) / math.sqrt(r), generator=gen)
    return a, b


_BANK: "weakref.WeakValueDictionary[tuple, Tensor]" = weakref.WeakValueDictionary()


def _shared(key: tuple, make) -> Tensor:
    t = _BANK.get(key)
    if t is None:
        t = make()
        _BANK[key] = t
    return t


def shared_randlora_bases(out_features: int, in_features: int, r: int, seed: int = 0, sparse: bool = False,
                          very_sparse: bool = False, dtype: torch.dtype = torch.float32,
                          device=None) -> tuple[Tensor, Tensor]:
    """``randlora_bases`` cast to ``dtype`` on ``device``, one copy per arguments (see module doc)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    gdt = peft_generation_dtype()
    key = ("randlora", out_features, in_features, r, int(seed), bool(sparse), bool(very_sparse), gdt, dtype, str(device))
    a = _BANK.get(key + ("A",))
    b = _BANK.get(key + ("B",))
    if a is None or b is None:
        a0, b0 = randlora_bases(out_features, in_features, r, seed, sparse, very_sparse)
        a = _shared(key + ("A",), lambda: a0.to(device=device, dtype=dtype))
        b = _shared(key + ("B",), lambda: b0.to(device=device, dtype=dtype))
    return a, b


def shared_vera_bases(out_features: int, in_features: int, r: int, seed: int = 0, dtype: torch.dtype = torch.float32,
                      device=None) -> tuple[Tensor, Tensor]:
    """``vera_bases`` cast to ``dtype`` on ``device``, one copy per arguments."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    key = ("vera", out_features, in_features, r, int(seed), dtype, str(device))
    a = _BANK.get(key + ("A",))
    b = _BANK.get(key + ("B",))
    if a is None or b is None:
        a0, b0 = vera_bases(out_features, in_features, r, seed)
        a = _shared(key + ("A",), lambda: a0.to(device=device, dtype=dtype))
        b = _shared(key + ("B",), lambda: b0.to(device=device, dtype=dtype))
    return a, b
