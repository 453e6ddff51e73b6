"""A tiny pre-LayerNorm causal transformer for Track B (~100k-300k parameters)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TinyLM"]


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)
        self.heads = heads

    def forward(self, x):
        B, T, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        shape = (B, T, self.heads, d // self.heads)
        q, k, v = (t.reshape(shape).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(B, T, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TinyLM(nn.Module):
    """Token + learned position embeddings, ``layers`` pre-LN blocks, final LN, linear head.
    ``forward(ids (B, T)) -> logits (B, T, V)``.  ``blocks.i`` outputs (the residual stream)
    are the hidden states representation_projection edits.

    ``forward(ids, scored=mask)`` (mask: bool (B, T)) returns only the scored positions' logits,
    ``(mask.sum(), V)`` in row-major order — the same values as ``forward(ids)[mask]`` up to
    float rounding, for about half the work on Track B (1.5 of 13 positions are answers): the
    model is causal, so the columns after the last scored one are dropped before the blocks,
    and the head and the softmax run on the scored rows only."""

    supports_scored_positions = True  # CausalLM.nll may call forward(ids, scored=mask)

    def __init__(self, vocab: int, d: int = 96, layers: int = 2, heads: int = 4, max_len: int = 16):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(max_len, d)
        self.blocks = nn.ModuleList([Block(d, heads) for _ in range(layers)])
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)
        self.unlearn_hidden_layers = tuple(f"blocks.{i}" for i in range(layers))

    def forward(self, ids, scored=None):
        if scored is not None:
            if scored.shape != ids.shape or scored.dtype != torch.bool:
                raise ValueError(f"TinyLM: scored must be a bool mask shaped like ids {tuple(ids.shape)}, "
                                 f"got {scored.dtype} {tuple(scored.shape)}")
            cols = torch.nonzero(scored.any(0))
            if cols.numel() == 0:
                return self.head.weight.new_zeros(0, self.head.out_features)
            keep = int(cols[-1]) + 1
            ids, scored = ids[:, :keep], scored[:, :keep]
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        for b in self.blocks:
            x = b(x)
        x = self.ln(x)
        return self.head(x if scored is None else x[scored])
