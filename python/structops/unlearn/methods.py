"""Unlearning methods, one calling convention:

    new_model = method(model, forget, retain, *, objective=None, inplace=False, seed=0, **hparams)

* ``forget`` / ``retain``: tensor tuples, Datasets or DataLoaders (see :mod:`.data`).
* ``objective``: :class:`~.objectives.Classification` (default), :class:`~.objectives.CausalLM`
  (token-level loss with label masking) or any ``loss_fn(model, batch) -> (B,)``.
* ``inplace=False`` (default): the model is deep-copied and the copy is returned; the caller's
  model is never modified.  ``inplace=True`` updates and returns ``model`` itself.
* Deterministic given ``seed`` (data order and any sampling run under a forked RNG).
* Every call appends ``{"method", "seconds", "hparams"}`` to ``new_model.unlearning_log``
  (the wall-clock time of the method itself; sequential requests accumulate).

Defaults are the published ones (source in each docstring); they are LLM- or CIFAR-scale and
meant to be tuned — ``python -m structops.unlearn.bench`` tunes every method with the same
budget.
"""

from __future__ import annotations

import copy
import functools
import math
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import batches, check_unlearning_inputs, materialize, num_examples
from .objectives import Objective, as_objective

__all__ = [
    "finetune",
    "gradient_ascent",
    "grad_diff",
    "npo",
    "simnpo",
    "ssd",
    "l1_sparse",
    "prune_then_unlearn",
    "iau",
    "newton_step",
    "kfade",
    "apply_update",
    "representation_projection",
    "METHODS",
    "original_variant",
    "magnitude_masks",
    "GR_ALPHA",
]


# ---------------------------------------------------------------------------------------------
# shared machinery
# ---------------------------------------------------------------------------------------------
# arguments that change how a method computes, never what it returns: kept out of unlearning_log
UNLOGGED_HPARAMS = ("curvature_cache",)


def _method(fn: Callable) -> Callable:
    """Common wrapper: validation, copy-or-inplace, forked RNG, timing, log."""

    @functools.wraps(fn)
    def wrapper(model: nn.Module, forget, retain=None, *, objective=None, inplace: bool = False, seed: int = 0,
                check: bool = True, **hparams):
        if not isinstance(model, nn.Module):
            raise TypeError(f"{fn.__name__}: model must be an nn.Module, got {type(model).__name__}")
        obj = as_objective(objective)
        if check:
            check_unlearning_inputs(model, forget, retain, obj, require_retain=getattr(wrapper, "needs_retain", True))
        target = model if inplace else copy.deepcopy(model)
        log = list(getattr(model, "unlearning_log", []))
        cuda_devices = sorted({p.device.index or 0 for p in target.parameters() if p.device.type == "cuda"})
        start = time.perf_counter()
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(seed)
            gen = torch.Generator().manual_seed(seed)
            out = fn(target, forget, retain, obj, gen, **hparams)
        seconds = time.perf_counter() - start
        out = out if out is not None else target
        logged = {k: v for k, v in hparams.items() if k not in UNLOGGED_HPARAMS}
        out.unlearning_log = log + [{"method": fn.__name__, "seconds": seconds, "hparams": logged}]
        return out

    wrapper.raw = fn
    return wrapper


def _needs_retain(flag: bool):
    """Marks a wrapped method that may run without retain data."""

    def deco(wrapper):
        wrapper.needs_retain = flag
        return wrapper

    return deco


def _optimizer(params, name: str, lr: float, weight_decay: float = 0.0, momentum: float = 0.9):
    params = [p for p in params if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'sgd', 'adam' or 'adamw', got {name!r}")


def _cycle(data, batch_size, gen):
    """Endless batches of `data`, reshuffled each pass."""
    while True:
        yielded = False
        for b in batches(data, batch_size, shuffle=True, generator=gen):
            yielded = True
            yield b
        if not yielded:
            return


def _mean_loss(objective: Objective, model, batch) -> Tensor:
    return objective.mean_nll(model, batch).mean()


def _prefix_key(name: str, model, forget, retain, objective, gen, hparams: dict, cache) -> str | None:
    """The key under which _train_loop keeps a finished run for a later configuration that only
    trains longer: everything the first epochs depend on — the model's state, the data, the
    objective, every hyperparameter but ``epochs``, the generator's and torch's RNG states."""
    if cache is None:
        return None
    import hashlib

    rng = hashlib.sha1(gen.get_state().numpy().tobytes() + torch.get_rng_state().numpy().tobytes()).hexdigest()
    settings = (sorted((k, repr(v)) for k, v in hparams.items() if k != "epochs"), rng)
    datasets = (forget,) if retain is None else (forget, retain)
    return _data_key(model, datasets, objective, f"{name}-epoch-prefix", settings, cache)


def _train_loop(model, forget, retain, objective, gen, *, epochs, batch_size, lr, optimizer, weight_decay,
                step_loss, over="forget", grad_clip=None, post_step=None, warmup_epochs: float = 0.0,
                prefix_cache: dict | None = None, prefix_key: str | None = None):
    """Generic optimisation loop.  One epoch = one pass over `over` ('forget' or 'retain');
    step_loss(model, forget_batch, retain_batch, step, total_steps) returns the scalar loss.
    ``warmup_epochs``: W = ceil(warmup_epochs * steps_per_epoch) warmup steps with Hugging Face
    Trainer's linear warmup (what open-unlearning's ``warmup_epochs`` turns into): optimizer step
    t (0-based) runs at lr * t / W for t < W (the first at lr 0), then at lr.  The decay after
    the warmup that HF's default scheduler would add is not reproduced (constant lr).

    ``prefix_cache`` / ``prefix_key`` (_prefix_key; only for a step_loss that does not read the
    total step count): the finished run's live state (model, optimizer, generator, the other
    data's batch iterator, step, RNG) is kept under the key, and a later call with the same key
    and at least as many epochs continues it instead of repeating its epochs — the same steps
    on the same state, so bit for bit the straight run.  The caller then gets a copy."""
    if warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
    main = forget if over == "forget" else retain
    other = retain if over == "forget" else forget
    n_main = num_examples(main)
    steps_per_epoch = max(1, math.ceil(n_main / (batch_size or n_main)))
    total = epochs * steps_per_epoch
    warmup = math.ceil(warmup_epochs * steps_per_epoch)
    live = prefix_cache.get(prefix_key) if prefix_key is not None else None
    if live is not None and live["epochs"] <= epochs:
        del prefix_cache[prefix_key]  # continued (mutated) below; stored again at the end
        model, opt, gen, other_iter, step, done = (live[k] for k in ("model", "opt", "gen", "other_iter", "step",
                                                                       "epochs"))
        torch.set_rng_state(live["rng"])
    else:
        opt = _optimizer(model.parameters(), optimizer, lr, weight_decay)
        other_iter = _cycle(other, batch_size, gen) if other is not None else None
        step, done = 0, 0
    model.train()
    for _ in range(epochs - done):
        for b in batches(main, batch_size, shuffle=True, generator=gen):
            o = next(other_iter) if other_iter is not None else None
            fb, rb = (b, o) if over == "forget" else (o, b)
            if warmup:
                for group in opt.param_groups:
                    group["lr"] = lr * min(1.0, step / warmup)
            loss = step_loss(model, fb, rb, step, total)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            if post_step is not None:
                post_step(model)
            step += 1
    model.eval()
    if prefix_key is not None:
        prefix_cache[prefix_key] = dict(model=model, opt=opt, gen=gen, other_iter=other_iter, step=step,
                                        epochs=epochs, rng=torch.get_rng_state())
        return copy.deepcopy(model)  # the kept one may train on for a later configuration
    return model


def _retain_term(kind: str, objective, model, ref, batch):
    if kind == "nll":
        return _mean_loss(objective, model, batch)
    if kind == "kl":  # KL(ref || model) over scored positions
        with torch.no_grad():
            ref_logp, _, _ = objective.scored_logprobs(ref, batch)
        logp, _, _ = objective.scored_logprobs(model, batch)
        return F.kl_div(logp, ref_logp, reduction="batchmean", log_target=True)
    raise ValueError(f"retain_loss must be 'nll' or 'kl', got {kind!r}")


def _frozen_copy(model):
    ref = copy.deepcopy(model)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


# ---------------------------------------------------------------------------------------------
# first-order methods
# ---------------------------------------------------------------------------------------------
@_method
def finetune(model, forget, retain, objective, gen, *, lr: float = 0.01, epochs: int = 10, batch_size: int | None = 128,
             optimizer: str = "sgd", weight_decay: float = 5e-4, curvature_cache: dict | None = None):
    """Fine-tune on the retain set only ("FT", Unlearn-Sparse: lr 0.01, 10 epochs, SGD momentum
    0.9, weight decay 5e-4).

    ``curvature_cache`` (here and in gradient_ascent, grad_diff, npo, simnpo): an optional dict
    the caller owns; a finished run is kept in it and a later call that differs only in training
    longer continues it (_train_loop's epoch prefix) — bit for bit what it would have computed
    (the protocol shares one per original across a grid's epoch counts)."""
    _check_cache("finetune", curvature_cache)
    key = _prefix_key("finetune", model, forget, retain, objective, gen,
                      dict(lr=lr, batch_size=batch_size, optimizer=optimizer, weight_decay=weight_decay), curvature_cache)
    return _train_loop(model, forget, retain, objective, gen, epochs=epochs, batch_size=batch_size, lr=lr,
                       optimizer=optimizer, weight_decay=weight_decay, over="retain",
                       step_loss=lambda m, fb, rb, s, t: _mean_loss(objective, m, rb),
                       prefix_cache=curvature_cache, prefix_key=key)


@_needs_retain(False)
@_method
def gradient_ascent(model, forget, retain, objective, gen, *, lr: float = 1e-4, epochs: int = 5,
                    batch_size: int | None = 128, optimizer: str = "sgd", weight_decay: float = 0.0,
                    curvature_cache: dict | None = None):
    """Ascend the forget loss ("GA", Unlearn-Sparse: lr 1e-4, 5 epochs; open-unlearning
    GradAscent = -NLL(forget)).  ``curvature_cache``: as finetune's."""
    _check_cache("gradient_ascent", curvature_cache)
    key = _prefix_key("gradient_ascent", model, forget, None, objective, gen,
                      dict(lr=lr, batch_size=batch_size, optimizer=optimizer, weight_decay=weight_decay), curvature_cache)
    return _train_loop(model, forget, None, objective, gen, epochs=epochs, batch_size=batch_size, lr=lr,
                       optimizer=optimizer, weight_decay=weight_decay, over="forget",
                       step_loss=lambda m, fb, rb, s, t: -_mean_loss(objective, m, fb),
                       prefix_cache=curvature_cache, prefix_key=key)


@_method
def grad_diff(model, forget, retain, objective, gen, *, lr: float = 1e-5, epochs: int = 10, batch_size: int | None = 32,
              gamma: float = 1.0, alpha: float = 1.0, retain_loss: str = "nll", optimizer: str = "adamw",
              weight_decay: float = 0.01, warmup_epochs: float = 1.0, curvature_cache: dict | None = None):
    """Gradient difference: gamma * (-NLL(forget)) + alpha * retain term, retain term NLL or
    KL(original || model) on retain (open-unlearning GradDiff: gamma = alpha = 1, lr 1e-5,
    10 epochs, AdamW, weight decay 0.01, one warmup epoch).  ``curvature_cache``: as finetune's."""
    _check_cache("grad_diff", curvature_cache)
    key = _prefix_key("grad_diff", model, forget, retain, objective, gen,
                      dict(lr=lr, batch_size=batch_size, gamma=gamma, alpha=alpha, retain_loss=retain_loss,
                           optimizer=optimizer, weight_decay=weight_decay, warmup_epochs=warmup_epochs), curvature_cache)
    ref = _frozen_copy(model) if retain_loss == "kl" else None
    return _train_loop(model, forget, retain, objective, gen, epochs=epochs, batch_size=batch_size, lr=lr,
                       optimizer=optimizer, weight_decay=weight_decay, over="forget", warmup_epochs=warmup_epochs,
                       step_loss=lambda m, fb, rb, s, t: -gamma * _mean_loss(objective, m, fb)
                       + alpha * _retain_term(retain_loss, objective, m, ref, rb),
                       prefix_cache=curvature_cache, prefix_key=key)


@_method
def npo(model, forget, retain, objective, gen, *, beta: float = 0.1, lr: float = 1e-5, epochs: int = 10,
        batch_size: int | None = 32, gamma: float = 1.0, alpha: float = 1.0, retain_loss: str = "nll",
        optimizer: str = "adamw", weight_decay: float = 0.01, warmup_epochs: float = 1.0,
        curvature_cache: dict | None = None):
    """Negative Preference Optimisation (Zhang et al. 2024; open-unlearning NPO: beta = 0.1,
    gamma = alpha = 1):  -(2/beta) log sigmoid(-beta (NLL_ref - NLL_model)) on forget, with
    sequence-summed NLLs and the frozen original as reference, plus alpha * retain term; one
    warmup epoch as open-unlearning's trainers.  ``curvature_cache``: as finetune's."""
    _check_cache("npo", curvature_cache)
    key = _prefix_key("npo", model, forget, retain, objective, gen,
                      dict(beta=beta, lr=lr, batch_size=batch_size, gamma=gamma, alpha=alpha, retain_loss=retain_loss,
                           optimizer=optimizer, weight_decay=weight_decay, warmup_epochs=warmup_epochs), curvature_cache)
    ref = _frozen_copy(model)

    def step_loss(m, fb, rb, s, t):
        nll, _ = objective.nll(m, fb)
        with torch.no_grad():
            nll_ref, _ = objective.nll(ref, fb)
        log_ratio = nll_ref - nll  # log p_model - log p_ref
        forget_term = -F.logsigmoid(-beta * log_ratio).mean() * 2 / beta
        return gamma * forget_term + alpha * _retain_term(retain_loss, objective, m, ref, rb)

    return _train_loop(model, forget, retain, objective, gen, epochs=epochs, batch_size=batch_size, lr=lr,
                       optimizer=optimizer, weight_decay=weight_decay, over="forget", step_loss=step_loss,
                       warmup_epochs=warmup_epochs, prefix_cache=curvature_cache, prefix_key=key)


@_method
def simnpo(model, forget, retain, objective, gen, *, beta: float = 4.5, delta: float = 0.0, lr: float = 1e-5,
           epochs: int = 10, batch_size: int | None = 32, gamma: float = 0.125, alpha: float = 1.0,
           retain_loss: str = "nll", optimizer: str = "adamw", weight_decay: float = 0.01, warmup_epochs: float = 1.0,
           curvature_cache: dict | None = None):
    """SimNPO (Fan et al. 2024; open-unlearning: beta = 4.5, delta = 0, gamma = 0.125, alpha = 1,
    one warmup epoch):
    reference-free, length-normalised: -(2/beta) log sigmoid(beta (NLL/|y| - delta)) on forget.
    ``curvature_cache``: as finetune's."""
    _check_cache("simnpo", curvature_cache)
    key = _prefix_key("simnpo", model, forget, retain, objective, gen,
                      dict(beta=beta, delta=delta, lr=lr, batch_size=batch_size, gamma=gamma, alpha=alpha,
                           retain_loss=retain_loss, optimizer=optimizer, weight_decay=weight_decay,
                           warmup_epochs=warmup_epochs), curvature_cache)
    ref = _frozen_copy(model) if retain_loss == "kl" else None

    def step_loss(m, fb, rb, s, t):
        nll, n = objective.nll(m, fb)
        forget_term = -F.logsigmoid(beta * (nll / n.clamp_min(1) - delta)).mean() * 2 / beta
        return gamma * forget_term + alpha * _retain_term(retain_loss, objective, m, ref, rb)

    return _train_loop(model, forget, retain, objective, gen, epochs=epochs, batch_size=batch_size, lr=lr,
                       optimizer=optimizer, weight_decay=weight_decay, over="forget", step_loss=step_loss,
                       warmup_epochs=warmup_epochs, prefix_cache=curvature_cache, prefix_key=key)


def _l1(model) -> Tensor:
    return sum(p.abs().sum() for p in model.parameters() if p.requires_grad)


@_method
def l1_sparse(model, forget, retain, objective, gen, *, lr: float = 0.01, epochs: int = 10, batch_size: int | None = 128,
              alpha: float = 5e-4, no_l1_epochs: int = 0, optimizer: str = "sgd", weight_decay: float = 5e-4):
    """l1-sparse unlearning (Unlearn-Sparse ``FT_l1``): fine-tune on retain with
    CE + gamma_t ||theta||_1, gamma_t = alpha (1 - t / (E - E_no_l1)) decayed linearly per epoch,
    0 for the last ``no_l1_epochs`` (lr 0.01, 10 epochs; alpha is swept in the paper)."""
    decay_epochs = max(1, epochs - no_l1_epochs)
    steps_per_epoch = max(1, math.ceil(num_examples(retain) / (batch_size or num_examples(retain))))

    def step_loss(m, fb, rb, s, t):
        epoch = s // steps_per_epoch
        g = alpha * max(0.0, 1 - epoch / decay_epochs) if epoch < decay_epochs else 0.0
        loss = _mean_loss(objective, m, rb)
        return loss + g * _l1(m) if g > 0 else loss

    return _train_loop(model, forget, retain, objective, gen, epochs=epochs, batch_size=batch_size, lr=lr,
                       optimizer=optimizer, weight_decay=weight_decay, over="retain", step_loss=step_loss)


@_method
def iau(model, forget, retain, objective, gen, *, lr: float = 1e-3, batch_size: int | None = 512,
        curvature_cache: dict | None = None):
    """Influence Approximation Unlearning (IAU, Lolo1222/IAU): ONE Adam step (lr 1e-3) on the
    full-data gradient of mean CE(retain) - mean CE(forget) (retain descent + forget ascent).
    IAU's original is trained with its gradient restriction, loss + 0.005 * sum_params ||grad||_2
    (``Track.train_variant(..., "gr-0.005")``, supplied by the protocol through
    ``iau.original_variant``); applied to an ordinary original this is a one-step GradDiff.

    ``curvature_cache``: as kfade's — an optional dict the caller owns; the gradient (which
    depends on the model's state, both data sets, the objective and the batch size, not on lr)
    is stored in it and reused by a later call with the same key, which then takes exactly the
    step it would have taken (the protocol shares one per original across the lr grid)."""
    _check_cache("iau", curvature_cache)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    opt.zero_grad(set_to_none=True)

    def gradient():
        for data, sign in ((retain, 1.0), (forget, -1.0)):
            n = num_examples(data)
            for b in batches(data, batch_size):
                loss = objective.mean_nll(model, b).sum() * (sign / n)
                loss.backward()
        return [p.grad for p in params]

    key = _data_key(model, (retain, forget), objective, "iau-gradient", batch_size, curvature_cache)
    for p, g in zip(params, _cached(curvature_cache, key, gradient)):  # the step reads a copy: the kept one stays
        p.grad = None if g is None else g.clone()
    opt.step()
    model.eval()
    return model


# ---------------------------------------------------------------------------------------------
# Selective Synaptic Dampening
# ---------------------------------------------------------------------------------------------
def _diag_importance(model, data, objective, batch_size) -> dict[str, Tensor]:
    """SSD importance: (1/#batches) sum_batches (grad of the batch-mean loss)^2."""
    imp = {n: torch.zeros_like(p) for n, p in model.named_parameters() if p.requires_grad}
    count = 0
    for b in batches(data, batch_size):
        model.zero_grad(set_to_none=True)
        _mean_loss(objective, model, b).backward()
        for n, p in model.named_parameters():
            if p.requires_grad and p.grad is not None:
                imp[n] += p.grad.detach() ** 2
        count += 1
    model.zero_grad(set_to_none=True)
    return {n: v / max(count, 1) for n, v in imp.items()}


@_method
def ssd(model, forget, retain, objective, gen, *, alpha: float = 10.0, lam: float = 1.0, exponent: float = 1.0,
        batch_size: int | None = 64, curvature_cache: dict | None = None):
    """Selective Synaptic Dampening (Foster et al. 2024, if-loops/selective-synaptic-dampening,
    exact): importances I_D (full train set D = retain + forget) and I_Df (forget), each the
    squared batch-mean gradient averaged over batches (eval mode, true labels); parameters with
    I_Df > alpha I_D are multiplied by beta = min((lam I_D / I_Df)^exponent, 1).  Defaults:
    lam = 1, alpha = 10 (ResNet18), batch size 64.

    ``curvature_cache``: as kfade's — an optional dict the caller owns; the two importances
    (which depend on the model's state, both data sets, the objective and the batch size, not
    on alpha, lam or exponent) are stored in it and reused by a later call with the same key,
    which then dampens exactly as it would have (the protocol shares one per original)."""
    _check_cache("ssd", curvature_cache)
    model.eval()
    key = _data_key(model, (retain, forget), objective, "ssd-importance", batch_size, curvature_cache)
    i_d, i_f = _cached(curvature_cache, key, lambda: (_diag_importance(model, _concat_data(retain, forget), objective,
                                                                       batch_size),
                                                      _diag_importance(model, forget, objective, batch_size)))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n not in i_d:
                continue
            sel = i_f[n] > alpha * i_d[n]
            beta = torch.clamp((lam * i_d[n] / i_f[n].clamp_min(1e-30)) ** exponent, max=1.0)
            p.mul_(torch.where(sel, beta, torch.ones_like(beta)))
    return model


def _concat_data(a, b):
    ma, mb = materialize(a), materialize(b)
    return tuple(torch.cat([x, y]) for x, y in zip(ma, mb))


# ---------------------------------------------------------------------------------------------
# prune, then unlearn
# ---------------------------------------------------------------------------------------------
def _output_head(model) -> nn.Module | None:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is not None:
        return head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def _prunable(model) -> list[tuple[nn.Module, str]]:
    """The weights Unlearn-Sparse prunes: every Linear / Conv weight except the output head
    (upstream prunes a ResNet's convolutions and leaves its classifier; here the head is
    ``model.get_output_embeddings()`` or else the last nn.Linear)."""
    head = _output_head(model)
    return [(m, "weight") for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))
            and getattr(m, "weight", None) is not None and m is not head]


def magnitude_masks(model, sparsity: float) -> dict[nn.Module, Tensor]:
    """One-shot global magnitude pruning (OMP) masks of ``_prunable(model)``: the
    ``sparsity`` fraction of those weights with the smallest |w| get 0 (ties at the threshold
    broken by position, as torch.nn.utils.prune's L1Unstructured)."""
    targets = _prunable(model)
    if not targets:
        raise ValueError("prune: the model has no Linear/Conv weights besides its output head")
    flat = torch.cat([m.weight.detach().abs().reshape(-1) for m, _ in targets])
    k = int(round(sparsity * flat.numel()))
    keep = torch.ones_like(flat)
    if k > 0:
        keep[torch.topk(flat, k, largest=False).indices] = 0
    masks, off = {}, 0
    for m, _ in targets:
        n = m.weight.numel()
        masks[m] = keep[off:off + n].reshape(m.weight.shape)
        off += n
    return masks


@_method
def prune_then_unlearn(model, forget, retain, objective, gen, *, sparsity: float = 0.95,
                       unlearner: str | Callable = "finetune", unlearner_kwargs: dict | None = None):
    """Unlearn-Sparse "prune first, then unlearn": global magnitude pruning (OMP) of the
    Linear/Conv weights except the output head to ``sparsity`` (default 0.95), then
    ``unlearner`` (a method or its name) runs on the masked model; the masks stay in force
    during unlearning (weights reparametrised as weight_orig * mask) and are made permanent
    afterwards.  Given Unlearn-Sparse's sparse original (pruned, rewound, retrained with the mask:
    ``Track.train_variant(..., "sparse-<rate>")``, which the protocol supplies through
    ``prune_then_unlearn.original_variant``), its zeros are exactly the weights OMP removes again,
    so the mask is the original's; on a dense original this is one-shot OMP without rewind."""
    import torch.nn.utils.prune as prune

    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    masks = magnitude_masks(model, sparsity)
    for m, mask in masks.items():
        prune.custom_from_mask(m, "weight", mask)
    fn = METHODS[unlearner] if isinstance(unlearner, str) else unlearner
    if getattr(fn, "raw", None) is None:
        raise ValueError(f"unlearner must be a structops.unlearn method or its name, got {unlearner!r}")
    fn.raw(model, forget, retain, objective, gen, **(unlearner_kwargs or {}))
    for m in masks:
        prune.remove(m, "weight")
    return model


# The original each method is meant to start from (structops.unlearn.protocol trains it when the
# track supports it; "dense" = the track's ordinary original).
prune_then_unlearn.original_variant = lambda config: f"sparse-{float(config.get('sparsity', 0.95)):g}"
GR_ALPHA = 0.005  # IAU's train_model.py gradient-restriction weight
iau.original_variant = lambda config: f"gr-{GR_ALPHA:g}"


def original_variant(method: str, config: dict) -> str:
    """"dense", "sparse-<rate>" or "gr-<alpha>": which original ``method`` with ``config`` assumes."""
    fn = METHODS.get(method) if isinstance(method, str) else method
    rule = getattr(fn, "original_variant", None)
    return rule(config or {}) if rule is not None else "dense"


# ---------------------------------------------------------------------------------------------
# Newton / influence step with the exact GGN (small models)
# ---------------------------------------------------------------------------------------------
def _flat_params(model):
    return [p for p in model.parameters() if p.requires_grad]


def exact_ggn(model: nn.Module, data, objective: Objective | None = None, chunk: int = 64,
              dtype=torch.float64) -> Tensor:
    """Exact generalised Gauss-Newton matrix of the mean loss over ``data``:
    G = mean_n J_n^T (diag p_n - p_n p_n^T) J_n with J_n = d logits_n / d theta (softmax
    cross-entropy; with a CausalLM objective every scored position is a term).  Dense P x P:
    small models only (Track A's 2,410-parameter MLP)."""
    from torch.func import functional_call, jacrev, vmap

    objective = as_objective(objective)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names = [n for n, _ in named]
    pvals = tuple(p.detach() for _, p in named)
    P = sum(p.numel() for p in pvals)
    buffers = dict(model.named_buffers())
    was_training = model.training
    model.eval()

    def logits_of(pv, xi):  # one example -> (positions, C)
        out = functional_call(model, {**buffers, **dict(zip(names, pv))}, (xi[None],))
        out = out.logits if hasattr(out, "logits") else out
        return out.reshape(-1, out.shape[-1])

    G = torch.zeros(P, P, dtype=dtype)
    count = 0
    ignore = getattr(objective, "ignore_index", None)
    for b in batches(data, chunk):
        x = b[0]
        B = x.shape[0]
        jac = vmap(lambda xi: jacrev(logits_of)(pvals, xi))(x)  # per param: (B, pos, C, *shape)
        J = torch.cat([j.reshape(j.shape[0], j.shape[1], j.shape[2], -1) for j in jac], dim=-1).to(dtype)
        with torch.no_grad():
            logits = torch.stack([logits_of(pvals, xi) for xi in x]).to(dtype)  # (B, pos, C)
        p = logits.softmax(-1)
        if ignore is not None:
            mask = (b[1] != ignore).reshape(B, -1)
        else:
            mask = torch.ones(B, p.shape[1], dtype=torch.bool)
        Jm, pm = J[mask], p[mask]  # (N, C, P), (N, C)
        sq = pm.sqrt()[:, :, None] * Jm
        flat = sq.reshape(-1, P)
        G += flat.T @ flat
        v = torch.einsum("nc,ncp->np", pm, Jm)
        G -= v.T @ v
        count += int(mask.sum())
    model.train(was_training)
    return G / max(count, 1)


def _flat_grad(model, data, objective, batch_size=None) -> Tensor:
    """Gradient of the mean loss over `data`, flattened, float64."""
    params = _flat_params(model)
    n = num_examples(data)
    grads = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    for b in batches(data, batch_size):
        loss = objective.mean_nll(model, b).sum() / n
        gs = torch.autograd.grad(loss, params, allow_unused=True)
        for acc, g in zip(grads, gs):
            if g is not None:
                acc += g.to(torch.float64)
    return torch.cat([g.reshape(-1) for g in grads])


@_method
def newton_step(model, forget, retain, objective, gen, *, eta: float | None = None, damping: float = 1e-3,
                weight_decay: float = 0.0, max_params: int = 20000, curvature_cache: dict | None = None):
    """One influence-calibrated Gauss-Newton step with the EXACT GGN of the retain loss:
    theta <- theta + eta (G_r + (weight_decay + damping) I)^-1 (grad L_f + weight_decay theta),
    eta = |forget| / |retain| by default — the first-order estimate of retraining without the
    forget set (Koh & Liang 2017; with weight_decay the L2 term of the training objective).
    The analytic reference for the K-FAC-based methods; dense GGN, so small models only
    (``max_params``).

    ``curvature_cache``: as kfade's — an optional dict the caller owns; the GGN (which depends on
    the model's state, the retain data and the objective, not on eta, damping or weight_decay)
    is stored in it and reused by a later call with the same key, which then returns exactly what
    it would have computed (the protocol shares one per original across the configurations)."""
    _check_cache("newton_step", curvature_cache)
    params = _flat_params(model)
    P = sum(p.numel() for p in params)
    if P > max_params:
        raise ValueError(f"newton_step builds the dense {P} x {P} GGN; the model has more than max_params="
                         f"{max_params} parameters (use a K-FAC method for large models)")
    n_f, n_r = num_examples(forget), num_examples(retain)
    eta = n_f / n_r if eta is None else eta
    model.eval()
    key = None if curvature_cache is None else _curvature_key(model, retain, objective, "exact_ggn")
    G = _cached(curvature_cache, key, lambda: exact_ggn(model, retain, objective))
    theta = torch.cat([p.detach().reshape(-1).to(torch.float64) for p in params])
    g = _flat_grad(model, forget, objective) + weight_decay * theta
    A = G + (weight_decay + damping) * torch.eye(P, dtype=torch.float64)
    L, info = torch.linalg.cholesky_ex(A)
    if int(info) != 0:
        raise RuntimeError(f"newton_step: GGN + damping is not positive definite (increase damping={damping})")
    step = torch.cholesky_solve(g[:, None], L)[:, 0] * eta
    with torch.no_grad():
        off = 0
        for p in params:
            k = p.numel()
            p.add_(step[off:off + k].reshape(p.shape).to(p.dtype))
            off += k
    return model


# ---------------------------------------------------------------------------------------------
# K-FADE: uphill Gauss-Newton steps on the forget loss under the retain set's K-FAC / EK-FAC
# ---------------------------------------------------------------------------------------------
def _kfac_output_fn(objective: Objective):
    """structops.kfac.KFAC output_fn from an objective: (log-probs (M, C), targets (M,), examples)."""

    def fn(model, batch):
        logp, targets, _ = objective.scored_logprobs(model, batch)
        return logp, targets, batch[0].shape[0]

    return fn


def _curvature_key(model, retain, objective, *settings) -> str | None:
    """The curvature-cache key of kfade and newton_step: a hash of everything the retain
    curvature depends on — the model's state, the retain tensors, the objective and the method's
    ``settings`` (reprs) — or None when the retain data are not a tuple of tensors (then nothing
    is cached)."""
    import hashlib

    from .data import _is_tensor_tuple

    if not _is_tensor_tuple(retain):
        return None
    h = hashlib.sha1()

    def put(t: Tensor):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())

    h.update(type(model).__qualname__.encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        put(t)
    for t in retain:
        h.update(str(tuple(t.shape)).encode())
        put(t)
    h.update(repr((type(objective).__qualname__, sorted(vars(objective).items()), *settings)).encode())
    return h.hexdigest()


def _check_cache(method: str, cache):
    if cache is not None and not isinstance(cache, dict):
        raise TypeError(f"{method}: curvature_cache must be a dict or None, got {type(cache).__name__}")


def _cached(cache, key, compute):
    """``cache[key]``, computed by ``compute()`` and stored on a miss; just ``compute()`` when
    ``key`` is None (no cache, or data that cannot be keyed)."""
    if key is None:
        return compute()
    if key not in cache:
        cache[key] = compute()
    return cache[key]


def _data_key(model, datasets: tuple, objective, what: str, batch_size, cache) -> str | None:
    """_curvature_key over several data sets (each a tuple of tensors; their tensors hashed in
    order, so (retain, forget) and (forget, retain) differ), or None without a cache or when a
    data set is not a tuple of tensors."""
    from .data import _is_tensor_tuple

    if cache is None or not all(_is_tensor_tuple(d) for d in datasets):
        return None
    return _curvature_key(model, tuple(t for d in datasets for t in d), objective, what, batch_size,
                          [len(d) for d in datasets])


def _retain_logprobs(model, data, objective, batch_size) -> list[Tensor]:
    with torch.no_grad():
        return [objective.scored_logprobs(model, b)[0] for b in batches(data, batch_size)]


def _retain_kl(model, data, objective, batch_size, ref_logp: list[Tensor]) -> float:
    """Mean over scored retain targets of KL(p_ref || p_model)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for b, lr in zip(batches(data, batch_size), ref_logp):
            lp = objective.scored_logprobs(model, b)[0]
            total += float((lr.exp() * (lr - lp)).sum())
            count += lr.shape[0]
    return total / max(count, 1)


def _subset(data, n: int, gen):
    data = materialize(data)
    N = data[0].shape[0]
    if N <= n:
        return data
    idx = torch.randperm(N, generator=gen)[:n].sort().values
    return tuple(t[idx] for t in data)


@_method
def kfade(model, forget, retain, objective, gen, *, curvature: str = "ekfac", steps: int = 3,
          kl_budget: float | None = 0.05, eta: float | None = None, damping: float | None = None,
          layers=None, fisher_type: str = "mc", mc_samples: int = 1, batch_size: int | None = 256,
          kl_examples: int = 1024, max_backtracks: int = 6, curvature_cache: dict | None = None):
    """K-FADE (K-FAC for Distribution Erasure; McKinney et al. 2026, reconstructed in
    ``../shared/reference/unlearning.md`` §1.2): ``steps`` uphill Gauss-Newton steps on the
    forget loss, preconditioned by the retain set's curvature,

        Δ_k = α_k (G_r + λ)⁻¹ ∇L_f(θ_k),   α_k = sqrt(2 ε / ∇L_fᵀ (G_r + λ)⁻¹ ∇L_f),

    G_r the K-FAC (``curvature="kfac"``) or EK-FAC (``"ekfac"``) Gauss-Newton matrix of the retain
    loss (Fisher ``fisher_type``, computed once at θ_0), ε = ``kl_budget`` per step (or a fixed
    α = ``eta``).  The gradient is re-linearised at every step, and each step backtracks (α/2, at
    most ``max_backtracks`` times) until the *measured* mean KL(p_θ0 ‖ p_θ) over (a
    ``kl_examples`` subset of) the retain set is at most k·ε — quadratic budgets alone diverge
    (§9.4).  A step that cannot meet the budget is not taken and the loop stops.

    ``damping``: λ per layer; None = 0.1 × the layer's mean curvature eigenvalue (Kronfluence's
    heuristic).  ``layers``: nn.Linear names (default: every trainable nn.Linear).  The model's
    other parameters are untouched.  The summed update is kept on the returned model as
    ``kfade_update`` ({parameter name: Δ}) so :func:`apply_update` can re-apply it to a
    further-trained model; ``kfade_log`` records each step's α, backtracks and measured KL.

    ``curvature_cache``: an optional dict the caller owns (e.g. one per original model while
    trying several configurations).  The retain curvature — factors, eigenbases, EK-FAC
    correction — is stored in it under a key of everything it depends on (the model's state,
    the retain batches' contents, layers, Fisher type, MC samples and seed, batch size,
    objective) and reused by a later call with the same key, which then returns exactly what it
    would have computed.  Only retain data given as a tuple of tensors is keyed; other data
    bypass the cache.
    """
    from ..kfac import KFAC

    if curvature not in ("kfac", "ekfac"):
        raise ValueError(f"kfade: curvature must be 'kfac' or 'ekfac', got {curvature!r}")
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"kfade: steps must be an int >= 1, got {steps!r}")
    if (kl_budget is None) == (eta is None):
        raise ValueError("kfade: give exactly one of kl_budget (a KL budget per step) or eta (a fixed step)")
    if kl_budget is not None and not kl_budget > 0:
        raise ValueError(f"kfade: kl_budget must be > 0, got {kl_budget}")
    if damping is not None and not damping > 0:
        raise ValueError(f"kfade: damping must be > 0 or None (heuristic), got {damping}")
    _check_cache("kfade", curvature_cache)
    model.eval()
    kfac_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    K = KFAC(model, nn.CrossEntropyLoss(), modules=layers, fisher_type=fisher_type, mc_samples=mc_samples,
             seed=kfac_seed, output_fn=_kfac_output_fn(objective))
    key = None
    if curvature_cache is not None:
        key = _curvature_key(model, retain, objective, list(K.modules), fisher_type, mc_samples, kfac_seed,
                             batch_size)
    hit = key is not None and key in curvature_cache
    if hit:
        K.load_state_dict(curvature_cache[key])
    else:
        K.accumulate(batches(retain, batch_size))
    eig = K.eigen()
    corrected = curvature == "ekfac" and not K.corrected_eigenvalues
    if corrected:
        K.ekfac_correction(batches(retain, batch_size))
    if key is not None and (not hit or corrected):  # store only what is new
        curvature_cache[key] = K.state_dict()
    lam = {}
    for n, (eA, _, eS, _) in eig.items():
        if damping is not None:
            lam[n] = float(damping)
        elif curvature == "ekfac":
            lam[n] = 0.1 * float(K.corrected_eigenvalues[n].mean())
        else:
            lam[n] = 0.1 * float(eS.mean() * eA.mean())
        lam[n] = max(lam[n], 1e-12)
    kl_data = _subset(retain, kl_examples, gen)
    ref_logp = _retain_logprobs(model, kl_data, objective, batch_size)
    mods = K.modules
    params = {n: [mods[n].weight] + ([mods[n].bias] if mods[n].bias is not None else []) for n in mods}
    start = {n: [p.detach().clone() for p in ps] for n, ps in params.items()}
    n_f = num_examples(forget)
    log = []
    for k in range(1, steps + 1):
        flat = [p for ps in params.values() for p in ps]
        grads = [torch.zeros_like(p) for p in flat]
        for b in batches(forget, batch_size):
            loss = objective.mean_nll(model, b).sum() / n_f
            for acc, g in zip(grads, torch.autograd.grad(loss, flat, allow_unused=True)):
                if g is not None:
                    acc += g
        it = iter(grads)
        G = {}
        for n in mods:
            gw = next(it)
            gb = next(it) if mods[n].bias is not None else None
            G[n] = K.gradient_matrix(n, gw, gb)
        D = K.precondition(G, damping=lam, curvature=curvature)
        quad = sum(float((G[n].double() * D[n].double()).sum()) for n in mods)
        if not quad > 0:
            log.append({"step": k, "stopped": "zero preconditioned gradient"})
            break
        alpha = eta if eta is not None else math.sqrt(2.0 * kl_budget / quad)
        before = {n: [p.detach().clone() for p in ps] for n, ps in params.items()}
        accepted, kl, tries = False, float("nan"), 0
        for tries in range(max_backtracks + 1):
            with torch.no_grad():
                for n, ps in params.items():
                    d = D[n]
                    ps[0].copy_(before[n][0] + alpha * d[:, :ps[0].shape[1]].to(ps[0].dtype))
                    if len(ps) > 1:
                        ps[1].copy_(before[n][1] + alpha * d[:, -1].to(ps[1].dtype))
            if kl_budget is None:
                accepted = True
                break
            kl = _retain_kl(model, kl_data, objective, batch_size, ref_logp)
            if kl <= k * kl_budget:
                accepted = True
                break
            alpha *= 0.5
        if not accepted:
            with torch.no_grad():
                for n, ps in params.items():
                    for p, b0 in zip(ps, before[n]):
                        p.copy_(b0)
            log.append({"step": k, "stopped": f"retain KL {kl:.4g} above {k * kl_budget:.4g} after "
                                              f"{max_backtracks} backtracks"})
            break
        log.append({"step": k, "alpha": alpha, "backtracks": tries, "retain_kl": kl, "quad": quad})
    pnames = {id(p): name for name, p in model.named_parameters()}
    model.kfade_update = {pnames[id(p)]: (p.detach() - s0).clone()
                          for n, ps in params.items() for p, s0 in zip(ps, start[n])}
    model.kfade_log = log
    return model


def apply_update(model: nn.Module, delta: dict, *, scale: float = 1.0, inplace: bool = False) -> nn.Module:
    """Add a stored unlearning update (e.g. ``kfade(...).kfade_update``: {parameter name: Δ}) to
    ``model`` — typically a further-trained copy of the original.  Returns a copy unless
    ``inplace``; every name and shape is checked before anything is written."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"apply_update: model must be an nn.Module, got {type(model).__name__}")
    named = dict(model.named_parameters())
    for k, v in delta.items():
        if k not in named:
            raise ValueError(f"apply_update: model has no parameter {k!r}")
        if tuple(v.shape) != tuple(named[k].shape):
            raise ValueError(f"apply_update: delta[{k!r}] has shape {tuple(v.shape)}, the parameter "
                             f"{tuple(named[k].shape)}")
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"apply_update: delta[{k!r}] is not finite")
    target = model if inplace else copy.deepcopy(model)
    tnamed = dict(target.named_parameters())
    with torch.no_grad():
        for k, v in delta.items():
            tnamed[k].add_(v.to(device=tnamed[k].device, dtype=tnamed[k].dtype), alpha=scale)
    return target


# ---------------------------------------------------------------------------------------------
# representation projection (MRP-style)
# ---------------------------------------------------------------------------------------------
def _mrp_hook(module, inputs, output):
    basis = module.mrp_basis  # (k, d) orthonormal rows
    h = output.logits if hasattr(output, "logits") else output
    return h - (h @ basis.T) @ basis


def _hidden_states(model, data, modules, batch_size=256) -> list[Tensor]:
    store = [[] for _ in modules]
    hooks = [m.register_forward_hook(lambda mod, inp, out, i=i: store[i].append(out.detach().reshape(-1, out.shape[-1])))
             for i, m in enumerate(modules)]
    try:
        with torch.no_grad():
            for b in batches(data, batch_size):
                model(b[0])
    finally:
        for h in hooks:
            h.remove()
    return [torch.cat(s) for s in store]


def _default_layers(model) -> list[str]:
    if hasattr(model, "unlearn_hidden_layers"):
        return list(model.unlearn_hidden_layers)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if len(linears) < 2:
        raise ValueError("representation_projection: pass layers=[module names]; the model has no hidden Linear layer")
    return linears[:-1]


def _mrp_init(f_states: Tensor, r_states: Tensor, dim: int, init: str, retain_var: float) -> Tensor:
    """Initial W (dim x d) of representation_projection.

    * ``"upstream"`` (MRP_code/train.py ``init_W``): remove the span of the forget states from the
      retain states (orthonormal basis by a reduced QR of the forget states), then the top ``dim``
      *uncentred* principal directions of that residual (eigenvectors of R^T R / (n - 1)).
    * ``"forget_pca"`` (structops' earlier variant): the top principal directions of the centred
      forget states outside the span of the retain states' top principal components
      (``retain_var`` of their variance)."""
    if init == "upstream":
        qf, _ = torch.linalg.qr(f_states.T, mode="reduced")  # (d, min(n_f, d))
        resid = r_states - (r_states @ qf) @ qf.T
        cov = resid.T @ resid / max(1, resid.shape[0] - 1)
        _, _, vh = torch.linalg.svd(cov)
        return vh[:dim].clone()
    if init == "forget_pca":
        _, S, Vh = torch.linalg.svd(r_states - r_states.mean(0), full_matrices=False)
        cum = (S ** 2).cumsum(0) / (S ** 2).sum().clamp_min(1e-30)
        k = int((cum < retain_var).sum()) + 1
        R = Vh[:k]
        fc = f_states - f_states.mean(0)
        fc = fc - (fc @ R.T) @ R
        _, _, Vf = torch.linalg.svd(fc, full_matrices=False)
        return Vf[:dim].clone()
    raise ValueError(f"representation_projection: init must be 'upstream' or 'forget_pca', got {init!r}")


@_method
def representation_projection(model, forget, retain, objective, gen, *, layers: list[str] | None = None, dim: int = 2,
                              lr: float = 2e-4, epochs: int = 2, batch_size: int | None = 32, retain_weight: float = 1.2,
                              retain_var: float = 0.9, init: str = "upstream", curvature_cache: dict | None = None):
    """MRP-style representation projection (ChengcanWu/MRP): on each chosen hidden state,
    h <- h - h Q^T Q with Q the orthonormal rows of [W_prev; W]; W (dim x d) starts as in MRP's
    code (``init="upstream"``: the top uncentred principal directions of the retain states with
    the forget-state span removed; ``"forget_pca"``: our earlier forget-state variant, see
    ``_mrp_init``) and is trained with the model frozen on
    -NLL(forget) + retain_weight * NLL(retain) (defaults: dim 2, lr 2e-4, 2 epochs, 1.2).
    Irreversible; sequential requests accumulate (W_prev = the rows already installed).  The
    projection lives in a buffer ``mrp_basis`` plus a forward hook on each module, so it
    survives deepcopy and state_dict round-trips.

    ``curvature_cache``: as kfade's — an optional dict the caller owns; the forget and retain
    hidden states (which depend on the model's state, both data sets and the layers, not on
    dim, lr or epochs) are stored in it and reused by a later call with the same key, which then
    returns exactly what it would have (the protocol shares one per original)."""
    _check_cache("representation_projection", curvature_cache)
    names = layers or _default_layers(model)
    mods = dict(model.named_modules())
    missing = [n for n in names if n not in mods]
    if missing:
        raise ValueError(f"representation_projection: unknown layers {missing}")
    modules = [mods[n] for n in names]
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    key = _data_key(model, (forget, retain), objective, "mrp-hidden-states", tuple(names), curvature_cache)
    hf, hr = _cached(curvature_cache, key, lambda: (_hidden_states(model, forget, modules),
                                                     _hidden_states(model, retain, modules)))
    Ws, prevs = [], []
    for m, f_states, r_states in zip(modules, hf, hr):
        d = f_states.shape[-1]
        prev = m.mrp_basis.detach() if hasattr(m, "mrp_basis") else torch.zeros(0, d, dtype=f_states.dtype)
        W = _mrp_init(f_states, r_states, dim, init, retain_var).requires_grad_(True)
        Ws.append(W)
        prevs.append(prev)
        if not hasattr(m, "mrp_basis"):
            m.register_buffer("mrp_basis", torch.zeros(0, d, dtype=f_states.dtype))
            m.register_forward_hook(_mrp_hook)

    def install():
        for m, W, prev in zip(modules, Ws, prevs):
            Q, _ = torch.linalg.qr(torch.cat([prev, W]).T)  # (d, k) orthonormal columns
            m.mrp_basis = Q.T

    opt = torch.optim.SGD(Ws, lr=lr)
    r_iter = _cycle(retain, batch_size, gen)
    for _ in range(epochs):
        for fb in batches(forget, batch_size, shuffle=True, generator=gen):
            install()
            loss = -_mean_loss(objective, model, fb) + retain_weight * _mean_loss(objective, model, next(r_iter))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        install()
        for m in modules:
            m.mrp_basis = m.mrp_basis.detach().clone()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


METHODS: dict[str, Callable] = {
    "finetune": finetune,
    "gradient_ascent": gradient_ascent,
    "grad_diff": grad_diff,
    "npo": npo,
    "simnpo": simnpo,
    "ssd": ssd,
    "l1_sparse": l1_sparse,
    "prune_then_unlearn": prune_then_unlearn,
    "iau": iau,
    "newton_step": newton_step,
    "kfade": kfade,
    "representation_projection": representation_projection,
}
