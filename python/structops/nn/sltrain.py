"""SLTrain layers: W = W0 + scale * B A + S with a fixed random sparse support
(``structops.ops.sparse_lowrank``; ../shared/reference/finetune.md §4).

``SLTrainLinear(in_features, out_features, rank, density=0.01, alpha=1.0, bias=True, device=None,
dtype=None)`` is SLTrain's ``SpLoRaLinear`` for pretraining (no W0): parameters ``lora_B`` (out, r)
= 0, ``lora_A`` (r, in) kaiming-uniform(a=√5), ``sparse_value`` (nnz) U(±1/√in), ``bias``
U(±1/√out), buffer ``sparse_index`` — nnz = int(density · out · in) flat row-major positions,
sort(randperm(out · in)[:nnz]) — drawn from the global RNG in upstream's order (bias, A, support,
values: a seeded layer equals upstream's), stored as **int32** (upstream: int64; its state_dicts
load, the index is converted); scale = alpha / rank.

``SLTrainLinear.from_linear(linear, rank, density=0.01, alpha=1.0)``: the fine-tuning variant —
the linear's weight becomes the frozen ``base_weight`` W0 (bias kept, trainable), B = 0, A
kaiming-uniform, S = 0 at the random support, so the layer equals the linear at init.

``dense_weight()`` materialises W (out, in); ``merge() -> nn.Linear`` returns a dense layer with W = W0 + scale · B A + S (this layer is not
changed).  ``support_from_seed(out, in, density, seed)`` regenerates a support from a seed (a
CPU generator: identical across runs and devices).

``convert_linears(model, rank, density, alpha)`` applies SLTrain's name rule to a model;
``attach_per_layer_optimizer(model, lr)`` is its per-layer (8-bit where bitsandbytes is
installed) optimizer step from ``register_post_accumulate_grad_hook``.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor, nn

from ..ops.sparse_lowrank import sparse_lowrank_linear
from ..reference import sparse_lowrank_weight

__all__ = ["SLTrainLinear", "support_from_seed", "random_support", "convert_linears", "attach_per_layer_optimizer",
           "detach_per_layer_optimizer", "SLTRAIN_TARGETS"]


def _nnz(cls, out_features, in_features, density) -> int:
    if not isinstance(density, numbers.Real) or not 0.0 < float(density) < 1.0:
        raise ValueError(f"{cls}: density must be in (0, 1), got {density!r}")
    if out_features * in_features > 2**31 - 1:
        raise ValueError(f"{cls}: out * in = {out_features * in_features} exceeds int32 flat indices")
    return int(float(density) * out_features * in_features)


def random_support(out_features: int, in_features: int, density: float, generator=None) -> Tensor:
    """SLTrain's support: sort(randperm(out * in)[:nnz]) as int32, nnz = int(density * out * in)."""
    nnz = _nnz("random_support", out_features, in_features, density)
    idx = torch.randperm(out_features * in_features, generator=generator)[:nnz]
    return torch.sort(idx).values.to(torch.int32)


def support_from_seed(out_features: int, in_features: int, density: float, seed: int) -> Tensor:
    """``random_support`` from a CPU generator seeded with ``seed``: the same support on every run
    and machine (move it to any device afterwards)."""
    return random_support(out_features, in_features, density, torch.Generator(device="cpu").manual_seed(int(seed)))


class SLTrainLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, rank: int, density: float = 0.01, alpha: float = 1.0,
                 bias: bool = True, device=None, dtype=None, *, _base_weight: Tensor | None = None):
        super().__init__()
        cls = "SLTrainLinear"
        for name, v in (("in_features", in_features), ("out_features", out_features), ("rank", rank)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v <= 0:
                raise ValueError(f"{cls}: {name} must be a positive int, got {v!r}")
        nnz = _nnz(cls, out_features, in_features, density)
        fk = {"device": device, "dtype": dtype}
        self.in_features, self.out_features, self.rank = int(in_features), int(out_features), int(rank)
        self.density, self.alpha = float(density), float(alpha)
        self.scale = self.alpha / self.rank
        # upstream's RNG order: bias, lora_A, support, values
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, **fk))
            nn.init.uniform_(self.bias, -1 / math.sqrt(out_features), 1 / math.sqrt(out_features))
        else:
            self.register_parameter("bias", None)
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, **fk))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, **fk))
        idx = torch.sort(torch.randperm(out_features * in_features)[:nnz]).values
        self.register_buffer("sparse_index", idx.to(device=device, dtype=torch.int32))
        values = torch.empty(nnz, **fk)
        nn.init.uniform_(values, -1 / math.sqrt(in_features), 1 / math.sqrt(in_features))
        self.sparse_value = nn.Parameter(values)
        self.register_buffer("base_weight", _base_weight)  # None for pretraining

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int, density: float = 0.01, alpha: float = 1.0) -> "SLTrainLinear":
        """Fine-tuning variant around a (frozen) linear: W = W0 + scale B A + S, S = B = 0 at init."""
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"SLTrainLinear.from_linear: expected a torch.nn.Linear, got {type(linear).__name__}")
        w = linear.weight
        layer = cls(linear.in_features, linear.out_features, rank, density, alpha, bias=linear.bias is not None,
                    device=w.device, dtype=w.dtype, _base_weight=w.detach().clone())
        with torch.no_grad():
            layer.sparse_value.zero_()
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        return sparse_lowrank_linear(x, self.lora_B, self.lora_A, self.sparse_value, self.sparse_index, self.scale,
                                     self.bias, self.base_weight)

    def dense_weight(self) -> Tensor:
        """The dense W (out, in) this layer applies (materialised; for inspection and merge)."""
        return sparse_lowrank_weight(self.lora_B, self.lora_A, self.sparse_value, self.sparse_index, self.scale,
                                     self.base_weight)

    def merge(self) -> nn.Linear:
        """A dense nn.Linear with this layer's W and bias (this layer is not changed)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.lora_A.device, dtype=self.lora_A.dtype)
        with torch.no_grad():
            lin.weight.copy_(self.dense_weight())
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "sparse_index"
        if key in state_dict and state_dict[key].dtype != torch.int32:  # upstream stores int64
            state_dict[key] = state_dict[key].to(torch.int32)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"density={self.density}, nnz={self.sparse_index.numel()}, scale={self.scale:g}, "
                f"bias={self.bias is not None}, base_weight={self.base_weight is not None}")


SLTRAIN_TARGETS = ("attn", "attention", "mlp")


def convert_linears(model: nn.Module, rank: int, density: float = 0.01, alpha: float = 1.0,
                    targets=SLTRAIN_TARGETS, fine_tune: bool = False) -> list[str]:
    """Replaces, in place, every ``nn.Linear`` whose qualified name contains one of ``targets``
    (SLTrain's rule: "attn", "attention", "mlp" — embeddings and lm_head are left alone) by an
    ``SLTrainLinear``: freshly initialised for pretraining, or ``from_linear`` (W0 frozen) with
    ``fine_tune=True``.  Returns the converted names.  Every replacement is built before any is
    installed, so a failure leaves the model unchanged."""
    plan = []
    for name, mod in model.named_modules():
        if type(mod) is nn.Linear and any(t in name for t in targets):
            w = mod.weight
            new = (SLTrainLinear.from_linear(mod, rank, density, alpha) if fine_tune else
                   SLTrainLinear(mod.in_features, mod.out_features, rank, density, alpha, bias=mod.bias is not None,
                                 device=w.device, dtype=w.dtype))
            plan.append((name, new))
    for name, new in plan:
        parent_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, leaf, new)
    return [n for n, _ in plan]


def attach_per_layer_optimizer(model: nn.Module, lr: float = 1e-3, eight_bit: bool | None = None, **kwargs) -> dict:
    """SLTrain's memory-lean recipe: one optimizer per trainable parameter, stepped (and its grad
    freed) from ``register_post_accumulate_grad_hook`` as soon as the gradient is complete, so no
    model-wide gradient set ever exists.  8-bit Adam state (``bitsandbytes.optim.Adam8bit``) when
    bitsandbytes is installed and ``eight_bit`` is not False (parameters with fewer than 4096
    elements keep fp32 state, as bitsandbytes itself does), else ``torch.optim.AdamW``.  Call
    ``loss.backward()`` only — no ``optimizer.step()``.  Returns {parameter name: optimizer}; remove
    with ``detach_per_layer_optimizer(model)``."""
    use8 = eight_bit
    if use8 is None or use8:
        try:
            import bitsandbytes as bnb  # noqa: F401

            use8 = True
        except ImportError:
            if eight_bit:
                raise ImportError("attach_per_layer_optimizer(eight_bit=True) needs bitsandbytes") from None
            use8 = False
    opts = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if use8:
            import bitsandbytes as bnb

            opt = bnb.optim.Adam8bit([p], lr=lr, **kwargs)
        else:
            opt = torch.optim.AdamW([p], lr=lr, **kwargs)

        def hook(param, opt=opt):
            opt.step()
            opt.zero_grad(set_to_none=True)

        handle = p.register_post_accumulate_grad_hook(hook)
        opts[name] = opt
        p._structops_per_layer_hook = handle
    return opts


def detach_per_layer_optimizer(model: nn.Module) -> None:
    """Removes the hooks ``attach_per_layer_optimizer`` installed."""
    for p in model.parameters():
        h = getattr(p, "_structops_per_layer_hook", None)
        if h is not None:
            h.remove()
            del p._structops_per_layer_hook
