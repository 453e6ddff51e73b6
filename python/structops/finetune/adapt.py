"""``structops.adapt``: one call that adapts a model's linears with any structops method.

``adapt(model, method, target_modules=..., exclude_modules=None, *, spectrum_store=None,
**config) -> model`` replaces every selected ``nn.Linear`` (peft's rules:
``structops.finetune.targets``) in place by the method's adapter layer, freezes every other
parameter of the model, and records what it did on ``model.structops_adapter`` (an
``AdapterState``: method, resolved config, adapted names).  Nothing is changed if anything fails
(bad config, no module matched, a rank too large, a non-finite weight): the layers are all built
before the first one is swapped in, and the ``requires_grad`` flags are put back.

Methods and their config (defaults in ``METHODS``):

======== ============================================== ==========================================
method   config                                         trainable per (in, out) layer
======== ============================================== ==========================================
lora     r=8, alpha=8, dropout=0                        r (in + out)
randlora r=32, alpha=640, dropout=0, seed=0, sparse,    n (r + d_min), n = ⌈d_min / r⌉
         very_sparse, scaling_mode="peft"
vera     r=256, d_initial=0.1, dropout=0, seed=0        out + r
sltrain  rank=8, density=0.01, alpha=1, seed=0          rank (in + out) + density · in · out
monarch  nblocks=4, residual=True                       Monarch factors (≈ 2 n √n at nblocks=√n)
butterfly nblocks=1                                     2 · n log2 n · nblocks (n = 2^⌈log2 in⌉)
svfit    energy=0.99 (or r=...), strategy="auto"        r (the top-r singular values)
welore   target_reduction=0.5 (or tau=...), min_ratio=0 k (in + out) on LRCs; N-LRCs frozen
sst      r=8, seed=0, strategy="auto"                   min(in, out) + r (in + out) per round
======== ============================================== ==========================================

RandLoRA and VeRA draw one pair of shared bases for the whole model, sized by the elementwise
maximum (out, in) over the targets, with peft 0.21.2's recipe from ``seed`` (its
``projection_prng_key``) — the same tensors ``get_peft_model`` draws.  The SVD methods take
their spectra from ``spectrum_store`` (default: ``structops.finetune.svd.default_store()``), so a
model is decomposed once.  WeLore's N-LRC matrices are left as they are (dense, frozen) and are
not in ``adapted_modules``.

Model-level helpers (all take the adapted model): ``adapted_modules``, ``trainable_parameters``,
``merge`` / ``unmerge`` (bit-exact restore), ``merge_and_unload`` (plain ``nn.Linear`` modules,
or WeLore's factored ``LowRankLinear`` unless ``welore_dense=True``), ``unload`` (the original
linears back, adapters dropped), ``sst_round`` (SST's per-round re-SVD and resampling).
"""

from __future__ import annotations

import dataclasses
import numbers

import torch
from torch import nn

from ..nn.randbasis import RandLoRALinear, VeRALinear
from ..randbasis.bases import randlora_bases, vera_bases
from . import layers as L
from .svd import default_store, energy_rank, welore_ranks
from .targets import select_targets

__all__ = ["adapt", "METHODS", "AdapterState", "adapted_modules", "trainable_parameters", "merge", "unmerge",
           "merge_and_unload", "unload", "sst_round", "adapter_layers"]

METHODS: dict[str, dict] = {
    "lora": {"r": 8, "alpha": 8.0, "dropout": 0.0},
    "randlora": {"r": 32, "alpha": 640.0, "dropout": 0.0, "seed": 0, "sparse": False, "very_sparse": False,
                 "scaling_mode": "peft"},
    "vera": {"r": 256, "d_initial": 0.1, "dropout": 0.0, "seed": 0},
    "sltrain": {"rank": 8, "density": 0.01, "alpha": 1.0, "seed": 0},
    "monarch": {"nblocks": 4, "residual": True},
    "butterfly": {"nblocks": 1},
    "svfit": {"energy": 0.99, "r": None, "strategy": "auto"},
    "welore": {"target_reduction": 0.5, "tau": None, "min_ratio": 0.0},
    "sst": {"r": 8, "seed": 0, "strategy": "auto"},
}

# resolved per-layer values recorded in the config so a saved adapter rebuilds identically
_RESOLVED = {"svfit": "ranks", "welore": "ranks"}


@dataclasses.dataclass
class AdapterState:
    method: str
    config: dict
    adapted: list[str]
    requires_grad: dict  # parameter name -> requires_grad before adapt (restored by unload)
    info: dict = dataclasses.field(default_factory=dict)


_ATTR = "structops_adapter"


def _state(model: nn.Module, fn: str) -> AdapterState:
    st = getattr(model, _ATTR, None)
    if not isinstance(st, AdapterState):
        raise ValueError(f"{fn}: the model was not adapted with structops.adapt")
    return st


def _resolve_config(method: str, config: dict) -> dict:
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"adapt: unknown method {method!r}; expected one of {sorted(METHODS)}")
    allowed = dict(METHODS[method])
    extra = set(config) - set(allowed) - ({_RESOLVED[method]} if method in _RESOLVED else set())
    if extra:
        raise ValueError(f"adapt: unknown config {sorted(extra)} for method {method!r}; it accepts {sorted(allowed)}")
    allowed.update(config)
    for k in ("dropout",):
        if k in allowed and not (isinstance(allowed[k], numbers.Real) and 0.0 <= float(allowed[k]) < 1.0):
            raise ValueError(f"adapt: {k} must be in [0, 1), got {allowed[k]!r}")
    return allowed


def _shared_dims(mods: dict[str, nn.Linear]) -> tuple[int, int]:
    """peft's _find_dim: the elementwise maximum (out, in) over the targets."""
    return max(m.out_features for m in mods.values()), max(m.in_features for m in mods.values())


def _weights(mods: dict[str, nn.Linear]) -> dict[str, torch.Tensor]:
    return {n: m.weight for n, m in mods.items()}


def _build(method: str, mods: dict[str, nn.Linear], cfg: dict, store, init_from_svd: bool) -> tuple[dict, dict]:
    """{name: adapter layer} (None: left as it is) and info for the state."""
    info: dict = {}
    if method == "lora":
        return {n: L.LoRALinear(m, cfg["r"], cfg["alpha"], cfg["dropout"]) for n, m in mods.items()}, info
    if method == "sltrain":
        return {n: L.SLTrainAdapter(m, cfg["rank"], cfg["density"], cfg["alpha"], seed=cfg["seed"] + i)
                for i, (n, m) in enumerate(mods.items())}, info
    if method == "monarch":
        out = {n: L.MonarchAdapter(m, cfg["nblocks"], cfg["residual"]) for n, m in mods.items()}
        info["projection_rel_err"] = {n: a.projection_rel_err for n, a in out.items()}
        return out, info
    if method == "butterfly":
        return {n: L.ButterflyAdapter(m, cfg["nblocks"]) for n, m in mods.items()}, info
    if method in ("randlora", "vera"):
        out_max, in_max = _shared_dims(mods)
        w0 = next(iter(mods.values())).weight
        if method == "randlora":
            a, b = randlora_bases(out_max, in_max, cfg["r"], cfg["seed"], cfg["sparse"], cfg["very_sparse"])
            a, b = a.to(device=w0.device, dtype=w0.dtype), b.to(device=w0.device, dtype=w0.dtype)
            return {n: RandLoRALinear(m, cfg["r"], cfg["alpha"], cfg["dropout"], seed=cfg["seed"], basis_A=a, basis_B=b,
                                      scaling_mode=cfg["scaling_mode"]) for n, m in mods.items()}, info
        a, b = vera_bases(out_max, in_max, cfg["r"], cfg["seed"])
        a, b = a.to(device=w0.device, dtype=w0.dtype), b.to(device=w0.device, dtype=w0.dtype)
        for n, m in mods.items():
            L._check_rank("VeRALinear", "r", cfg["r"], m.in_features, m.out_features)
        return {n: VeRALinear(m, cfg["r"], cfg["dropout"], cfg["d_initial"], vera_A=a, vera_B=b)
                for n, m in mods.items()}, info
    # SVD family
    ranks = cfg.get("ranks")
    if init_from_svd:
        spectra = store.svd(_weights(mods))
    else:  # the values come from an adapter file: shapes only
        spectra = {}
        for n, m in mods.items():
            k = min(m.in_features, m.out_features)
            w = m.weight
            spectra[n] = (w.new_zeros(m.out_features, k), w.new_zeros(k), w.new_zeros(k, m.in_features))
    if method == "svfit":
        if ranks is None:
            if cfg["r"] is not None:
                ranks = {n: L._check_rank("SVFitLinear", "r", cfg["r"], m.in_features, m.out_features)
                         for n, m in mods.items()}
            else:
                if not 0.0 < float(cfg["energy"]) <= 1.0:
                    raise ValueError(f"adapt: svfit energy must be in (0, 1], got {cfg['energy']!r}")
                ranks = {n: energy_rank(spectra[n][1], cfg["energy"]) for n in mods}
        out = {}
        for n, m in mods.items():
            u, s, vh = spectra[n]
            k = ranks[n]
            out[n] = L.SVFitLinear(m, u[:, :k], s[:k], vh[:k], cfg["strategy"])
        info["ranks"] = ranks
        return out, info
    if method == "welore":
        if ranks is None:
            ranks, red, tau = welore_ranks({n: spectra[n][1] for n in mods}, cfg["target_reduction"], cfg["tau"],
                                           cfg["min_ratio"])
            info.update(rank_reduction=red, tau=tau)
        out = {}
        for n, m in mods.items():
            k = ranks.get(n)
            if k is None:
                out[n] = None
                continue
            u, s, vh = spectra[n]
            out[n] = L.WeLoreLinear(m, u[:, :k], s[:k], vh[:k])
        info["ranks"] = ranks
        return out, info
    if method == "sst":
        gen = torch.Generator(device="cpu").manual_seed(int(cfg["seed"]))
        out = {}
        for n, m in mods.items():
            u, s, vh = spectra[n]
            out[n] = L.SSTLinear(m, u, s, vh, cfg["r"], cfg["strategy"], generator=gen)
        return out, info
    raise AssertionError(method)  # pragma: no cover


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def adapt(model: nn.Module, method: str, target_modules=None, exclude_modules=None, *, spectrum_store=None,
          **config) -> nn.Module:
    """Adapt ``model`` in place (see the module doc); returns it."""
    return _adapt(model, method, target_modules, exclude_modules, spectrum_store, config, init_from_svd=True)


def _adapt(model, method, target_modules, exclude_modules, spectrum_store, config, init_from_svd: bool):
    if not isinstance(model, nn.Module):
        raise ValueError(f"adapt: model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(getattr(model, _ATTR, None), AdapterState):
        raise ValueError(f"adapt: the model already carries a structops {model.structops_adapter.method!r} adapter; "
                         f"call structops.finetune.unload(model) or merge_and_unload(model) first")
    cfg = _resolve_config(method, dict(config))
    names = select_targets(model, target_modules, exclude_modules)
    mods = {n: model.get_submodule(n) for n in names}
    for n, m in mods.items():
        if not m.weight.is_floating_point():
            raise ValueError(f"adapt: {n!r} has a non-floating weight ({m.weight.dtype})")
    store = spectrum_store if spectrum_store is not None else default_store()
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        built, info = _build(method, mods, cfg, store, init_from_svd)
    except Exception:
        for n, p in model.named_parameters():
            p.requires_grad_(before[n])
        raise
    for p in model.parameters():
        p.requires_grad_(False)
    adapted = []
    for n, layer in built.items():
        if layer is not None:
            _set_module(model, n, layer)
            adapted.append(n)
    if "ranks" in info:
        cfg["ranks"] = dict(info["ranks"])
    setattr(model, _ATTR, AdapterState(method, cfg, adapted, before, info))
    return model


def adapter_layers(model: nn.Module) -> dict[str, nn.Module]:
    st = _state(model, "adapter_layers")
    return {n: model.get_submodule(n) for n in st.adapted}


def adapted_modules(model: nn.Module) -> list[str]:
    """The names of the modules ``adapt`` replaced (named_modules order)."""
    return list(_state(model, "adapted_modules").adapted)


@dataclasses.dataclass
class TrainableSummary:
    trainable: int
    total: int
    by_module: dict

    @property
    def fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return (f"trainable params: {self.trainable:,} || all params: {self.total:,} || "
                f"trainable%: {100 * self.fraction:.4f}")


def trainable_parameters(model: nn.Module) -> TrainableSummary:
    """Counts (peft's print_trainable_parameters, as data): shared tensors counted once."""
    seen, trainable, total, by_module = set(), 0, 0, {}
    for n, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
            mod = n.rpartition(".")[0]
            by_module[mod] = by_module.get(mod, 0) + p.numel()
    return TrainableSummary(trainable, total, by_module)


def merge(model: nn.Module) -> None:
    """Merge every adapter into its base weight (reversible with ``unmerge``); all merged
    weights are checked first, so a non-finite one leaves the whole model unchanged.  (Each is
    formed twice — once to check, once to write — so that no more than one extra weight is held
    at a time besides the W0 copies unmerge needs.)"""
    layers = adapter_layers(model)
    for n, m in layers.items():
        if m.merged:
            raise RuntimeError(f"merge: {n!r} is already merged")
        w = m.merged_weight() if isinstance(m, (RandLoRALinear, VeRALinear)) else m.adapted_weight()
        if not torch.isfinite(w).all():
            raise RuntimeError(f"merge: the merged weight of {n!r} is not finite; nothing was merged")
    for m in layers.values():
        m.merge()


def unmerge(model: nn.Module) -> None:
    """Undo ``merge``: every base weight back bit for bit."""
    layers = adapter_layers(model)
    for n, m in layers.items():
        if not m.merged:
            raise RuntimeError(f"unmerge: {n!r} is not merged")
    for m in layers.values():
        m.unmerge()


def _restore_flags(model: nn.Module, st: AdapterState) -> None:
    for n, p in model.named_parameters():
        if n in st.requires_grad:
            p.requires_grad_(st.requires_grad[n])


def merge_and_unload(model: nn.Module, welore_dense: bool = False) -> nn.Module:
    """Replace every adapter by a plain module holding the adapted weight (WeLore: a
    ``LowRankLinear`` unless ``welore_dense``); returns the model, no longer adapted."""
    st = _state(model, "merge_and_unload")
    new = {}
    for n, m in adapter_layers(model).items():
        if isinstance(m, (RandLoRALinear, VeRALinear)):
            new[n] = L.linear_with_weight(m.base_layer, m.merged_weight())
        elif isinstance(m, L.WeLoreLinear):
            new[n] = m.merged_module(factored=not welore_dense)
        else:
            new[n] = m.merged_module()
        for p in new[n].parameters():
            if not torch.isfinite(p).all():
                raise RuntimeError(f"merge_and_unload: the merged weight of {n!r} is not finite; nothing was changed")
    for n, mod in new.items():
        _set_module(model, n, mod)
    delattr(model, _ATTR)
    for n, mod in new.items():  # WeLore's LowRankLinear: its factors take the old weight's flag
        for pn, p in mod.named_parameters():
            p.requires_grad_(st.requires_grad.get(f"{n}.{pn}", st.requires_grad.get(f"{n}.weight", True)))
    _restore_flags(model, st)
    return model


def unload(model: nn.Module) -> nn.Module:
    """Put the original linears back (adapters dropped, merged ones unmerged first)."""
    st = _state(model, "unload")
    layers = adapter_layers(model)
    for m in layers.values():
        if m.merged:
            m.unmerge()
    for n, m in layers.items():
        _set_module(model, n, m.base_layer)
    delattr(model, _ATTR)
    _restore_flags(model, st)
    return model


def sst_round(model: nn.Module, generator: torch.Generator | None = None, resvd: bool = True) -> None:
    """One SST round boundary: re-SVD every SST layer (``resvd``) and draw new pairs ∝ σ.  Call
    it every ``round_length`` optimizer steps (experimental: finetune.md §6)."""
    st = _state(model, "sst_round")
    if st.method != "sst":
        raise ValueError(f"sst_round: the model is adapted with {st.method!r}, not 'sst'")
    for m in adapter_layers(model).values():
        if resvd:
            m.resvd()
        m.resample(generator)
