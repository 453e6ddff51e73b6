"""RandLoRA and VeRA adapter layers around a frozen ``nn.Linear``, with peft 0.21.2's parameter
and buffer names, init and maths (``structops.ops.randbasis``; finetune.md §2–3).

``RandLoRALinear(base_linear, r, alpha=640, dropout=0.0, seed=0, sparse=False, very_sparse=False,
strategy="auto", basis_A=None, basis_B=None, scaling_mode="peft")``:

* parameters ``randlora_lambda`` (r, n) = 0 and ``randlora_gamma`` (n, d_min) = 1/d_min (peft's
  ``reset_randlora_parameters``: dW = 0 at init), n = ceil(d_min / r), float32 master weights
  (float64 for a float64 base);
* buffers ``randlora_A`` (r, 1, D_min) and ``randlora_B`` (D_max, N, r) in the base's dtype (the
  compute dtype), sliced per layer as peft does; by default this layer's own shape drawn with
  peft's recipe from ``seed`` and shared with every layer built with the same arguments
  (``structops.randbasis.shared_randlora_bases``); pass peft's model-level tensors to reproduce a
  peft model whose layers have different shapes;
* scaling alpha / r (peft), or alpha / r / sqrt(n) with ``scaling_mode="official"`` (the
  RandLoRA repository's NLG code);
* ``sparse_kernels`` ("auto": when the bases are below 1/8 dense, i.e. ``very_sparse`` at
  D_min >= 64): the adapter runs as two sparse products on the SLTrain kernels
  (``structops.sparse_lowrank_linear`` with rank 0), x -> x Rm^T -> s (x Rm^T) L^T, the Ahat-side
  values built from lambda, A, gamma at A's support — the same maths and the same memory contract
  (autograd keeps x, or h = x Bbar when in > out); measured 1.5x faster than the dense-basis plan
  and 1.9-2.4x peft's very-sparse RandLoRA at 2048 tokens (docs/BENCHMARKS.md).

``VeRALinear(base_linear, r=256, dropout=0.0, d_initial=0.1, seed=0, strategy="auto",
vera_A=None, vera_B=None)``: parameters ``vera_lambda_b`` (out) = 0 and ``vera_lambda_d`` (r) =
d_initial; buffers ``vera_A`` (r, IN) and ``vera_B`` (OUT, r); no scaling.

Loading a state_dict whose bases differ from the shared ones gives this layer its own copy (the
shared tensor, and every other layer holding it, is left alone).

Both freeze the base layer's parameters, keep it as ``base_layer`` and offer ``delta_weight()``,
``merged_weight()`` (W0 + dW, base untouched), ``merge()`` / ``unmerge()`` (in place, idempotent
errors; unmerge restores a floating W0 bit for bit from a copy merge() keeps) and ``forward(x)`` (x (..., in)).

Quantized bases: ``base_linear`` may be a bitsandbytes ``Linear8bitLt`` / ``Linear4bit``.  The
base then computes its own product and the op adds the adapter branch (weight=None); the bases
and the compute run in ``compute_dtype`` (default: the 4-bit layer's ``compute_dtype``, else
float32).  ``merge()`` dequantizes, adds dW (this layer's formula, not peft's bnb one, which is
wrong: structops.randbasis.merge) and requantizes with the layer's own settings; ``unmerge()``
does the reverse (a second rounding: not bit-exact).  With ``dropout > 0`` in training mode the adapter
branch sees dropout(x) while the base sees x, as in peft; that path runs unfused (the scaled
basis is then kept by autograd).
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.randbasis import STRATEGIES, randlora_linear, vera_linear
from ._merge import has_stash, restore_base_weight, stash_base_weight
from ..randbasis.bases import shared_randlora_bases, shared_vera_bases
from ..randbasis.merge import (_bnb_kind, dequantized_weight, merge_delta, randlora_delta_weight,
                               vera_delta_weight)

__all__ = ["RandLoRALinear", "VeRALinear"]


def _check_base(cls: str, base_linear) -> None:
    if not isinstance(base_linear, nn.Linear):
        raise ValueError(f"{cls}: base_linear must be a torch.nn.Linear (or a bitsandbytes Linear8bitLt / "
                         f"Linear4bit), got {type(base_linear).__name__}")
    if not base_linear.weight.is_floating_point() and _bnb_kind(base_linear) is None:
        raise ValueError(f"{cls}: base_linear.weight must be floating point, got {base_linear.weight.dtype}")


def _compute_dtype(base_linear, compute_dtype) -> torch.dtype:
    """The dtype the bases are stored in and the adapter runs in."""
    if compute_dtype is not None:
        if not isinstance(compute_dtype, torch.dtype) or not compute_dtype.is_floating_point:
            raise ValueError(f"compute_dtype must be a floating torch.dtype, got {compute_dtype!r}")
        return compute_dtype
    w = base_linear.weight
    if w.is_floating_point():
        return w.dtype
    return getattr(base_linear, "compute_dtype", None) or torch.float32


def _check_pos_int(cls: str, name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v <= 0:
        raise ValueError(f"{cls}: {name} must be a positive int, got {v!r}")
    return int(v)


def _check_dropout(cls: str, p) -> float:
    if not isinstance(p, numbers.Real) or not 0.0 <= float(p) < 1.0:
        raise ValueError(f"{cls}: dropout must be in [0, 1), got {p!r}")
    return float(p)


def _master_dtype(weight: Tensor) -> torch.dtype:
    return torch.float64 if weight.dtype == torch.float64 else torch.float32


class _AdapterBase(nn.Module):
    """Merge bookkeeping shared by both layers; each subclass defines ``delta_weight()``."""

    def __init__(self, base_linear: nn.Linear, dropout: float, strategy: str, compute_dtype: torch.dtype):
        super().__init__()
        if strategy not in STRATEGIES:
            raise ValueError(f"{type(self).__name__}: strategy must be one of {sorted(STRATEGIES)}, got {strategy!r}")
        self.base_layer = base_linear
        self.compute_dtype = compute_dtype
        self.quantized_base = not base_linear.weight.is_floating_point()
        for p in base_linear.parameters():
            p.requires_grad_(False)
        self.in_features = base_linear.in_features
        self.out_features = base_linear.out_features
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.strategy = strategy
        self.merged = False

    def merged_weight(self) -> Tensor:
        """W0 + dW (the base weight's dtype; float32 for a quantized base, dequantized); the layer is
        not changed."""
        w = self.base_layer.weight
        with torch.no_grad():
            base = dequantized_weight(self.base_layer).to(_master_dtype(w)) if self.quantized_base else w.detach().to(_master_dtype(w))
            if self.merged:
                return base if self.quantized_base else w.detach().clone()
            out = base + self.delta_weight()
            return out if self.quantized_base else out.to(w.dtype)

    def merge(self) -> None:
        """Adds dW into the base weight in place (dequantize, add, requantize for a quantized base);
        forward then runs the plain base layer.  A non-finite result leaves the base unchanged."""
        if self.merged:
            raise RuntimeError(f"{type(self).__name__}.merge(): already merged; call unmerge() first")
        with torch.no_grad():
            w0 = None if self.quantized_base else self.base_layer.weight.detach().clone()
            try:
                merge_delta(self.base_layer, self.delta_weight(), +1.0)
            except RuntimeError as e:
                raise RuntimeError(f"{type(self).__name__}.merge(): {e}") from None
            if w0 is not None:
                stash_base_weight(self, w0, copy=False)
        self.merged = True

    def unmerge(self) -> None:
        """Restores W0: bit for bit for a floating base (merge() kept a copy:
        ``structops.nn._merge``); a quantized base gets dW subtracted and is rounded a second time."""
        if not self.merged:
            raise RuntimeError(f"{type(self).__name__}.unmerge(): not merged")
        with torch.no_grad():
            if has_stash(self):
                restore_base_weight(self, self.base_layer.weight)
            else:
                merge_delta(self.base_layer, self.delta_weight(), -1.0)
        self.merged = False

    def _run(self, x: Tensor, fused, unfused_delta) -> Tensor:
        """Base + adapter: one fused op over (W0, bias) for a floating base; the base's own
        forward plus the op's adapter branch (weight=None) for a quantized one."""
        base = self.base_layer
        if self.merged:
            return base(x)
        xc = x.to(self.compute_dtype)
        if self._dropout_active():
            xd = self.dropout(xc)
            delta = torch.nn.functional.linear(xd, unfused_delta().to(self.compute_dtype))
            return (base(x if self.quantized_base else xc).to(self.compute_dtype) + delta).to(x.dtype)
        if self.quantized_base:
            y0 = base(x)
            return (y0 + fused(xc, None, None).to(y0.dtype)).to(x.dtype)
        return fused(xc, base.weight, base.bias).to(x.dtype)

    def _dropout_active(self) -> bool:
        return self.training and isinstance(self.dropout, nn.Dropout)

    _BASIS_NAMES: tuple = ()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The bases may be shared with other layers (structops.randbasis.shared_*): a checkpoint
        # whose bases differ gets its own copy here instead of being written into the shared
        # tensor, which would silently change every other layer (and model) holding it.
        for name in self._BASIS_NAMES:
            key = prefix + name
            cur = getattr(self, name)
            new = state_dict.get(key)
            if isinstance(new, Tensor) and new.shape == cur.shape and not torch.equal(new.to(cur.dtype), cur):
                setattr(self, name, torch.empty_like(cur))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class RandLoRALinear(_AdapterBase):
    _BASIS_NAMES = ("randlora_A", "randlora_B")

    def __init__(self, base_linear: nn.Linear, r: int, alpha: float = 640.0, dropout: float = 0.0, seed: int = 0,
                 sparse: bool = False, very_sparse: bool = False, strategy: str = "auto", basis_A: Tensor | None = None,
                 basis_B: Tensor | None = None, scaling_mode: str = "peft", compute_dtype: torch.dtype | None = None,
                 sparse_kernels="auto"):
        cls = "RandLoRALinear"
        if sparse_kernels not in ("auto", True, False):
            raise ValueError(f"{cls}: sparse_kernels must be 'auto', True or False, got {sparse_kernels!r}")
        _check_base(cls, base_linear)
        cdt = _compute_dtype(base_linear, compute_dtype)
        r = _check_pos_int(cls, "r", r)
        dropout = _check_dropout(cls, dropout)
        if scaling_mode not in ("peft", "official"):
            raise ValueError(f"{cls}: scaling_mode must be 'peft' (alpha / r) or 'official' (alpha / r / sqrt(n)), got {scaling_mode!r}")
        w = base_linear.weight
        in_f, out_f = base_linear.in_features, base_linear.out_features
        d_min, d_max = min(in_f, out_f), max(in_f, out_f)
        n = -(-d_min // r)
        if (basis_A is None) != (basis_B is None):
            raise ValueError(f"{cls}: pass both basis_A and basis_B or neither")
        if basis_A is None:
            basis_A, basis_B = shared_randlora_bases(out_f, in_f, r, seed, sparse, very_sparse, dtype=cdt, device=w.device)
        else:
            if basis_A.dim() != 3 or basis_A.shape[0] < r or basis_A.shape[2] < d_min:
                raise ValueError(f"{cls}: basis_A must be (r', 1, D_min) with r' >= r = {r} and D_min >= {d_min}, got {tuple(basis_A.shape)}")
            if basis_B.dim() != 3 or basis_B.shape[0] < d_max or basis_B.shape[1] < n or basis_B.shape[2] != r:
                raise ValueError(f"{cls}: basis_B must be (D_max, N, r) with D_max >= {d_max}, N >= n = {n}, r = {r}, got {tuple(basis_B.shape)}")
            if basis_A.shape[0] != r:
                raise ValueError(f"{cls}: basis_A.shape[0] must equal r = {r} (peft shares A of the adapter's rank), got {basis_A.shape[0]}")
            basis_A = basis_A.detach().to(device=w.device, dtype=cdt)
            basis_B = basis_B.detach().to(device=w.device, dtype=cdt)
        super().__init__(base_linear, dropout, strategy, cdt)
        self.r, self.num_bases, self.alpha, self.scaling_mode = r, n, float(alpha), scaling_mode
        self.scaling = float(alpha) / r / (math.sqrt(n) if scaling_mode == "official" else 1.0)
        md = _master_dtype(w)
        self.randlora_lambda = nn.Parameter(torch.zeros(r, n, dtype=md, device=w.device))
        self.randlora_gamma = nn.Parameter(torch.full((n, d_min), 1.0 / max(n, d_min), dtype=md, device=w.device))
        self.register_buffer("randlora_A", basis_A)
        self.register_buffer("randlora_B", basis_B)
        # sparse bases: two sparse products pay below ~1/8 density (measured: torch CSR is 3x faster
        # than dense at 1/32 and slower at 1/3); "auto" decides once from the bases
        self.sparse_kernels = (self.basis_density() < 0.125) if sparse_kernels == "auto" else bool(sparse_kernels)
        if self.sparse_kernels:
            self._build_sparse_plan()
        self.register_load_state_dict_post_hook(self._after_load)

    def _bases(self) -> tuple[Tensor, Tensor]:
        d_min, d_max = min(self.in_features, self.out_features), max(self.in_features, self.out_features)
        a = self.randlora_A[:, 0, :d_min]
        b = self.randlora_B[:d_max, : self.num_bases, :].flatten(1)
        return a, b

    # -- sparse bases: the adapter as two sparse products (structops.sparse_lowrank_linear with
    #    rank 0), x -> x Rm^T -> s (x Rm^T) L^T, with Rm / L the sparse Ahat- and Bbar-side factors.
    def basis_density(self) -> float:
        a, b = self._bases()
        return float((a != 0).sum() + (b != 0).sum()) / float(a.numel() + b.numel())

    _SPARSE_PLAN = ("a_idx", "a_k", "a_b", "a_j", "b_idx", "b_val")

    def _build_sparse_plan(self) -> None:
        """Supports (int32 sorted flat indices) of Rm (R, in) and L (out, R), and for the
        Ahat-side factor the gather indices (k, b, j) that build its values from lam, A, gamma.
        Built eagerly (here and after load_state_dict), kept as non-persistent buffers so the
        forward has no data-dependent shapes (torch.compile) and the plan follows .to()."""
        with torch.no_grad():
            a, b = self._bases()
            n = self.num_bases
            R = self.r * n
            d_min = a.shape[1]
            ka, ja = torch.nonzero(a, as_tuple=True)                   # A's support (k, j)
            kk, jj = ka.repeat_interleave(n), ja.repeat_interleave(n)  # Ahat row c = k*n + b, A[k]'s columns
            bb = torch.arange(n, device=a.device).repeat(ka.numel())
            cc = kk * n + bb
            bi, bc = torch.nonzero(b, as_tuple=True)                   # Bbar's support (row, c)
            if self.in_features <= self.out_features:   # Rm = Ahat (R, in), L = Bbar (out, R)
                flat_a, flat_b = cc * d_min + jj, bi * R + bc
            else:                                       # Rm = Bbar^T (R, in), L = Ahat^T (out, R)
                flat_a, flat_b = jj * R + cc, bc * b.shape[0] + bi
            oa, ob = torch.argsort(flat_a), torch.argsort(flat_b)
            plan = {"a_idx": flat_a[oa].to(torch.int32), "a_k": kk[oa], "a_b": bb[oa], "a_j": jj[oa],
                    "b_idx": flat_b[ob].to(torch.int32), "b_val": b[bi[ob], bc[ob]].contiguous()}
        for k in self._SPARSE_PLAN:
            self.register_buffer("_sp_" + k, plan[k], persistent=False)

    def _after_load(self, module, incompatible_keys) -> None:
        if self.sparse_kernels:
            self._build_sparse_plan()  # the loaded bases may differ from the ones drawn at init

    def _sparse_adapter(self, xc: Tensor) -> Tensor:
        from ..ops.sparse_lowrank import sparse_lowrank_linear

        p = {k: getattr(self, "_sp_" + k) for k in self._SPARSE_PLAN}
        a, _ = self._bases()
        cdt = xc.dtype
        vals = (self.randlora_lambda[p["a_k"], p["a_b"]] * a[p["a_k"], p["a_j"]].to(self.randlora_lambda.dtype)
                * self.randlora_gamma[p["a_b"], p["a_j"]]).to(cdt)
        R = self.r * self.num_bases
        e_in = xc.new_zeros((0, self.in_features))
        e_R = xc.new_zeros((0, R))
        if self.in_features <= self.out_features:
            h = sparse_lowrank_linear(xc, xc.new_zeros((R, 0)), e_in, vals, p["a_idx"], 1.0)
            return sparse_lowrank_linear(h, xc.new_zeros((self.out_features, 0)), e_R, p["b_val"] * self.scaling,
                                         p["b_idx"], 1.0)
        h = sparse_lowrank_linear(xc, xc.new_zeros((R, 0)), e_in, p["b_val"], p["b_idx"], 1.0)
        return sparse_lowrank_linear(h, xc.new_zeros((self.out_features, 0)), e_R, vals * self.scaling, p["a_idx"], 1.0)

    def delta_weight(self) -> Tensor:
        """dW (out, in) in float32 (float64 for a float64 base), peft's formula."""
        a, b = self._bases()
        return randlora_delta_weight(a, b, self.randlora_lambda, self.randlora_gamma, self.scaling, self.in_features,
                                     self.out_features)

    def forward(self, x: Tensor) -> Tensor:
        if self.sparse_kernels:
            def fused(xc, w, bias):
                ad = self._sparse_adapter(xc)
                return ad if w is None else F.linear(xc, w, bias) + ad

            return self._run(x, fused, self.delta_weight)
        a, b = self._bases()
        return self._run(x, lambda xc, w, bias: randlora_linear(xc, w, bias, a, b, self.randlora_lambda, self.randlora_gamma,
                                                                 self.scaling, self.strategy), self.delta_weight)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, n={self.num_bases}, "
                f"scaling={self.scaling:g}, strategy={self.strategy!r}, merged={self.merged}")


class VeRALinear(_AdapterBase):
    _BASIS_NAMES = ("vera_A", "vera_B")

    def __init__(self, base_linear: nn.Linear, r: int = 256, dropout: float = 0.0, d_initial: float = 0.1, seed: int = 0,
                 strategy: str = "auto", vera_A: Tensor | None = None, vera_B: Tensor | None = None,
                 compute_dtype: torch.dtype | None = None):
        cls = "VeRALinear"
        _check_base(cls, base_linear)
        cdt = _compute_dtype(base_linear, compute_dtype)
        r = _check_pos_int(cls, "r", r)
        dropout = _check_dropout(cls, dropout)
        w = base_linear.weight
        in_f, out_f = base_linear.in_features, base_linear.out_features
        if (vera_A is None) != (vera_B is None):
            raise ValueError(f"{cls}: pass both vera_A and vera_B or neither")
        if vera_A is None:
            vera_A, vera_B = shared_vera_bases(out_f, in_f, r, seed, dtype=cdt, device=w.device)
        else:
            if vera_A.dim() != 2 or vera_A.shape[0] < r or vera_A.shape[1] < in_f:
                raise ValueError(f"{cls}: vera_A must be (r', IN) with r' >= r = {r}, IN >= {in_f}, got {tuple(vera_A.shape)}")
            if vera_B.dim() != 2 or vera_B.shape[0] < out_f or vera_B.shape[1] < r:
                raise ValueError(f"{cls}: vera_B must be (OUT, r') with OUT >= {out_f}, r' >= r = {r}, got {tuple(vera_B.shape)}")
            vera_A = vera_A.detach().to(device=w.device, dtype=cdt)
            vera_B = vera_B.detach().to(device=w.device, dtype=cdt)
        super().__init__(base_linear, dropout, strategy, cdt)
        self.r = r
        md = _master_dtype(w)
        self.vera_lambda_b = nn.Parameter(torch.zeros(out_f, dtype=md, device=w.device))
        self.vera_lambda_d = nn.Parameter(torch.full((r,), float(d_initial), dtype=md, device=w.device))
        self.register_buffer("vera_A", vera_A)
        self.register_buffer("vera_B", vera_B)

    def _bases(self) -> tuple[Tensor, Tensor]:
        return self.vera_A[: self.r, : self.in_features], self.vera_B[: self.out_features, : self.r]

    def delta_weight(self) -> Tensor:
        a, b = self._bases()
        return vera_delta_weight(a, b, self.vera_lambda_d, self.vera_lambda_b)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self._bases()
        return self._run(x, lambda xc, w, bias: vera_linear(xc, w, bias, a, b, self.vera_lambda_d, self.vera_lambda_b,
                                                             self.strategy), self.delta_weight)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"strategy={self.strategy!r}, merged={self.merged}")
