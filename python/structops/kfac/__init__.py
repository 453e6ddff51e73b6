"""K-FAC and EK-FAC curvature of a model's linear layers, on the batched structops K-FAC ops.

    from structops.kfac import KFAC
    K = KFAC(model, nn.CrossEntropyLoss(), fisher_type="mc")
    K.accumulate(loader)                  # iterable of (inputs, targets)
    A, S = K.factors["fc1"]               # A (in+1, in+1) bias folded in last, S (out, out)
    inv = K.inverse(damping=1e-3)         # {name: (A_inv, S_inv)}, one batched call per shape
    K.eigen(); K.ekfac_correction(loader) # eigenbases, then EK-FAC's corrected eigenvalues
    step = K.precondition(grads, damping=1e-3, curvature="ekfac")

Normalisation is curvlinops 3.0.1's ``KFACLinearOperator(..., separate_weight_and_bias=False)``
(``../shared/reference/unlearning.md`` §3.1, §3.7): ``S ⊗ A`` approximates the Gauss-Newton
matrix of the loss (mean or sum reduction, as ``loss_fn`` says) on row-major ``vec([W, b])``;
``A = Σ [a;1][a;1]ᵀ / (N_data · shared)`` (``kfac_approx="expand"``: tokens are extra samples;
``"reduce"``: inputs averaged and output gradients summed over the weight-sharing dims) and
``S = Σ g gᵀ · correction`` with ``g`` the output gradient of the batch loss and the correction
that turns it into per-term gradients (mean: ``M·B / (N_data · mc_samples)`` for a batch of B
examples and M loss terms; sum: ``1 / mc_samples``).  Fisher types: ``"type2"`` (exact: one
backward per class through the loss Hessian's square root; cost ∝ classes), ``"mc"`` (labels
sampled from the model, ``mc_samples`` per term, seeded), ``"empirical"`` (the data labels).

Outputs of more than 2 dims follow ``nn.CrossEntropyLoss``'s layout (N, C, d1, ...), as in
curvlinops; a causal LM's (B, T, V) logits need ``output_fn``.  Deliberate differences from
curvlinops: gradients are taken w.r.t. the layers' outputs (no weight
gradients are formed); targets equal to the loss's ``ignore_index`` are dropped (curvlinops has no
masking) and ``M`` counts the kept ones; ``output_fn(model, batch) -> (logits (M, C), targets
(M,), examples)`` replaces ``model(X)`` for models whose loss is not ``loss_fn(model(X), y)``
(e.g. a causal LM's shifted targets).  Loss: ``nn.CrossEntropyLoss`` (the softmax likelihood
behind every structops unlearning objective); other losses raise.

Layers: every ``nn.Linear`` whose weight requires grad (``modules=None``) or the named ones.
structops layers (Monarch, butterfly, random-basis, SLTrain) are not Kronecker-factored here:
their weights are not one dense matrix acting on the layer input, so a K-FAC block for them is
not the standard one; naming one raises.  Under ``torch.distributed`` the factor sums and counts
are all-reduced at the end of :meth:`accumulate` (every rank must call it).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Iterable

import torch
from torch import Tensor, nn

from ..ops.kfac import kfac_damped_inverse, kfac_eigh, kfac_factor_update, kfac_pi_damping, kfac_precondition

__all__ = ["KFAC", "FISHER_TYPES", "KFAC_APPROX"]

FISHER_TYPES = ("mc", "type2", "empirical")
KFAC_APPROX = ("expand", "reduce")


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # optional
        return iterable
    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True)


def _group_by_shape(names, shape_of):
    groups: dict[tuple, list[str]] = OrderedDict()
    for n in names:
        groups.setdefault(tuple(shape_of(n)), []).append(n)
    return groups


class KFAC:
    """Kronecker-factored curvature of ``model``'s linear layers (see the module docstring).

    Args:
        model: the network; only its ``nn.Linear`` layers are factored.
        loss_fn: ``nn.CrossEntropyLoss`` (reduction ``"mean"`` or ``"sum"``).
        modules: layer names (``model.named_modules()``), or None for every trainable nn.Linear.
        fisher_type: ``"mc"`` (default, as curvlinops), ``"type2"`` or ``"empirical"``.
        kfac_approx: ``"expand"`` (default) or ``"reduce"``.
        mc_samples: sampled labels per loss term (``"mc"``).
        seed: seed of the label sampler (curvlinops' default 2147483647).
        dtype: factor dtype (float32 default; float64 for reference checks).
        ema_decay: None (each :meth:`accumulate` replaces the factors) or ``β`` in [0, 1): the
            factors become ``β · old + (1 − β) · new`` (kfac-pytorch's ``factor_decay``).
        output_fn: optional ``(model, batch) -> (logits (M, C), targets (M,), examples)``.
        progress: tqdm bars over the batches of the factor and correction passes.
    """

    def __init__(self, model: nn.Module, loss_fn: nn.Module, modules: Iterable[str] | None = None,
                 fisher_type: str = "mc", kfac_approx: str = "expand", *, mc_samples: int = 1,
                 seed: int = 2147483647, dtype: torch.dtype = torch.float32, ema_decay: float | None = None,
                 output_fn: Callable | None = None, progress: bool = False):
        if not isinstance(model, nn.Module):
            raise TypeError(f"KFAC: model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(loss_fn, nn.CrossEntropyLoss):
            raise ValueError(f"KFAC: loss_fn must be nn.CrossEntropyLoss (the softmax likelihood), got "
                             f"{type(loss_fn).__name__}")
        if loss_fn.reduction not in ("mean", "sum"):
            raise ValueError(f"KFAC: loss_fn.reduction must be 'mean' or 'sum', got {loss_fn.reduction!r}")
        if loss_fn.weight is not None or loss_fn.label_smoothing != 0.0:
            raise ValueError("KFAC: loss_fn with class weights or label smoothing is not a plain softmax likelihood")
        if fisher_type not in FISHER_TYPES:
            raise ValueError(f"KFAC: fisher_type must be one of {FISHER_TYPES}, got {fisher_type!r}")
        if kfac_approx not in KFAC_APPROX:
            raise ValueError(f"KFAC: kfac_approx must be one of {KFAC_APPROX}, got {kfac_approx!r}")
        if not (isinstance(mc_samples, int) and mc_samples >= 1):
            raise ValueError(f"KFAC: mc_samples must be an int >= 1, got {mc_samples!r}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"KFAC: dtype must be torch.float32 or torch.float64, got {dtype}")
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"KFAC: ema_decay must be None or in [0, 1), got {ema_decay}")
        self.model, self.loss_fn = model, loss_fn
        self.fisher_type, self.kfac_approx, self.mc_samples = fisher_type, kfac_approx, mc_samples
        self.seed, self.dtype, self.ema_decay = seed, dtype, ema_decay
        self.output_fn, self.progress = output_fn, progress
        named = dict(model.named_modules())
        if modules is None:
            names = [n for n, m in named.items() if type(m) is nn.Linear and m.weight.requires_grad]
        else:
            names = list(modules)
            for n in names:
                if n not in named:
                    raise ValueError(f"KFAC: model has no module named {n!r}")
                if not isinstance(named[n], nn.Linear):
                    raise ValueError(f"KFAC: module {n!r} is a {type(named[n]).__name__}; only nn.Linear layers are "
                                     "Kronecker-factored (structops' structured layers have no standard K-FAC block)")
        if not names:
            raise ValueError("KFAC: no nn.Linear layers to factor (pass modules=[...])")
        self.modules: "OrderedDict[str, nn.Linear]" = OrderedDict((n, named[n]) for n in names)
        self.factors: "OrderedDict[str, tuple[Tensor, Tensor]]" = OrderedDict()
        self.num_data = 0
        self._eigen: dict | None = None
        self.corrected_eigenvalues: "OrderedDict[str, Tensor]" = OrderedDict()

    # ---- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The computed curvature — factors, example count, eigendecompositions, EK-FAC
        corrected eigenvalues — as plain tensors, without the model: load it into a KFAC over
        another instance of the same architecture with :meth:`load_state_dict`."""
        return {"modules": list(self.modules), "factors": OrderedDict(self.factors), "num_data": self.num_data,
                "eigen": None if self._eigen is None else OrderedDict(self._eigen),
                "eigen_fell_back": list(getattr(self, "eigen_fell_back", [])),
                "corrected_eigenvalues": OrderedDict(self.corrected_eigenvalues)}

    def load_state_dict(self, state: dict) -> "KFAC":
        """Adopts a :meth:`state_dict` (the tensors are shared, not copied).  The layer names
        and factor shapes must match this KFAC's layers."""
        if list(state.get("modules", [])) != list(self.modules):
            raise ValueError(f"KFAC.load_state_dict: state is for layers {state.get('modules')}, this KFAC has "
                             f"{list(self.modules)}")
        for n, (A, S) in state["factors"].items():
            m = self.modules[n]
            want = (m.in_features + int(self._has_bias(n)), m.out_features)
            if (A.shape[-1], S.shape[-1]) != want:
                raise ValueError(f"KFAC.load_state_dict: factors of {n!r} are {tuple(A.shape)}, {tuple(S.shape)}; "
                                 f"the layer needs ({want[0]}, {want[0]}), ({want[1]}, {want[1]})")
        self.factors = OrderedDict(state["factors"])
        self.num_data = int(state["num_data"])
        self._eigen = None if state["eigen"] is None else OrderedDict(state["eigen"])
        self.eigen_fell_back = list(state.get("eigen_fell_back", []))
        self.corrected_eigenvalues = OrderedDict(state["corrected_eigenvalues"])
        return self

    # ---- the factor pass ------------------------------------------------------------------
    def _default_output(self, model, batch):
        X, y = batch[0], batch[1]
        out = model(X)
        out = out.logits if hasattr(out, "logits") else out
        if out.dim() > 2:  # nn.CrossEntropyLoss's (N, C, d1, ...) layout: classes to the last dim
            out = out.movedim(1, -1)
        logits = out.reshape(-1, out.shape[-1])
        targets = y.reshape(-1)
        if logits.shape[0] != targets.shape[0]:
            raise ValueError(f"KFAC: model output {tuple(out.shape)} and targets {tuple(y.shape)} do not pair up")
        keep = targets != self.loss_fn.ignore_index
        if not bool(keep.all()):
            logits, targets = logits[keep], targets[keep]
        return logits, targets, X.shape[0]

    def _has_bias(self, name: str) -> bool:
        return self.modules[name].bias is not None

    def _inputs_for_factor(self, a: Tensor) -> tuple[Tensor, float]:
        """(rows, 1 / shared) for the A update: expand flattens the sharing dims, reduce averages them."""
        if a.dim() <= 2:
            return a.reshape(-1, a.shape[-1]), 1.0
        if self.kfac_approx == "expand":
            shared = a[0].numel() // a.shape[-1]
            return a.reshape(-1, a.shape[-1]), 1.0 / shared
        return a.mean(dim=tuple(range(1, a.dim() - 1))), 1.0

    def _grads_for_factor(self, g: Tensor) -> Tensor:
        if g.dim() <= 2 or self.kfac_approx == "expand":
            return g.reshape(-1, g.shape[-1])
        return g.sum(dim=tuple(range(1, g.dim() - 1)))

    def _run_passes(self, batches, on_input, on_output_grad, desc: str) -> int:
        """Forward each batch with hooks; backpropagate the Fisher type's loss(es) to the layers'
        outputs.  on_input(name, a) per layer call; on_output_grad(name, call, g, weight) per
        backward pass with the per-term correction weight.  Returns the number of examples."""
        outputs: dict[str, list[Tensor]] = {n: [] for n in self.modules}

        def pre_hook(name):
            def hook(mod, args):
                if len(args) != 1:
                    raise ValueError(f"KFAC: layer {name!r} was called with {len(args)} inputs; expected 1")
                on_input(name, args[0].detach())
            return hook

        def fwd_hook(name):
            def hook(mod, args, out):
                outputs[name].append(out)
                return out.clone()  # later in-place ops act on the clone, not on the tensor we differentiate
            return hook

        handles = []
        for n, m in self.modules.items():
            handles.append(m.register_forward_pre_hook(pre_hook(n)))
            handles.append(m.register_forward_hook(fwd_hook(n)))
        gen = None
        if self.fisher_type == "mc":
            gen = torch.Generator(device=next(self.model.parameters()).device).manual_seed(self.seed)
        n_examples = 0
        restore = [(m.weight, m.weight.requires_grad) for m in self.modules.values()]
        try:
            for m in self.modules.values():
                m.weight.requires_grad_(True)  # outputs must be part of the graph
            for batch in _progress(batches, self.progress, desc):
                for v in outputs.values():
                    v.clear()
                with torch.enable_grad():
                    fn = self.output_fn or self._default_output
                    logits, targets, B = fn(self.model, batch)
                    M = logits.shape[0]
                    n_examples += int(B)
                    if M == 0:
                        continue
                    outs = [(n, k, t) for n, ts in outputs.items() for k, t in enumerate(ts)]
                    mean = self.loss_fn.reduction == "mean"
                    # per-term correction (without the final 1/N_data): see the module docstring
                    weight = (M * B if mean else 1.0) / (self.mc_samples if self.fisher_type == "mc" else 1)
                    losses = self._fisher_losses(logits.float() if logits.dtype != torch.float64 else logits,
                                                 targets, gen, mean, M)
                    for li, loss in enumerate(losses):
                        grads = torch.autograd.grad(loss, [t for _, _, t in outs], retain_graph=li < len(losses) - 1,
                                                    allow_unused=True)
                        for (n, k, _), g in zip(outs, grads):
                            if g is not None:
                                on_output_grad(n, k, g.detach(), weight)
        finally:
            for h in handles:
                h.remove()
            for w, flag in restore:
                w.requires_grad_(flag)
        return n_examples

    def _fisher_losses(self, logits: Tensor, targets: Tensor, gen, mean: bool, M: int) -> list[Tensor]:
        red = "mean" if mean else "sum"
        if self.fisher_type == "empirical":
            return [nn.functional.cross_entropy(logits, targets, reduction=red)]
        if self.fisher_type == "mc":
            probs = logits.detach().softmax(-1)
            return [nn.functional.cross_entropy(logits, probs.multinomial(1, generator=gen).squeeze(1), reduction=red)
                    for _ in range(self.mc_samples)]
        # type-2: columns of sqrt(diag p - p p^T) = diag(sqrt p) - p sqrt(p)^T, one backward each
        p = logits.detach().softmax(-1)
        sp = p.sqrt()
        scale = 1.0 / M if mean else 1.0
        losses = []
        for c in range(logits.shape[1]):
            col = -p * sp[:, c:c + 1]
            col[:, c] += sp[:, c]
            losses.append((logits * col).sum() * scale)
        return losses

    def accumulate(self, batches: Iterable) -> "KFAC":
        """One factor pass over ``batches`` (an iterable of ``(inputs, targets)`` or whatever
        ``output_fn`` takes).  Replaces the factors (or blends them in with ``ema_decay``)."""
        sums_A = {n: None for n in self.modules}
        sums_S = {n: None for n in self.modules}
        dev = next(self.model.parameters()).device

        def on_input(name, a):
            rows, scale = self._inputs_for_factor(a)
            if sums_A[name] is None:
                D = rows.shape[-1] + int(self._has_bias(name))
                sums_A[name] = torch.zeros(D, D, dtype=self.dtype, device=rows.device)
            kfac_factor_update(sums_A[name], rows, scale, bias=self._has_bias(name))

        def on_grad(name, call, g, weight):
            rows = self._grads_for_factor(g)
            if sums_S[name] is None:
                sums_S[name] = torch.zeros(rows.shape[-1], rows.shape[-1], dtype=self.dtype, device=rows.device)
            kfac_factor_update(sums_S[name], rows, weight)

        n = self._run_passes(batches, on_input, on_grad, "K-FAC factors")
        for name, m in self.modules.items():
            if sums_A[name] is None:
                raise ValueError(f"KFAC: layer {name!r} was never called on these batches")
            if sums_S[name] is None:  # reached by no loss (e.g. after the scored positions)
                sums_S[name] = torch.zeros(m.out_features, m.out_features, dtype=self.dtype, device=dev)
        n = self._all_reduce([sums_A, sums_S], n)
        if n == 0:
            raise ValueError("KFAC: accumulate got no examples")
        mean = self.loss_fn.reduction == "mean"
        new = OrderedDict()
        for name in self.modules:
            A = sums_A[name] / n
            S = sums_S[name] / n if mean else sums_S[name]
            new[name] = (A, S)
        if self.ema_decay is not None and self.factors:
            b = self.ema_decay
            new = OrderedDict((k, (b * self.factors[k][0] + (1 - b) * A, b * self.factors[k][1] + (1 - b) * S))
                              for k, (A, S) in new.items())
        self.factors, self.num_data = new, n
        self._eigen = None
        self.corrected_eigenvalues = OrderedDict()
        return self

    @staticmethod
    def _all_reduce(sums: list[dict], n: int) -> int:
        """Under torch.distributed: every tensor of the dicts summed over ranks (in place) and the
        example count n; returns the global n.  Without a process group: n."""
        import torch.distributed as dist
        if not (dist.is_available() and dist.is_initialized()):
            return n
        device = None
        for d in sums:
            for k in d:
                dist.all_reduce(d[k])
                device = d[k].device
        t = torch.tensor([float(n)], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return int(t.item())

    def _require_factors(self, what: str):
        if not self.factors:
            raise RuntimeError(f"KFAC.{what}: no factors yet; call accumulate(batches) first")

    # ---- inverses and eigenbases -----------------------------------------------------------
    def inverse(self, damping: float, *, pi_damping: bool = False, min_damping: float = 1e-8,
                method: str = "auto") -> "OrderedDict[str, tuple[Tensor, Tensor]]":
        """``{name: ((A + λ_A I)⁻¹, (S + λ_S I)⁻¹)}``: λ_A = λ_S = ``damping``, or the π split
        (``pi_damping``, curvlinops' ``use_heuristic_damping``).  One batched
        :func:`~structops.kfac_damped_inverse` call per factor shape."""
        self._require_factors("inverse")
        names = list(self.factors)
        damp = {}
        if pi_damping:
            for shapes, group in _group_by_shape(names, lambda n: (self.factors[n][0].shape, self.factors[n][1].shape)).items():
                dA, dS = kfac_pi_damping(torch.stack([self.factors[n][0] for n in group]),
                                         torch.stack([self.factors[n][1] for n in group]), damping,
                                         min_damping=min_damping)
                for i, n in enumerate(group):
                    damp[(n, 0)], damp[(n, 1)] = dA[i], dS[i]
        out: dict = {}
        for which in (0, 1):
            for shape, group in _group_by_shape(names, lambda n: self.factors[n][which].shape).items():
                F = torch.stack([self.factors[n][which] for n in group])
                d = torch.stack([damp[(n, which)].to(F.device) for n in group]) if pi_damping else float(damping)
                inv = kfac_damped_inverse(F, d, method=method,
                                          names=[f"{n} ({'A' if which == 0 else 'S'})" for n in group])
                for i, n in enumerate(group):
                    out[(n, which)] = inv[i]
        return OrderedDict((n, (out[(n, 0)], out[(n, 1)])) for n in names)

    def eigen(self) -> "OrderedDict[str, tuple[Tensor, Tensor, Tensor, Tensor]]":
        """``{name: (eigenvalues_A, Q_A, eigenvalues_S, Q_S)}`` (cached), one batched
        :func:`~structops.kfac_eigh` per factor shape; eigenvalues clamped at 0 (a PSD factor's
        rounding makes tiny negative ones).  ``self.eigen_fell_back`` lists the factors redone
        in float64."""
        self._require_factors("eigen")
        if self._eigen is not None:
            return self._eigen
        names = list(self.factors)
        res: dict = {}
        fell: list[str] = []
        for which in (0, 1):
            for shape, group in _group_by_shape(names, lambda n: self.factors[n][which].shape).items():
                labels = [f"{n} ({'A' if which == 0 else 'S'})" for n in group]
                w, v, fb = kfac_eigh(torch.stack([self.factors[n][which] for n in group]), names=labels)
                for i, n in enumerate(group):
                    res[(n, which)] = (w[i].clamp_min(0), v[i])
                    if bool(fb[i]):
                        fell.append(labels[i])
        self.eigen_fell_back = fell
        self._eigen = OrderedDict((n, (*res[(n, 0)], *res[(n, 1)])) for n in names)
        return self._eigen

    def ekfac_correction(self, batches: Iterable) -> "OrderedDict[str, Tensor]":
        """EK-FAC's corrected eigenvalues (George et al. 2018): ``Λ = Σ_n (Q_Sᵀ ∇_W ℓ_n Q_A)²``
        over per-example gradients (one example = one batch entry; its weight-sharing positions
        summed), normalised like the factors; ``{name: Λ (out, in [+1])}``."""
        eig = self.eigen()
        lam = {n: None for n in self.modules}
        cache: dict[str, list[Tensor]] = {n: [] for n in self.modules}

        def on_input(name, a):
            cache[name].append(a)

        def on_grad(name, call, g, weight):
            a = cache[name][call]
            _, QA, _, QS = eig[name]
            dt = QA.dtype
            B = a.shape[0]
            a3 = a.reshape(B, -1, a.shape[-1]).to(dt)
            g3 = g.reshape(B, -1, g.shape[-1]).to(dt)
            if self._has_bias(name):
                a3 = torch.cat([a3, a3.new_ones(*a3.shape[:-1], 1)], dim=-1)
            a_rot = a3 @ QA  # (B, s, in')
            g_rot = g3 @ QS  # (B, s, out)
            if a_rot.shape[1] == 1:
                contrib = g_rot[:, 0].square().T @ a_rot[:, 0].square()
            else:
                contrib = torch.zeros(g_rot.shape[-1], a_rot.shape[-1], dtype=dt, device=a.device)
                chunk = max(1, (64 << 20) // max(1, 8 * g_rot.shape[-1] * a_rot.shape[-1]))
                for b0 in range(0, B, chunk):
                    pe = g_rot[b0:b0 + chunk].transpose(1, 2) @ a_rot[b0:b0 + chunk]  # per-example (b, out, in')
                    contrib += pe.square_().sum(0)
            contrib.mul_(weight)
            lam[name] = contrib if lam[name] is None else lam[name].add_(contrib)

        def clear_cache_then(fn):
            def run(batch_iter):
                for batch in batch_iter:
                    for v in cache.values():
                        v.clear()
                    yield batch
            return run(fn)

        n = self._run_passes(clear_cache_then(batches), on_input, on_grad, "EK-FAC correction")
        n = self._all_reduce([lam], n)
        mean = self.loss_fn.reduction == "mean"
        self.corrected_eigenvalues = OrderedDict((k, v / n if mean else v) for k, v in lam.items())
        return self.corrected_eigenvalues

    # ---- preconditioning -------------------------------------------------------------------
    def gradient_matrix(self, name: str, weight_grad: Tensor | None = None, bias_grad: Tensor | None = None) -> Tensor:
        """A layer's gradient as the (out, in [+1]) matrix K-FAC acts on (bias as the last column);
        from the given tensors or from the parameters' ``.grad``."""
        m = self.modules[name]
        gw = m.weight.grad if weight_grad is None else weight_grad
        if gw is None:
            raise ValueError(f"KFAC: layer {name!r} has no weight gradient")
        if m.bias is None:
            return gw
        gb = m.bias.grad if bias_grad is None else bias_grad
        if gb is None:
            gb = torch.zeros(m.out_features, dtype=gw.dtype, device=gw.device)
        return torch.cat([gw, gb[:, None]], dim=1)

    def precondition(self, grads: dict[str, Tensor], damping, *, curvature: str = "kfac") -> "OrderedDict[str, Tensor]":
        """``(S ⊗ A + λ I)⁻¹ vec(G)`` per layer (``curvature="kfac"``, eigenbasis form, exact
        damping) or its EK-FAC analogue with the corrected eigenvalues (``"ekfac"``, after
        :meth:`ekfac_correction`).  grads: ``{name: (out, in [+1])}`` (see
        :meth:`gradient_matrix`); damping: a float, or ``{name: float}`` per layer.  One batched
        :func:`~structops.kfac_precondition` per shape."""
        if curvature not in ("kfac", "ekfac"):
            raise ValueError(f"KFAC.precondition: curvature must be 'kfac' or 'ekfac', got {curvature!r}")
        eig = self.eigen()
        if curvature == "ekfac" and not self.corrected_eigenvalues:
            raise RuntimeError("KFAC.precondition: curvature='ekfac' needs ekfac_correction(batches) first")
        for n, g in grads.items():
            if n not in eig:
                raise ValueError(f"KFAC.precondition: {n!r} is not a factored layer (have {list(eig)})")
            want = (eig[n][3].shape[0], eig[n][1].shape[0])
            if tuple(g.shape) != want:
                raise ValueError(f"KFAC.precondition: grads[{n!r}] must be {want} (out, in [+1]), got {tuple(g.shape)}")
        per_layer = isinstance(damping, dict)
        if per_layer:
            missing = [n for n in grads if n not in damping]
            if missing:
                raise ValueError(f"KFAC.precondition: damping has no entry for {missing}")
            if any(not float(damping[n]) >= 0 for n in grads):
                raise ValueError("KFAC.precondition: every damping must be >= 0")
        elif not float(damping) >= 0:
            raise ValueError(f"KFAC.precondition: damping must be >= 0, got {damping}")
        out: dict = {}
        for shape, group in _group_by_shape(list(grads), lambda n: grads[n].shape).items():
            dt = eig[group[0]][1].dtype
            G = torch.stack([grads[n].to(dt) for n in group])
            QS = torch.stack([eig[n][3] for n in group])
            QA = torch.stack([eig[n][1] for n in group])
            if per_layer:  # a damping per layer: fold it into explicit eigenvalues (L, out, in)
                lam = torch.stack([(self.corrected_eigenvalues[n].to(dt) if curvature == "ekfac"
                                    else torch.outer(eig[n][2], eig[n][0])) + float(damping[n]) for n in group])
                P = kfac_precondition(G, QS, QA, eigenvalues=lam, damping=0.0)
            elif curvature == "ekfac":
                P = kfac_precondition(G, QS, QA, eigenvalues=torch.stack([self.corrected_eigenvalues[n].to(dt)
                                                                          for n in group]), damping=float(damping))
            else:
                P = kfac_precondition(G, QS, QA, eigenvalues_S=torch.stack([eig[n][2] for n in group]),
                                      eigenvalues_A=torch.stack([eig[n][0] for n in group]), damping=float(damping))
            for i, n in enumerate(group):
                out[n] = P[i].to(grads[n].dtype)
        return OrderedDict((n, out[n]) for n in grads)
