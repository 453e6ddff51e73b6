"""The small model the fine-tuning example, the torchrun example and the distributed tests share:
a ViT-style classifier for sklearn's 8×8 digits (each image row is a token).

``DigitsTransformer(d=64, mlp=128, blocks=2, heads=4, n_classes=10)``: x (batch, 8, 8) ->
logits (batch, n_classes).  Token embedding ``embed`` (8 -> d) plus a learned position table,
``blocks`` pre-norm transformer blocks (``attn.q_proj/k_proj/v_proj/o_proj`` d -> d,
``mlp.fc1`` d -> mlp, ``mlp.fc2`` mlp -> d), mean pooling, ``head`` (d -> n_classes).
``get_output_embeddings()`` returns the head, so ``target_modules="all-linear"`` leaves it out
(as for Hugging Face models).  ``checkpoint=True`` runs each block under non-reentrant
activation checkpointing (``torch.utils.checkpoint``).

``ADAPT_TARGETS`` = the attention and MLP projections (peft's list rule).

``StructuredLayersNet()``: the same task (x (batch, 8, 8) -> 10 logits) built only from structops
layers trained from scratch — ``BlockdiagLinear``, ``MonarchLinear``, ``Butterfly``,
``ButterflyUnitary`` (real part of its complex output) and ``SLTrainLinear`` — so the
distributed tests cover the layers themselves, not only the adapters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint

__all__ = ["DigitsTransformer", "StructuredLayersNet", "ADAPT_TARGETS"]

ADAPT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"]


class _Attention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        b, t, d = x.shape
        h = self.heads

        def split(y):
            return y.view(b, t, h, d // h).transpose(1, 2)

        a = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)))
        return self.o_proj(a.transpose(1, 2).reshape(b, t, d))


class _MLP(nn.Module):
    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, hidden), nn.Linear(hidden, d)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, d: int, hidden: int, heads: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn, self.mlp = _Attention(d, heads), _MLP(d, hidden)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DigitsTransformer(nn.Module):
    def __init__(self, d: int = 64, mlp: int = 128, blocks: int = 2, heads: int = 4, n_classes: int = 10,
                 checkpoint: bool = False):
        super().__init__()
        self.embed = nn.Linear(8, d)
        self.pos = nn.Parameter(torch.randn(8, d) * 0.02)
        self.blocks = nn.ModuleList([_Block(d, mlp, heads) for _ in range(blocks)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, n_classes)
        self.checkpoint = checkpoint

    def get_output_embeddings(self):
        return self.head

    def forward(self, x):
        h = self.embed(x) + self.pos
        for blk in self.blocks:
            h = _checkpoint(blk, h, use_reentrant=False) if self.checkpoint and self.training else blk(h)
        return self.head(self.norm(h).mean(1))


class _Real(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x).real


class StructuredLayersNet(nn.Module):
    def __init__(self):
        super().__init__()
        from ..nn import BlockdiagLinear, Butterfly, ButterflyUnitary, MonarchLinear, SLTrainLinear

        self.blocks = nn.ModuleList([
            BlockdiagLinear(64, 64, nblocks=4), MonarchLinear(64, 128, nblocks=4), Butterfly(128, 64, bias=True),
            _Real(ButterflyUnitary(64, 64, bias=False)), SLTrainLinear(64, 64, rank=8, density=0.05),
        ])
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        h = x.reshape(x.shape[0], 64)
        for blk in self.blocks:
            h = F.gelu(blk(h))
        return self.head(h)
