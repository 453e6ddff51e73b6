"""Block-diagonal and Monarch linear layers, state_dict-compatible with HazyResearch/fly.

Constructor order is fly's ``StructuredLinear``: ``(in_features, out_features, bias=True,
device=None, dtype=None, *, nblocks=4, ...)`` — everything after ``dtype`` is keyword-only.

Shape rule (fly's, for both layers): in_blksz = ceil(in/nblocks), out_blksz = ceil(out/nblocks);
inputs with up to nblocks*in_blksz features are zero-padded to that width (so inputs narrower
than in_features are accepted, as in fly) and outputs truncated to out_features.

fly's methods are here too: ``convert_to_dense_weight()`` (dense (out, in) weight),
``set_weights_from_dense_init(dense_init_fn_)``, ``saving``, ``preprocess``/``postprocess``.

* ``BlockdiagLinear``: ``weight`` (nblocks, out_blksz, in_blksz), optional channel ``shuffle``.
* ``MonarchLinear``: ``blkdiag1``/``blkdiag2`` with the intermediate width
  min(in_ext, out_ext) — if in_ext < out_ext: blkdiag1 (nb, in_blksz, in_blksz),
  blkdiag2 (nb, out_blksz, in_blksz); else blkdiag1 (nb, out_blksz, in_blksz),
  blkdiag2 (nb, out_blksz, out_blksz).  (torch-structured uses a different rule with more
  parameters than dense when in > out; we keep fly's.)

Initialisation reproduces fly's draws exactly (same RNG consumption), so a seeded model is
identical to fly's.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import blockdiag_matmul, monarch_matmul
from ..projection import monarch_project

__all__ = ["BlockdiagLinear", "MonarchLinear"]


class _StructuredLinear(nn.Module):
    """Shared pad/truncate/bias logic (fly's StructuredLinear)."""

    in_features_extended: int
    out_features_extended: int

    def __init__(self, in_features: int, out_features: int, bias: bool, nblocks: int, device, dtype):
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features), ("nblocks", nblocks)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{type(self).__name__}: {name} must be a positive int, got {v!r}")
        if not isinstance(bias, bool):
            raise ValueError(
                f"{type(self).__name__}: bias must be a bool, got {bias!r} (the signature is fly's: "
                "(in_features, out_features, bias=True, device=None, dtype=None, *, nblocks=4, ...))"
            )
        self.in_features = in_features
        self.out_features = out_features
        self.nblocks = nblocks
        self.in_blksz = math.ceil(in_features / nblocks)
        self.out_blksz = math.ceil(out_features / nblocks)
        self.in_features_extended = self.in_blksz * nblocks
        self.out_features_extended = self.out_blksz * nblocks
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)

    def reset_parameters_bias(self) -> None:
        # fly's quirk: fan_in = bias.shape[-1] = out_features (nn.Linear uses in_features).
        if self.bias is not None:
            bound = 1 / math.sqrt(self.bias.shape[-1])
            nn.init.uniform_(self.bias, -bound, bound)

    def preprocess(self, x: Tensor) -> Tensor:
        """Zero-pads the last dim to in_features_extended (fly: inputs narrower than in_features
        are padded too); wider inputs are an error."""
        if not isinstance(x, Tensor) or x.dim() == 0:
            raise ValueError(f"{type(self).__name__}: expected an input tensor (..., in_features), got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        if x.shape[-1] > self.in_features_extended:
            raise ValueError(
                f"{type(self).__name__}: expected input with at most {self.in_features_extended} features "
                f"(in_features={self.in_features}, zero-padded to nblocks*in_blksz) in the last dim, got "
                f"shape {tuple(x.shape)}"
            )
        if x.shape[-1] < self.in_features_extended:
            x = F.pad(x, (0, self.in_features_extended - x.shape[-1]))
        return x

    def postprocess(self, y: Tensor) -> Tensor:
        if self.out_features_extended > self.out_features:
            y = y[..., : self.out_features]
        return y

    def forward(self, x: Tensor) -> Tensor:
        y = self.forward_matmul(x)  # defined by each layer
        # Cast the bias to the output dtype (AMP): otherwise the sum is promoted to fp32.
        return y + self.bias.to(dtype=y.dtype) if self.bias is not None else y

    def convert_to_dense_weight(self) -> Tensor:
        """Dense (out_features, in_features) weight W with forward(x) == x @ W.T + bias (fly's
        name; fly's own version fails on MonarchLinear, which has no ``weight``)."""
        p = next(self.parameters())
        eye = torch.eye(self.in_features, device=p.device, dtype=p.dtype)
        return self.forward_matmul(eye).t()

    to_dense = convert_to_dense_weight

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, nblocks={self.nblocks}, "
            f"bias={self.bias is not None}"
        )


class BlockdiagLinear(_StructuredLinear):
    """``y = BD(weight) x`` on zero-padded x, truncated to out_features, plus bias.

    Args:
        in_features, out_features, bias, device, dtype: as ``nn.Linear`` (fly's order).
        nblocks: number of diagonal blocks (keyword-only).
        shuffle: channel shuffle before the matmul ('... (g c) -> ... (c g)', g = nblocks),
            as fly/m2 (keyword-only).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None, *,
                 nblocks: int = 4, shuffle: bool = False):
        super().__init__(in_features, out_features, bias, nblocks, device, dtype)
        self.shuffle = shuffle
        self.weight = nn.Parameter(
            torch.empty(nblocks, self.out_blksz, self.in_blksz, device=device, dtype=dtype)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.set_weights_from_dense_init(partial(nn.init.kaiming_uniform_, a=math.sqrt(5)))
        self.reset_parameters_bias()

    def set_weights_from_dense_init(self, dense_init_fn_) -> None:
        """fly's rule: ``dense_init_fn_`` fills a dense (out_ext, in_ext) matrix, which is scaled
        by sqrt(dense.numel / weight.numel) (the weight is sparse) and block-row 0 of it copied."""
        dense = torch.empty(self.out_features_extended, self.in_features_extended,
                            device=self.weight.device, dtype=self.weight.dtype)
        dense_init_fn_(dense)
        dense *= math.sqrt(dense.numel() / self.weight.numel())
        nb = self.nblocks
        with torch.no_grad():
            blocks = dense.reshape(nb, self.out_blksz, nb, self.in_blksz).permute(0, 2, 1, 3)
            self.weight.copy_(blocks[0])

    @property
    def saving(self) -> float:
        return self.weight.numel() / (self.in_features * self.out_features)

    def forward_matmul(self, x: Tensor) -> Tensor:
        x = self.preprocess(x)
        if self.shuffle:
            nb = self.nblocks
            x = x.reshape(*x.shape[:-1], nb, self.in_features_extended // nb).transpose(-1, -2)
            x = x.reshape(*x.shape[:-2], self.in_features_extended)
        return self.postprocess(blockdiag_matmul(x, self.weight))


class MonarchLinear(_StructuredLinear):
    """Monarch layer ``y = P_out BD(blkdiag2) P_mid BD(blkdiag1) x`` (fly's MonarchLinear).

    Args:
        in_features, out_features, bias, device, dtype: as ``nn.Linear`` (fly's order).
        nblocks: number of blocks of each factor (keyword-only; fly uses 4 for GPT-2/ViT MLPs).
        recompute: recompute the intermediate in backward instead of saving it (less memory,
            slower); False (default) saves it, as fly does (keyword-only).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None, *,
                 nblocks: int = 4, recompute: bool = False):
        super().__init__(in_features, out_features, bias, nblocks, device, dtype)
        self.recompute = recompute
        nb, ib, ob = nblocks, self.in_blksz, self.out_blksz
        kw = dict(device=device, dtype=dtype)
        if self.in_features_extended < self.out_features_extended:
            self.blkdiag1 = nn.Parameter(torch.empty(nb, ib, ib, **kw))
            self.blkdiag2 = nn.Parameter(torch.empty(nb, ob, ib, **kw))
        else:
            self.blkdiag1 = nn.Parameter(torch.empty(nb, ob, ib, **kw))
            self.blkdiag2 = nn.Parameter(torch.empty(nb, ob, ob, **kw))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # fly: per factor U(-b, b) with b = sqrt(3) * gain(leaky_relu, sqrt(5)) / sqrt(fan_in)
        # = 1/sqrt(fan_in), fan_in = factor.shape[-1]; blkdiag1 first, then blkdiag2, then bias.
        for blkdiag in (self.blkdiag1, self.blkdiag2):
            fan_in = blkdiag.shape[-1]
            gain = nn.init.calculate_gain(nonlinearity="leaky_relu", param=math.sqrt(5))
            bound = math.sqrt(3.0) * gain / math.sqrt(fan_in)
            with torch.no_grad():
                blkdiag.uniform_(-bound, bound)
        self.reset_parameters_bias()

    def set_weights_from_dense_init(self, dense_init_fn_) -> None:
        """Initialise from a dense init: ``dense_init_fn_`` fills a dense (out_ext, in_ext) matrix
        and the factors become its Frobenius-optimal Monarch projection (fly's StructuredLinear
        hook; fly's MonarchLinear itself leaves it unimplemented)."""
        p = self.blkdiag1
        work = p.dtype if p.dtype in (torch.float32, torch.float64) else torch.float32
        dense = torch.empty(self.out_features_extended, self.in_features_extended, device=p.device, dtype=work)
        dense_init_fn_(dense)
        mid = min(self.in_features_extended, self.out_features_extended)
        w1, w2, _ = monarch_project(dense, self.nblocks, self.nblocks, mid)
        with torch.no_grad():
            self.blkdiag1.copy_(w1)
            self.blkdiag2.copy_(w2)

    @property
    def saving(self) -> float:
        return (self.blkdiag1.numel() + self.blkdiag2.numel()) / (self.in_features * self.out_features)

    def forward_matmul(self, x: Tensor) -> Tensor:
        y = monarch_matmul(self.preprocess(x), self.blkdiag1, self.blkdiag2, recompute=self.recompute)
        return self.postprocess(y)

    @classmethod
    def from_dense(cls, weight: Tensor, bias: Tensor | None = None, nblocks: int = 4,
                   recompute: bool = False) -> "MonarchLinear":
        """A MonarchLinear whose factors are the Frobenius-optimal projection of ``weight``
        (out_features, in_features), zero-padded to the layer's extended size (fly's layout).
        ``layer.projection_rel_err`` records ||W - W_monarch||_F / ||W||_F."""
        if not isinstance(weight, Tensor) or weight.dim() != 2:
            raise ValueError(f"MonarchLinear.from_dense: weight must be 2-D (out, in), got "
                             f"{tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__}")
        out_f, in_f = weight.shape
        layer = cls(in_f, out_f, bias=bias is not None, nblocks=nblocks, device=weight.device,
                    dtype=weight.dtype, recompute=recompute)
        padded = torch.zeros(layer.out_features_extended, layer.in_features_extended,
                             device=weight.device, dtype=weight.dtype)
        padded[:out_f, :in_f] = weight.detach()
        mid = min(layer.in_features_extended, layer.out_features_extended)
        w1, w2, _ = monarch_project(padded, nblocks, nblocks, mid)
        with torch.no_grad():
            layer.blkdiag1.copy_(w1)
            layer.blkdiag2.copy_(w2)
            if bias is not None:
                layer.bias.copy_(bias.detach())
            approx = layer.to_dense()
            den = weight.norm()
            layer.projection_rel_err = float((weight - approx).norm() / den) if den > 0 else 0.0
        return layer
