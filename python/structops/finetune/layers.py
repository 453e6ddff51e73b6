"""Adapter layers ``structops.adapt`` puts in place of a frozen ``nn.Linear`` (base) — one per
method that has no layer elsewhere (RandLoRA / VeRA live in ``structops.nn.randbasis``).

Every layer keeps the original linear as ``base_layer`` (frozen; never written except by
``merge()``), and offers

* ``adapted_weight()``: the dense (out, in) weight the layer applies (no grad; base dtype);
* ``merge()`` / ``unmerge()``: write ``adapted_weight()`` into the base weight / restore it bit
  for bit (``structops.nn._merge`` keeps a copy of W0 while merged); merged, ``forward`` is the
  base layer's;
* ``merged_module()``: a new ``nn.Linear`` (or ``LowRankLinear`` for WeLore's factored form)
  with the adapted weight, for ``merge_and_unload``.

Layers (x (..., in) -> (..., out)).  Trainable values are float32 for a bfloat16 / float16 base
(cast to the input's dtype in forward, as peft's ``autocast_adapter_dtype=True``), the base's
dtype otherwise; Monarch and butterfly factors stay in the base's dtype (their ops take one
dtype).

* ``LoRALinear(base, r=8, alpha=8, dropout=0)``: peft's LoRA — ``lora_A`` (r, in)
  kaiming-uniform(a=√5), ``lora_B`` (out, r) = 0, scaling alpha / r; y = base(x) + s·(x Aᵀ)Bᵀ,
  run as one ``structops.sparse_lowrank_linear`` (W0, B, A, no sparse part: the structops kernels
  on CPU and CUDA); with dropout > 0 in training the adapter sees dropout(x) (peft).
* ``SLTrainAdapter(base, rank=8, density=0.01, alpha=1)``: SLTrain's fine-tuning variant
  W0 + (alpha / rank)·B A + S, names ``lora_B``, ``lora_A``, ``sparse_value``, ``sparse_index``
  (int32) as ``structops.nn.SLTrainLinear``; B = S = 0 at init, A kaiming-uniform, the support
  from ``seed``.  W0 is the base weight itself (no copy).
* ``MonarchAdapter(base, nblocks=4, residual=True)``: a ``MonarchLinear`` ``monarch`` initialised
  with the Frobenius-optimal Monarch projection M0 of W0 (``projection_rel_err`` recorded).
  ``residual=True``: y = base(x) + monarch(x) − monarch_init(x) — equal to the base at init,
  the frozen copy ``monarch_init`` holds M0; ``residual=False``: the layer *is* the projection,
  y = monarch(x) + b (the base weight is unused but kept for unmerge / unload).
* ``ButterflyAdapter(base, nblocks=1)``: a multiplicative input transform (BOFT-style, not
  orthogonality-constrained): y = base(T x) with T a ``structops.nn.Butterfly`` (in -> in,
  identity init, no bias, ``nblocks`` · log2 n factors, n = 2^⌈log2 in⌉), so W' = W0 · T.
* ``SVFitLinear(base, U, S, Vh)``: SVFit — frozen ``svfit_U`` (out, r), ``svfit_Vh`` (r, in),
  ``svfit_sigma0`` (r,), trainable ``svfit_sigma`` (r,) = σ at init; W' = W0 + U diag(σ − σ0) Vh
  (W = W_r + W_e with W_e frozen, written without storing W_e).  ``strategy``: "factored"
  (x Vhᵀ scaled, times Uᵀ, through ``sparse_lowrank_linear``), "merged" (one GEMM with W'), or
  "auto" (a FLOP model: with gradients merged pays only for r ≳ min(in, out) / 6, since it
  needs the dense weight gradient; without, when tokens · (in + out) > in · out).
* ``WeLoreLinear(base, U, S, Vh)``: a WeLore low-rank component — trainable ``welore_B`` =
  U√S (out, k), ``welore_A`` = √S Vh (k, in); y = (x Aᵀ)Bᵀ + b (the pruned spectrum is gone:
  a compression).  ``merged_module(factored=True)`` returns a ``LowRankLinear``.
* ``SSTLinear(base, U, S, Vh, r)`` (experimental): SST's spectral parametrisation — trainable
  ``sst_U`` (out, m), ``sst_sigma`` (m,), ``sst_Vh`` (m, in), m = min(in, out), W = U diag(σ) Vh;
  every σ trains, only the r singular-vector pairs in ``sst_mask`` get U/Vh gradients (masked
  in forward: gradients of other columns are exactly 0 under DDP, FSDP2 and compile alike).
  ``resample(generator)`` draws r pairs by multinomial sampling without replacement with
  probability ∝ σ; ``resvd()`` re-orthonormalises (SVD of the current W, written in place into
  the same parameters, so optimizers keep their references; their state is not reset).
  Unverified against the paper (finetune.md §6): the "enhanced gradient" rule (not applied),
  the round length, and whether unsampled vectors are frozen in a dense residual (here they are
  part of W and frozen, not merged).
"""

from __future__ import annotations

import abc
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn._merge import has_stash, restore_base_weight, stash_base_weight
from ..nn.butterfly import Butterfly
from ..nn.linear import MonarchLinear
from ..nn.sltrain import random_support
from ..ops.sparse_lowrank import sparse_lowrank_linear
from ..reference import sparse_lowrank_weight

__all__ = ["FinetuneAdapter", "LoRALinear", "SLTrainAdapter", "MonarchAdapter", "ButterflyAdapter", "SVFitLinear",
           "WeLoreLinear", "SSTLinear", "LowRankLinear", "linear_with_weight"]


def _no_sparse(ref: Tensor) -> tuple[Tensor, Tensor]:
    return ref.new_zeros(0), torch.zeros(0, dtype=torch.int32, device=ref.device)


def linear_with_weight(base: nn.Linear, weight: Tensor) -> nn.Linear:
    """A new nn.Linear like ``base`` (bias copied) holding ``weight``."""
    lin = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None, device=base.weight.device,
                    dtype=base.weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if base.bias is not None:
            lin.bias.copy_(base.bias)
    return lin


def _check_rank(cls: str, name: str, r, in_f: int, out_f: int) -> int:
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise ValueError(f"{cls}: {name} must be a positive int, got {r!r}")
    if r >= min(in_f, out_f):
        raise ValueError(f"{cls}: {name}={r} must be < min(in_features, out_features) = {min(in_f, out_f)} "
                         f"(a rank that large is not parameter-efficient; train the layer densely instead)")
    return r


class FinetuneAdapter(nn.Module, metaclass=abc.ABCMeta):
    """Merge bookkeeping and the frozen base (see the module doc)."""

    def __init__(self, base_linear: nn.Linear):
        super().__init__()
        if not isinstance(base_linear, nn.Linear):
            raise ValueError(f"{type(self).__name__}: expected a torch.nn.Linear base, got {type(base_linear).__name__}")
        self.base_layer = base_linear
        for p in base_linear.parameters():
            p.requires_grad_(False)
        self.in_features, self.out_features = base_linear.in_features, base_linear.out_features
        w = base_linear.weight
        # trainable values of a bf16 / fp16 base are kept in float32 and cast to the input's dtype
        # in forward (peft's autocast_adapter_dtype=True); fp32 / fp64 bases: their own dtype
        self.master_dtype = torch.float32 if w.dtype in (torch.float16, torch.bfloat16) else w.dtype
        self.merged = False

    # every subclass defines adapted_weight() (the dense weight it applies, no grad) and
    # adapter_forward(x) (its unmerged forward); they are abstract methods
    @abc.abstractmethod
    def adapted_weight(self) -> Tensor: ...

    @abc.abstractmethod
    def adapter_forward(self, x: Tensor) -> Tensor: ...

    def forward(self, x: Tensor) -> Tensor:
        if self.merged:
            return self.base_layer(x)
        return self.adapter_forward(x)

    def merge(self) -> None:
        if self.merged:
            raise RuntimeError(f"{type(self).__name__}.merge(): already merged; call unmerge() first")
        w = self.base_layer.weight
        with torch.no_grad():
            new = self.adapted_weight().to(w.dtype)
            if not torch.isfinite(new).all():
                raise RuntimeError(f"{type(self).__name__}.merge(): the merged weight is not finite; nothing changed")
            stash_base_weight(self, w)
            w.copy_(new)
        self.merged = True

    def unmerge(self) -> None:
        if not self.merged or not has_stash(self):
            raise RuntimeError(f"{type(self).__name__}.unmerge(): not merged")
        with torch.no_grad():
            restore_base_weight(self, self.base_layer.weight)
        self.merged = False

    def _unmerged_base_weight_value(self) -> Tensor:
        return self._unmerged_base_weight if self.merged else self.base_layer.weight

    def merged_module(self) -> nn.Module:
        return linear_with_weight(self.base_layer, self.adapted_weight())


class LoRALinear(FinetuneAdapter):
    def __init__(self, base_linear: nn.Linear, r: int = 8, alpha: float = 8.0, dropout: float = 0.0):
        super().__init__(base_linear)
        cls = "LoRALinear"
        self.r = _check_rank(cls, "r", r, self.in_features, self.out_features)
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"{cls}: dropout must be in [0, 1), got {dropout!r}")
        w = base_linear.weight
        self.alpha, self.scaling = float(alpha), float(alpha) / self.r
        md = self.master_dtype
        self.lora_A = nn.Parameter(torch.empty(self.r, self.in_features, device=w.device, dtype=md))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, self.r, device=w.device, dtype=md))
        self.dropout = nn.Dropout(float(dropout)) if dropout > 0 else nn.Identity()

    def delta_weight(self) -> Tensor:
        return self.scaling * (self.lora_B @ self.lora_A)

    def adapted_weight(self) -> Tensor:
        with torch.no_grad():
            return self._unmerged_base_weight_value() + self.delta_weight()

    def adapter_forward(self, x: Tensor) -> Tensor:
        base = self.base_layer
        a, b = self.lora_A.to(x.dtype), self.lora_B.to(x.dtype)
        if self.training and isinstance(self.dropout, nn.Dropout):
            return base(x) + self.scaling * F.linear(F.linear(self.dropout(x), a), b)
        v, i = _no_sparse(x)
        return sparse_lowrank_linear(x, b, a, v, i, self.scaling, base.bias, base.weight)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, scaling={self.scaling:g}"


class SLTrainAdapter(FinetuneAdapter):
    def __init__(self, base_linear: nn.Linear, rank: int = 8, density: float = 0.01, alpha: float = 1.0, seed: int = 0):
        super().__init__(base_linear)
        cls = "SLTrainAdapter"
        self.rank = _check_rank(cls, "rank", rank, self.in_features, self.out_features)
        w = base_linear.weight
        self.density, self.alpha = float(density), float(alpha)
        self.scale = self.alpha / self.rank
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        self.register_buffer("sparse_index", random_support(self.out_features, self.in_features, density, gen).to(w.device))
        md = self.master_dtype
        a = torch.empty(self.rank, self.in_features, dtype=md)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=gen)
        self.lora_A = nn.Parameter(a.to(w.device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, self.rank, device=w.device, dtype=md))
        self.sparse_value = nn.Parameter(torch.zeros(self.sparse_index.numel(), device=w.device, dtype=md))

    def adapted_weight(self) -> Tensor:
        with torch.no_grad():
            return sparse_lowrank_weight(self.lora_B, self.lora_A, self.sparse_value, self.sparse_index, self.scale,
                                         self._unmerged_base_weight_value())

    def adapter_forward(self, x: Tensor) -> Tensor:
        base = self.base_layer
        dt = x.dtype
        return sparse_lowrank_linear(x, self.lora_B.to(dt), self.lora_A.to(dt), self.sparse_value.to(dt), self.sparse_index,
                                     self.scale, base.bias, base.weight)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"nnz={self.sparse_index.numel()}")


class MonarchAdapter(FinetuneAdapter):
    def __init__(self, base_linear: nn.Linear, nblocks: int = 4, residual: bool = True):
        super().__init__(base_linear)
        w = base_linear.weight
        self.nblocks, self.residual = nblocks, bool(residual)
        self.monarch = MonarchLinear.from_dense(w.detach(), None, nblocks=nblocks)
        self.projection_rel_err = self.monarch.projection_rel_err
        if self.residual:
            self.monarch_init = MonarchLinear.from_dense(w.detach(), None, nblocks=nblocks)
            self.monarch_init.requires_grad_(False)

    def adapted_weight(self) -> Tensor:
        with torch.no_grad():
            m = self.monarch.to_dense()
            if self.residual:
                return self._unmerged_base_weight_value() + (m - self.monarch_init.to_dense())
            return m

    def adapter_forward(self, x: Tensor) -> Tensor:
        if self.residual:
            return self.base_layer(x) + (self.monarch(x) - self.monarch_init(x))
        y = self.monarch(x)
        b = self.base_layer.bias
        return y if b is None else y + b

    def extra_repr(self) -> str:
        return f"nblocks={self.nblocks}, residual={self.residual}, projection_rel_err={self.projection_rel_err:.3g}"


class ButterflyAdapter(FinetuneAdapter):
    def __init__(self, base_linear: nn.Linear, nblocks: int = 1):
        super().__init__(base_linear)
        w = base_linear.weight
        if isinstance(nblocks, bool) or not isinstance(nblocks, int) or nblocks <= 0:
            raise ValueError(f"ButterflyAdapter: nblocks must be a positive int, got {nblocks!r}")
        t = Butterfly(self.in_features, self.in_features, bias=False, init="identity", nblocks=nblocks)
        self.butterfly = t.to(device=w.device, dtype=w.dtype)

    def adapted_weight(self) -> Tensor:
        with torch.no_grad():
            return self._unmerged_base_weight_value() @ self.butterfly.to_dense()

    def adapter_forward(self, x: Tensor) -> Tensor:
        return self.base_layer(self.butterfly(x))


def _auto_merged(strategy: str, x: Tensor, in_f: int, out_f: int, r: int, need_grad: bool) -> bool:
    """SVFit / SST plan choice by FLOPs beyond the shared x·Wᵀ products (T tokens, rank r):
    factored: x·Vhᵀ and ·Uᵀ, three times over with gradients — (6 or 2)·T·r·(in + out);
    merged: forming U diag(σ) Vh (2·out·r·in) and, with gradients, the dense weight gradient
    gᵀx (2·T·in·out) and its projection onto the factors (4·out·in·r).  So with gradients the
    merged plan pays only for r above about min(in, out) / 6; without them, above
    T·(in + out) ≈ in·out."""
    if strategy != "auto":
        return strategy == "merged"
    tokens = x.numel() // max(x.shape[-1], 1)
    factored = (6 if need_grad else 2) * tokens * r * (in_f + out_f)
    merged = 2 * out_f * r * in_f + ((2 * tokens * in_f * out_f + 4 * out_f * in_f * r) if need_grad else 0)
    return merged < factored


_STRATEGIES = ("auto", "factored", "merged")


def _check_strategy(cls: str, strategy: str) -> str:
    if strategy not in _STRATEGIES:
        raise ValueError(f"{cls}: strategy must be one of {_STRATEGIES}, got {strategy!r}")
    return strategy


def _check_triplet(cls: str, base: nn.Linear, U: Tensor, S: Tensor, Vh: Tensor) -> None:
    out_f, in_f = base.out_features, base.in_features
    if U.dim() != 2 or S.dim() != 1 or Vh.dim() != 2 or U.shape[0] != out_f or Vh.shape[1] != in_f \
            or not (U.shape[1] == S.shape[0] == Vh.shape[0]):
        raise ValueError(f"{cls}: expected U (out={out_f}, r), S (r,), Vh (r, in={in_f}), got "
                         f"{tuple(U.shape)}, {tuple(S.shape)}, {tuple(Vh.shape)}")


class SVFitLinear(FinetuneAdapter):
    def __init__(self, base_linear: nn.Linear, U: Tensor, S: Tensor, Vh: Tensor, strategy: str = "auto"):
        super().__init__(base_linear)
        _check_triplet("SVFitLinear", base_linear, U, S, Vh)
        self.strategy = _check_strategy("SVFitLinear", strategy)
        w = base_linear.weight
        fk = {"device": w.device, "dtype": w.dtype}
        self.r = S.shape[0]
        # clones: U / S / Vh may be a spectrum store's cached tensors, which must never alias a layer's
        self.register_buffer("svfit_U", U.detach().to(**fk).clone(memory_format=torch.contiguous_format))
        self.register_buffer("svfit_Vh", Vh.detach().to(**fk).clone(memory_format=torch.contiguous_format))
        self.register_buffer("svfit_sigma0", S.detach().to(device=w.device, dtype=self.master_dtype).clone())
        self.svfit_sigma = nn.Parameter(S.detach().to(device=w.device, dtype=self.master_dtype).clone())

    def delta_sigma(self) -> Tensor:
        return self.svfit_sigma - self.svfit_sigma0

    def delta_weight(self) -> Tensor:
        md = self.master_dtype
        return (self.svfit_U.to(md) * self.delta_sigma()) @ self.svfit_Vh.to(md)

    def adapted_weight(self) -> Tensor:
        with torch.no_grad():
            return self._unmerged_base_weight_value() + self.delta_weight()

    def adapter_forward(self, x: Tensor) -> Tensor:
        base = self.base_layer
        need_grad = torch.is_grad_enabled() and self.svfit_sigma.requires_grad
        if _auto_merged(self.strategy, x, self.in_features, self.out_features, self.r, need_grad):
            return F.linear(x, base.weight + self.delta_weight().to(x.dtype), base.bias)
        v, i = _no_sparse(x)
        return sparse_lowrank_linear(x, self.svfit_U * self.delta_sigma().to(x.dtype), self.svfit_Vh, v, i, 1.0,
                                     base.bias, base.weight)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, strategy={self.strategy!r}"


class LowRankLinear(nn.Module):
    """y = (x Aᵀ) Bᵀ + bias with A (k, in), B (out, k): two skinny GEMMs (WeLore's LowRankLayer)."""

    def __init__(self, B: Tensor, A: Tensor, bias: Tensor | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.out_features, self.rank = B.shape
        self.in_features = A.shape[1]
        self.weight_B = nn.Parameter(B.detach().to(dtype or B.dtype).clone())
        self.weight_A = nn.Parameter(A.detach().to(dtype or A.dtype).clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(F.linear(x, self.weight_A), self.weight_B, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


class WeLoreLinear(FinetuneAdapter):
    def __init__(self, base_linear: nn.Linear, U: Tensor, S: Tensor, Vh: Tensor):
        super().__init__(base_linear)
        _check_triplet("WeLoreLinear", base_linear, U, S, Vh)
        w = base_linear.weight
        root = S.detach().clamp_min(0).sqrt()
        self.rank = S.shape[0]
        md = self.master_dtype
        self.welore_B = nn.Parameter((U.detach() * root).to(device=w.device, dtype=md).contiguous())
        self.welore_A = nn.Parameter((root[:, None] * Vh.detach()).to(device=w.device, dtype=md).contiguous())

    def adapted_weight(self) -> Tensor:
        with torch.no_grad():
            return self.welore_B @ self.welore_A

    def adapter_forward(self, x: Tensor) -> Tensor:
        return F.linear(F.linear(x, self.welore_A.to(x.dtype)), self.welore_B.to(x.dtype), self.base_layer.bias)

    def merged_module(self, factored: bool = True) -> nn.Module:
        if not factored:
            return super().merged_module()
        return LowRankLinear(self.welore_B, self.welore_A, self.base_layer.bias, dtype=self.base_layer.weight.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


class SSTLinear(FinetuneAdapter):
    def __init__(self, base_linear: nn.Linear, U: Tensor, S: Tensor, Vh: Tensor, r: int, strategy: str = "auto",
                 generator: torch.Generator | None = None):
        super().__init__(base_linear)
        _check_triplet("SSTLinear", base_linear, U, S, Vh)
        self.strategy = _check_strategy("SSTLinear", strategy)
        m = S.shape[0]
        self.r = _check_rank("SSTLinear", "r", r, self.in_features, self.out_features)
        if self.r > m:
            raise ValueError(f"SSTLinear: r={r} exceeds the {m} singular pairs given")
        w = base_linear.weight
        fk = {"device": w.device, "dtype": self.master_dtype}
        # clones: never alias a spectrum store's cached tensors (training writes these in place)
        self.sst_U = nn.Parameter(U.detach().to(**fk).clone(memory_format=torch.contiguous_format))
        self.sst_sigma = nn.Parameter(S.detach().to(**fk).clone())
        self.sst_Vh = nn.Parameter(Vh.detach().to(**fk).clone(memory_format=torch.contiguous_format))
        self.register_buffer("sst_mask", torch.zeros(m, **fk))
        self.resample(generator)

    @torch.no_grad()
    def resample(self, generator: torch.Generator | None = None) -> Tensor:
        """Draw r pairs ∝ σ (multinomial, no replacement; a CPU generator); returns their indices."""
        p = self.sst_sigma.detach().abs().double().cpu()
        if not torch.isfinite(p).all() or float(p.sum()) <= 0:
            p = torch.ones_like(p)
        idx = torch.multinomial(p, self.r, replacement=False, generator=generator)
        self.sst_mask.zero_()
        self.sst_mask[idx.to(self.sst_mask.device)] = 1
        return idx

    @torch.no_grad()
    def resvd(self) -> None:
        """SVD of the current W = U diag(σ) Vh, written into the same parameters."""
        wdt = torch.float64 if self.sst_U.dtype == torch.float64 else torch.float32
        u, s, vh = torch.linalg.svd((self.sst_U.to(wdt) * self.sst_sigma.to(wdt)) @ self.sst_Vh.to(wdt),
                                    full_matrices=False)
        m = self.sst_sigma.shape[0]
        self.sst_U.copy_(u[:, :m])
        self.sst_sigma.copy_(s[:m])
        self.sst_Vh.copy_(vh[:m])

    def _factors(self) -> tuple[Tensor, Tensor]:
        keep = self.sst_mask.bool()  # gradients reach only the sampled pairs' columns / rows
        u = torch.where(keep, self.sst_U, self.sst_U.detach())
        vh = torch.where(keep[:, None], self.sst_Vh, self.sst_Vh.detach())
        return u * self.sst_sigma, vh

    def _factors_in(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        us, vh = self._factors()
        return us.to(dtype), vh.to(dtype)

    def adapted_weight(self) -> Tensor:
        with torch.no_grad():
            return (self.sst_U * self.sst_sigma) @ self.sst_Vh

    def adapter_forward(self, x: Tensor) -> Tensor:
        us, vh = self._factors_in(x.dtype)
        b = self.base_layer.bias
        need_grad = torch.is_grad_enabled() and self.sst_sigma.requires_grad
        if _auto_merged(self.strategy, x, self.in_features, self.out_features, self.sst_sigma.shape[0], need_grad):
            return F.linear(x, us @ vh, b)
        v, i = _no_sparse(x)
        return sparse_lowrank_linear(x, us, vh, v, i, 1.0, b)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, pairs={self.sst_sigma.shape[0]}, "
                f"r={self.r}, strategy={self.strategy!r}")
