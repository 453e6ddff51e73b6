"""Adapter files: ``save_adapter`` / ``load_adapter`` (structops format) and ``export_lora`` (a
peft LoRA directory stock peft loads).

``save_adapter(model, directory, save_bases=True)`` writes

* ``adapter_model.safetensors``: every adapter tensor (parameters and buffers of the adapted
  modules, the frozen base layers excluded) under ``<module name>.<tensor name>``; a tensor that
  several layers share (RandLoRA / VeRA bases) is written once, under its first key, and the
  other keys are listed as aliases.  ``save_bases=False`` (RandLoRA / VeRA) writes no basis at
  all: ``load_adapter`` regenerates them from the recorded seed with peft's recipe (the dense
  RandLoRA recipe draws in bfloat16 or float16 as peft decides: regeneration is exact on the
  same path, ``structops.randbasis.peft_generation_dtype``).
* ``adapter_config.json``: ``{"format": "structops-adapter", "format_version": 1, "method",
  "config" (resolved: SVFit / WeLore ranks per module), "target_modules" (the adapted names),
  "shapes" ({name: [out, in]}), "aliases", "bases_saved", "structops_version"}``.

``load_adapter(model, directory)`` adapts an un-adapted model with the file's method, config and
exact module names (the SVD methods skip their SVD: the values come from the file), then loads
the tensors (strict: every key present, shapes equal); or, for a model already adapted with the
same method on the same modules, loads the tensors into it.  Another method, other modules,
other shapes or a file that is not a structops adapter raise ``ValueError`` naming the mismatch,
and the model is left as it was.

``export_lora(model, directory)``: a model adapted with ``lora`` or ``svfit`` as a peft LoRA
directory (``adapter_config.json`` with per-module ``rank_pattern`` / ``alpha_pattern``, keys
``base_model.model.<name>.lora_A.weight`` / ``lora_B.weight``).  SVFit's update is exactly rank r:
B = U_r·diag(Δσ)/scaling, A = V_rᵀ with lora_alpha = r (scaling 1), so
``PeftModel.from_pretrained(base, directory)`` reproduces the adapted model (tested to ≤ 1e-6
relative output error).  Other methods raise: their updates are not low-rank (or, RandLoRA,
of rank up to d_min), and a truncating export would be lossy.
"""

from __future__ import annotations

import json
import os
import re

import torch
from torch import nn

from .adapt import METHODS, AdapterState, _adapt, _state, adapter_layers, unload
from .layers import LoRALinear, SVFitLinear

__all__ = ["save_adapter", "load_adapter", "export_lora", "CONFIG_NAME", "WEIGHTS_NAME"]

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_BASES = {"randlora": ("randlora_A", "randlora_B"), "vera": ("vera_A", "vera_B")}


def _adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for n, m in adapter_layers(model).items():
        for k, t in m.state_dict(keep_vars=True).items():
            if k.startswith("base_layer."):
                continue
            out[f"{n}.{k}"] = t.detach()
    return out


def save_adapter(model: nn.Module, directory: str, save_bases: bool = True) -> dict:
    """Write the adapter (see the module doc); returns {"tensors": n, "bytes": file size}."""
    from safetensors.torch import save_file

    st = _state(model, "save_adapter")
    if any(m.merged for m in adapter_layers(model).values()):
        raise RuntimeError("save_adapter: the adapters are merged; call structops.finetune.unmerge(model) first")
    tensors = _adapter_tensors(model)
    if not save_bases:
        if st.method not in _BASES:
            raise ValueError(f"save_adapter: save_bases=False is for randlora / vera (bases regenerated from the seed), "
                             f"not {st.method!r}")
        tensors = {k: t for k, t in tensors.items() if k.rsplit(".", 1)[-1] not in _BASES[st.method]}
    canon: dict[tuple, str] = {}
    aliases, unique = {}, {}
    for k, t in tensors.items():
        ident = (t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride()), t.device)
        if t.numel() and ident in canon:
            aliases[k] = canon[ident]
            continue
        canon[ident] = k
        unique[k] = t.contiguous().clone() if t.numel() else t.contiguous()
    from .. import __version__

    layers = adapter_layers(model)
    cfg = {"format": "structops-adapter", "format_version": 1, "method": st.method, "config": dict(st.config),
           "target_modules": list(st.adapted),
           "shapes": {n: [m.out_features, m.in_features] for n, m in layers.items()},
           "aliases": aliases, "bases_saved": bool(save_bases), "structops_version": __version__}
    os.makedirs(directory, exist_ok=True)
    save_file({k: v.cpu() for k, v in unique.items()}, os.path.join(directory, WEIGHTS_NAME),
              metadata={"format": "pt", "structops_method": st.method})
    with open(os.path.join(directory, CONFIG_NAME), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    return {"tensors": len(unique), "bytes": os.path.getsize(os.path.join(directory, WEIGHTS_NAME))}


def _read(directory: str) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    cpath, wpath = os.path.join(directory, CONFIG_NAME), os.path.join(directory, WEIGHTS_NAME)
    if not os.path.isfile(cpath) or not os.path.isfile(wpath):
        raise ValueError(f"load_adapter: {directory!r} must hold {CONFIG_NAME} and {WEIGHTS_NAME}")
    with open(cpath) as f:
        cfg = json.load(f)
    if not isinstance(cfg, dict) or cfg.get("format") != "structops-adapter":
        hint = f" (a peft {cfg.get('peft_type')} adapter: load it with peft)" if isinstance(cfg, dict) and "peft_type" in cfg else ""
        raise ValueError(f"load_adapter: {cpath} is not a structops adapter config{hint}")
    if cfg.get("format_version") != 1:
        raise ValueError(f"load_adapter: unsupported format_version {cfg.get('format_version')!r} (this structops reads 1)")
    if cfg.get("method") not in METHODS:
        raise ValueError(f"load_adapter: unknown method {cfg.get('method')!r} in {cpath}")
    return cfg, load_file(wpath)


def _check_shapes(model: nn.Module, cfg: dict) -> None:
    for n, (o, i) in cfg["shapes"].items():
        try:
            m = model.get_submodule(n)
        except AttributeError:
            raise ValueError(f"load_adapter: the adapter targets {n!r}, which this model does not have") from None
        base = getattr(m, "base_layer", m)
        shape = (getattr(base, "out_features", None), getattr(base, "in_features", None))
        if shape != (o, i):
            raise ValueError(f"load_adapter: {n!r} is (out, in) = {shape} in the model but {(o, i)} in the adapter file")


def _load_tensors(model: nn.Module, cfg: dict, tensors: dict) -> None:
    layers = adapter_layers(model)
    for alias, k in cfg["aliases"].items():
        if k not in tensors:
            raise ValueError(f"load_adapter: alias {alias!r} points to missing tensor {k!r}")
        tensors[alias] = tensors[k]
    expected = _adapter_tensors(model)
    if not cfg.get("bases_saved", True):
        names = _BASES.get(cfg["method"], ())
        expected = {k: t for k, t in expected.items() if k.rsplit(".", 1)[-1] not in names}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"load_adapter: tensors do not match the adapter: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for k, t in expected.items():
        if tuple(tensors[k].shape) != tuple(t.shape):
            raise ValueError(f"load_adapter: {k} is {tuple(tensors[k].shape)} in the file, {tuple(t.shape)} in the model")
    with torch.no_grad():
        for n, m in layers.items():
            pre = n + "."
            sd = {k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)}
            result = m.load_state_dict(sd, strict=False)
            bad = [k for k in result.missing_keys if not k.startswith("base_layer.")
                   and k.rsplit(".", 1)[-1] not in (() if cfg.get("bases_saved", True) else _BASES[cfg["method"]])]
            if bad or result.unexpected_keys:
                raise ValueError(f"load_adapter: {n}: missing {bad}, unexpected {result.unexpected_keys}")


def load_adapter(model: nn.Module, directory: str) -> nn.Module:
    """Load a ``save_adapter`` directory into ``model`` (see the module doc); returns it."""
    cfg, tensors = _read(directory)
    st = getattr(model, "structops_adapter", None)
    _check_shapes(model, cfg)
    if isinstance(st, AdapterState):
        if st.method != cfg["method"]:
            raise ValueError(f"load_adapter: the file holds a {cfg['method']!r} adapter but the model is adapted with "
                             f"{st.method!r}")
        if list(st.adapted) != list(cfg["target_modules"]):
            raise ValueError(f"load_adapter: the file adapts {cfg['target_modules'][:5]}..., the model "
                             f"{st.adapted[:5]}...")
        backup = {k: v.clone() for k, v in _adapter_tensors(model).items()}
        try:
            _load_tensors(model, cfg, tensors)
        except Exception:
            _load_tensors(model, {"aliases": {}, "method": cfg["method"]}, backup)
            raise
        return model
    pattern = "|".join(re.escape(n) for n in cfg["target_modules"])
    config = dict(cfg["config"])
    _adapt(model, cfg["method"], pattern, None, None, config, init_from_svd=False)
    try:
        if list(model.structops_adapter.adapted) != list(cfg["target_modules"]):
            raise ValueError(f"load_adapter: rebuilding the adapter selected {model.structops_adapter.adapted[:5]}..., "
                             f"the file lists {cfg['target_modules'][:5]}...")
        _load_tensors(model, cfg, tensors)
    except Exception:
        unload(model)
        raise
    return model


def export_lora(model: nn.Module, directory: str) -> dict:
    """Write a ``lora`` / ``svfit`` adapted model as a peft LoRA directory; returns its config."""
    from safetensors.torch import save_file

    st = _state(model, "export_lora")
    if st.method not in ("lora", "svfit"):
        raise ValueError(f"export_lora: a {st.method!r} update is not exactly low rank; only 'lora' and 'svfit' "
                         f"adapters export losslessly to peft LoRA")
    tensors, ranks, alphas = {}, {}, {}
    with torch.no_grad():
        for n, m in adapter_layers(model).items():
            if m.merged:
                raise RuntimeError("export_lora: the adapters are merged; unmerge first")
            if isinstance(m, SVFitLinear):
                r, alpha = m.r, float(m.r)            # scaling = alpha / r = 1
                b = m.svfit_U * m.delta_sigma()       # U_r diag(Δσ) / scaling
                a = m.svfit_Vh
            else:
                assert isinstance(m, LoRALinear)
                r, alpha = m.r, m.alpha
                b, a = m.lora_B, m.lora_A
            key = f"base_model.model.{n}"
            tensors[f"{key}.lora_A.weight"] = a.detach().contiguous().cpu().clone()
            tensors[f"{key}.lora_B.weight"] = b.detach().contiguous().cpu().clone()
            ranks[n], alphas[n] = r, alpha
    r0 = max(ranks.values())
    cfg = {"peft_type": "LORA", "task_type": None, "base_model_name_or_path": None, "r": r0, "lora_alpha": float(r0),
           "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "init_lora_weights": True,
           "target_modules": "(?:" + "|".join(re.escape(n) for n in ranks) + ")", "rank_pattern": {f"^{re.escape(n)}": r for n, r in ranks.items()},
           "alpha_pattern": {f"^{re.escape(n)}": a for n, a in alphas.items()}, "use_rslora": False,
           "use_dora": False, "modules_to_save": None, "inference_mode": True,
           "revision": None}
    os.makedirs(directory, exist_ok=True)
    save_file(tensors, os.path.join(directory, WEIGHTS_NAME), metadata={"format": "pt"})
    with open(os.path.join(directory, CONFIG_NAME), "w") as f:
        json.dump(cfg, f, indent=2)
    return cfg
