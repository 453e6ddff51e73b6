"""Robustness probes: does the "forgotten" knowledge come back?

* :func:`quantize_rtn` — round-to-nearest, symmetric, per-output-channel weight quantisation
  (int8 / int4) of every Linear / Conv / Embedding weight, returned dequantised in a copy.
  Unlearning updates smaller than a quantisation bin vanish (arXiv 2410.16454: 21% -> 83% of
  the forgotten knowledge back after 4-bit), so forget metrics are recomputed on it.
* :func:`quantize_bnb_fp4` — emulation of bitsandbytes' FP4 weight format as used by the
  quantization-failure paper (``BitsAndBytesConfig(load_in_4bit=True)``, whose default
  ``bnb_4bit_quant_type`` is "fp4"): absmax scaling in blocks of 64 consecutive weights, each
  value rounded to the nearest of bitsandbytes' 16 FP4 codes ({0, 0.0625, 2, 3, 4, 6, 8, 12}/12,
  signed).  Like transformers' loader it leaves the output head (and embeddings, which are not
  Linear layers) unquantised.
* :func:`quantize_llm_int8` — emulation of LLM.int8() (``load_in_8bit=True``, threshold 6.0):
  Linear weights row-wise absmax int8 (127 levels per output row), inputs quantised per token
  (vector-wise absmax int8) except the input features that hold an outlier (|x| > 6.0 anywhere
  in the batch), which stay in full precision; head and embeddings unquantised.
* :func:`relearn` — k SGD steps on a small part of the forget set; the accuracy on the *other*
  forget points (held out from the relearning steps) after each step is compared with the same
  curve for the oracles (models that never saw the data): how much of the forgotten knowledge a
  few steps on related data bring back, not how fast the relearned points themselves are fit.

``quantize_rtn`` is our earlier, harsher probe (every layer, head included, per-row integer
RTN); the bitsandbytes emulations are what the paper measured.  Report both, labelled.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .data import batches, materialize, subset
from .objectives import as_objective

__all__ = ["quantize_rtn", "quantize_bnb_fp4", "quantize_llm_int8", "BNB_FP4_CODE", "relearn"]

# bitsandbytes' FP4 (E2M1-style) code book, normalised by its largest magnitude (12).
BNB_FP4_CODE = torch.tensor([0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0,
                             -0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0], dtype=torch.float64) / 12.0


def _quantizable_linears(model: nn.Module, skip: tuple) -> list:
    """(name, Linear) pairs that bitsandbytes would quantise: every nn.Linear except the output
    head — the last Linear in module order, or any whose name is in ``skip``
    (transformers' ``llm_int8_skip_modules`` default keeps ``lm_head`` in full precision)."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        return []
    head = linears[-1][0]
    return [(n, m) for n, m in linears if n != head and n.split(".")[-1] not in skip and n not in skip]


@torch.no_grad()
def fp4_blockwise(w: torch.Tensor, blocksize: int = 64) -> torch.Tensor:
    """bitsandbytes FP4 round trip of a tensor: absmax per block of ``blocksize`` consecutive
    elements (row-major flattening; the last block may be short), nearest code, dequantised."""
    flat = w.detach().reshape(-1).to(torch.float64)
    n = flat.numel()
    pad = (-n) % blocksize
    x = torch.cat([flat, flat.new_zeros(pad)]).reshape(-1, blocksize)
    absmax = x.abs().amax(1, keepdim=True)
    scaled = x / absmax.clamp_min(1e-30)
    code = BNB_FP4_CODE.to(x.device)
    idx = (scaled[..., None] - code).abs().argmin(-1)
    deq = code[idx] * absmax
    return deq.reshape(-1)[:n].reshape(w.shape).to(w.dtype)


@torch.no_grad()
def quantize_bnb_fp4(model: nn.Module, blocksize: int = 64, skip: tuple = ("lm_head", "head")) -> nn.Module:
    """Copy of ``model`` whose Linear weights (all but the output head) went through a
    bitsandbytes FP4 round trip (blocks of ``blocksize``, absmax).  Biases, norms and embeddings
    stay in full precision, as with ``load_in_4bit``."""
    out = copy.deepcopy(model)
    for _, m in _quantizable_linears(out, skip):
        m.weight.copy_(fp4_blockwise(m.weight, blocksize))
    return out


def _int8_rows(t: torch.Tensor) -> torch.Tensor:
    """Vector-wise (per row) absmax int8 round trip: 127 levels per row."""
    scale = t.abs().amax(-1, keepdim=True).clamp_min(1e-30) / 127.0
    return torch.clamp(torch.round(t / scale), -127, 127) * scale


class _Int8Linear(nn.Module):
    """nn.Linear as LLM.int8() computes it: int8 row-wise weights, int8 per-token inputs, input
    features with an outlier (|x| > threshold) in full precision (mixed-precision decomposition)."""

    def __init__(self, lin: nn.Linear, threshold: float):
        super().__init__()
        self.weight = nn.Parameter(_int8_rows(lin.weight.detach()), requires_grad=lin.weight.requires_grad)
        self.bias = lin.bias
        self.threshold = threshold
        self.in_features, self.out_features = lin.in_features, lin.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        outlier = (flat.abs() > self.threshold).any(0)  # (in_features,)
        q = _int8_rows(flat.masked_fill(outlier, 0.0))
        xq = torch.where(outlier, flat, q).reshape(x.shape)
        return nn.functional.linear(xq, self.weight, self.bias)


@torch.no_grad()
def quantize_llm_int8(model: nn.Module, threshold: float = 6.0, skip: tuple = ("lm_head", "head")) -> nn.Module:
    """Copy of ``model`` whose Linear layers (all but the output head) compute as LLM.int8()
    with outlier threshold ``threshold`` (bitsandbytes' default 6.0)."""
    out = copy.deepcopy(model)
    for name, lin in _quantizable_linears(out, skip):
        parent = out
        *path, leaf = name.split(".")
        for p in path:
            parent = getattr(parent, p)
        setattr(parent, leaf, _Int8Linear(lin, threshold))
    return out


@torch.no_grad()
def quantize_rtn(model: nn.Module, bits: int = 8) -> nn.Module:
    """Copy of ``model`` with weights w -> s * clamp(round(w / s), -q, q), s = max|w_row| / q,
    q = 2^(bits-1) - 1, per output row; biases and norms stay in full precision."""
    if bits not in (2, 3, 4, 5, 6, 7, 8):
        raise ValueError(f"bits must be between 2 and 8, got {bits}")
    q = 2 ** (bits - 1) - 1
    out = copy.deepcopy(model)
    for m in out.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)) and getattr(m, "weight", None) is not None:
            w = m.weight
            flat = w.reshape(w.shape[0], -1)
            scale = flat.abs().amax(1, keepdim=True).clamp_min(1e-12) / q
            deq = torch.clamp(torch.round(flat / scale), -q, q) * scale
            w.copy_(deq.reshape(w.shape))
    return out


def relearn(model: nn.Module, forget, evaluate, *, fraction: float = 0.1, steps: int = 10, lr: float = 0.01,
            batch_size: int | None = None, objective=None, seed: int = 0, score_on: str = "heldout") -> list[float]:
    """Fine-tune a copy of ``model`` for ``steps`` SGD steps on ``fraction`` of the forget set
    (a seeded random part); returns ``[evaluate(m, points) before, after step 1, ..., after step
    k]`` where ``points`` are the forget points *not* used for the steps (``score_on="heldout"``,
    the default) or the whole forget set (``"all"``, the v1 behaviour, which mostly measures how
    fast the relearned points themselves are fit).  ``evaluate(model, data) -> float``."""
    if score_on not in ("heldout", "all"):
        raise ValueError(f"relearn: score_on must be 'heldout' or 'all', got {score_on!r}")
    objective = as_objective(objective)
    data = materialize(forget)
    n = int(data[0].shape[0])
    g = torch.Generator().manual_seed(seed)
    k = max(1, int(round(fraction * n)))
    if score_on == "heldout" and k >= n:
        raise ValueError(f"relearn: fraction {fraction} of {n} forget points leaves none held out")
    perm = torch.randperm(n, generator=g)
    part = subset(data, perm[:k])
    scored = subset(data, perm[k:]) if score_on == "heldout" else data
    m = copy.deepcopy(model)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=lr)
    curve = [float(evaluate(m, scored))]
    it = iter(())
    for _ in range(steps):
        try:
            b = next(it)
        except StopIteration:
            it = batches(part, batch_size, shuffle=True, generator=g)
            b = next(it)
        m.train()
        loss = objective.mean_nll(m, b).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        m.eval()
        curve.append(float(evaluate(m, scored)))
    return curve
