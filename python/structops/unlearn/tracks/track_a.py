"""Track A: an MLP classifier on scikit-learn's bundled handwritten digits (offline).

* Data: ``sklearn.datasets.load_digits`` (1,797 x 64, pixel values / 16), stratified 67/33
  train/test split (seed 0): 1,203 train, 594 test.
* Model: MLP 64-32-10 with tanh (2,410 parameters), trained full-batch with L-BFGS (strong
  Wolfe line search) on mean cross-entropy + 1e-4/2 ||theta||^2 to convergence; deterministic
  given the seed.
* Scenarios (split_seed 0 is the tuning forget set, 1, 2, ... fresh ones):
  - ``random``: a random 10% of the training set;
  - ``class``: every training example of one digit (3 for tuning, then 8, 5, 1, ...);
  - ``mislabel``: 60 training examples whose labels are corrupted to another class; the
    original memorises them, a model retrained without them predicts the true class — the most
    discriminative scenario (forget accuracy is measured against the corrupted labels).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .. import metrics
from ..objectives import Classification
from ..probes import quantize_bnb_fp4, quantize_llm_int8, quantize_rtn, relearn
from .base import Setup, Track

__all__ = ["DigitsMLP", "TrackA", "load_digits_split"]

L2 = 1e-4
CLASS_ORDER = (3, 8, 5, 1, 7, 2, 9, 4, 6, 0)


class DigitsMLP(nn.Module):
    """64-32-10 tanh MLP; ``act`` is the hidden representation (representation_projection)."""

    unlearn_hidden_layers = ("act",)

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.act = nn.Tanh()
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def load_digits_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    X = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.long)
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=0.33, stratify=d.target, random_state=0)
    return (X[tr], y[tr]), (X[te], y[te])


GR_BATCH = 128


def restriction_batches(n: int) -> list:
    """The fixed mini-batches of IAU's gradient restriction: a seed-0 permutation of the n
    training rows cut into ``GR_BATCH``-row pieces (the last one shorter)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    return [order[i:i + GR_BATCH] for i in range(0, n, GR_BATCH)]


def gradient_restriction_autograd(model: nn.Module, params: list, x, y, batches: list):
    """mean_b Σ_params ||∇θ CE(model(x_b), y_b)||₂ by double backprop — any model; the
    reference :func:`gradient_restriction_mlp` is tested against."""
    gr = 0.0
    for b in batches:
        grads = torch.autograd.grad(nn.functional.cross_entropy(model(x[b]), y[b]), params, create_graph=True)
        gr = gr + sum(g.norm() for g in grads)
    return gr / len(batches)


def stack_restriction_batches(x, y, batches: list, n_classes: int = 10) -> tuple:
    """The restriction batches stacked for :func:`gradient_restriction_mlp`: inputs
    (n_batches, GR_BATCH, 64), one-hot targets (n_batches, GR_BATCH, n_classes) and per-row
    weights 1/n_b (n_batches, GR_BATCH, 1), the short last batch padded with zero-weight rows."""
    nb = len(batches)
    idx = torch.zeros(nb, GR_BATCH, dtype=torch.long)
    weight = torch.zeros(nb, GR_BATCH, 1, dtype=x.dtype)
    for i, b in enumerate(batches):
        idx[i, :len(b)] = b
        weight[i, :len(b)] = 1.0 / len(b)
    return x[idx], nn.functional.one_hot(y[idx], n_classes).to(x.dtype), weight


def gradient_restriction_mlp(model: "DigitsMLP", stacked: tuple):
    """The same quantity as :func:`gradient_restriction_autograd` for an unpruned
    :class:`DigitsMLP`, all batches at once (``stacked``: :func:`stack_restriction_batches`):
    each batch's gradient in closed form (δ2 = (softmax(z) − onehot(y)) / n_b, ∇W2 = δ2ᵀh,
    ∇b2 = Σδ2, δ1 = δ2·W2 ⊙ (1 − h²), ∇W1 = δ1ᵀx, ∇b1 = Σδ1).  Autograd differentiates this
    small graph instead of ten double-backward graphs: the same objective (equal to float64
    rounding, tested), about 3x faster to train, different float32 rounding."""
    xb, onehot, weight = stacked
    W1, b1, W2, b2 = model.fc1.weight, model.fc1.bias, model.fc2.weight, model.fc2.bias
    h = torch.tanh(xb @ W1.T + b1)                                   # (nb, G, 32)
    d2 = (torch.softmax(h @ W2.T + b2, -1) - onehot) * weight        # (nb, G, 10)
    d1 = (d2 @ W2) * (1 - h * h)                                     # (nb, G, 32)
    norms = (torch.linalg.vector_norm(d1.transpose(1, 2) @ xb, dim=(1, 2)) + torch.linalg.vector_norm(d1.sum(1), dim=1)
             + torch.linalg.vector_norm(d2.transpose(1, 2) @ h, dim=(1, 2)) + torch.linalg.vector_norm(d2.sum(1), dim=1))
    return norms.mean()


def train_lbfgs(model: nn.Module, data: tuple, l2: float = L2, max_iter: int = 1500,
                gradient_restriction: float = 0.0) -> nn.Module:
    """Full-batch L-BFGS on mean CE + l2/2·||θ||².  ``gradient_restriction`` = α adds IAU's
    gradient restriction α·Σ_params ||∇θ CE_b||₂, averaged over fixed mini-batches b of
    ``GR_BATCH`` points (IAU computes it per SGD mini-batch; on the full batch it would vanish at
    the optimum, where ∇CE = -l2·θ ≈ 0) — double backprop (closed-form batch gradients for an
    unpruned DigitsMLP, :func:`gradient_restriction_mlp`).  Parameters reparametrised by
    torch.nn.utils.prune (weight_orig · mask) train only their unmasked entries."""
    x, y = data
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.LBFGS(params, lr=1, max_iter=max_iter, history_size=50,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-12)
    gr_batches = restriction_batches(len(y))
    closed_form = type(model) is DigitsMLP and len(params) == 4 and not hasattr(model.fc1, "weight_orig")
    stacked = stack_restriction_batches(x, y, gr_batches, model.fc2.out_features) if closed_form else None

    def closure():
        opt.zero_grad()
        out = model(x)
        loss = nn.functional.cross_entropy(out, y) + 0.5 * l2 * sum((p ** 2).sum() for p in params)
        if gradient_restriction:
            gr = (gradient_restriction_mlp(model, stacked) if closed_form
                  else gradient_restriction_autograd(model, params, x, y, gr_batches))
            loss = loss + gradient_restriction * gr
        loss.backward()
        return loss

    model.train()
    opt.step(closure)
    model.eval()
    return model


class TrackA(Track):
    name = "A"
    scenarios = ("random", "class", "mislabel")
    objective = Classification()
    transient_attrs = ("_data",)  # rebuilt on first use, not pickled (Track.transient_attrs)

    def __init__(self, n_mislabel: int = 60, random_fraction: float = 0.1, max_iter: int = 1500):
        self.n_mislabel = n_mislabel
        self.random_fraction = random_fraction
        self.max_iter = max_iter  # L-BFGS iterations (fewer only in quick tests)
        self._data = None

    def _base(self):
        if self._data is None:
            self._data = load_digits_split()
        return self._data

    def _chunk(self, n: int, k: int, split_seed: int) -> np.ndarray:
        """Split ``split_seed``'s forget set: chunk number split_seed (of size k) of one fixed
        permutation of the n training points — disjoint across splits by construction."""
        if (split_seed + 1) * k > n:
            raise ValueError(f"Track A: only {n // k} disjoint forget sets of {k} points exist; split {split_seed} "
                             "was asked for")
        perm = np.random.default_rng(1000).permutation(n)
        return np.sort(perm[split_seed * k:(split_seed + 1) * k])

    def _val_test(self, test: tuple) -> tuple:
        """The held-out digits halved by a fixed permutation: validation (tuning) and test (reported)."""
        xt, yt = test
        perm = torch.from_numpy(np.random.default_rng(7).permutation(len(yt)))
        h = len(yt) // 2
        return (xt[perm[:h]], yt[perm[:h]]), (xt[perm[h:]], yt[perm[h:]])

    def setup(self, scenario: str, split_seed: int) -> Setup:
        (x, y), held_out = self._base()
        val, test = self._val_test(held_out)
        n = len(y)
        rng = np.random.default_rng(1000 + split_seed)
        y_train = y.clone()
        if scenario == "random":
            forget_idx = self._chunk(n, int(round(self.random_fraction * n)), split_seed)
        elif scenario == "class":
            if split_seed >= len(CLASS_ORDER):
                raise ValueError(f"Track A class: only {len(CLASS_ORDER)} classes (splits), got split {split_seed}")
            c = CLASS_ORDER[split_seed]
            forget_idx = np.nonzero(y.numpy() == c)[0]
        elif scenario == "mislabel":
            forget_idx = self._chunk(n, self.n_mislabel, split_seed)
            shift = torch.tensor(rng.integers(1, 10, size=len(forget_idx)))
            y_train[forget_idx] = (y[forget_idx] + shift) % 10  # a different class
        else:
            raise ValueError(f"Track A scenario must be one of {self.scenarios}, got {scenario!r}")
        mask = np.ones(n, dtype=bool)
        mask[forget_idx] = False
        fi, ri = torch.tensor(forget_idx), torch.tensor(np.nonzero(mask)[0])
        train = (x, y_train)
        extra = {"forget_true_labels": (x[fi], y[fi])}
        return Setup(scenario, split_seed, train, (x[fi], y_train[fi]), (x[ri], y_train[ri]), test, extra,
                     key=f"A-{scenario}-{split_seed}", val=val, forget_ids=[int(i) for i in forget_idx])

    def new_model(self):
        return DigitsMLP()

    def train(self, data: tuple, seed: int):
        torch.manual_seed(seed)
        return train_lbfgs(DigitsMLP(), data, max_iter=self.max_iter)

    variants = ("sparse", "gr")

    def train_variant(self, data: tuple, seed: int, variant: str, dense=None):
        """``sparse-<rate>``: Unlearn-Sparse's OMP with rewind — the dense model of ``seed``, its
        hidden layer (fc1; the head is not pruned, as upstream leaves a ResNet's classifier)
        magnitude-pruned to ``rate``, the survivors rewound to the same seed's initialisation
        (L-BFGS has no epochs: upstream's rewind_epoch 8 becomes rewind-to-init, the lottery-
        ticket form) and retrained with the mask fixed; zeros stored.  ``gr-<alpha>``: IAU's
        gradient-restriction training, α·Σ‖∇θ CE‖₂ added to the ordinary objective."""
        if variant == "dense":
            return self.train(data, seed)
        kind, value = self.parse_variant(variant)
        if kind == "gr":
            torch.manual_seed(seed)
            return train_lbfgs(DigitsMLP(), data, max_iter=self.max_iter, gradient_restriction=value)
        import torch.nn.utils.prune as prune

        from ..methods import magnitude_masks

        if not 0.0 <= value < 1.0:
            raise ValueError(f"sparse rate must be in [0, 1), got {value}")
        dense = dense if dense is not None else self.train(data, seed)
        names = {m: n for n, m in dense.named_modules()}
        by_name = {names[m]: mask for m, mask in magnitude_masks(dense, value).items()}
        torch.manual_seed(seed)
        rewound = DigitsMLP()  # the same seed draws the same initialisation
        for name, mask in by_name.items():
            prune.custom_from_mask(getattr(rewound, name), "weight", mask)
        train_lbfgs(rewound, data, max_iter=self.max_iter)
        for name in by_name:
            prune.remove(getattr(rewound, name), "weight")
        return rewound

    # --- measurements ------------------------------------------------------------------------
    def evaluate(self, model, setup: Setup, original=None, probes: bool = False, oracle_like=None) -> dict:
        obj = self.objective
        out = {
            "acc_forget": metrics.accuracy(model, setup.forget, obj),
            "acc_retain": metrics.accuracy(model, setup.retain, obj),
            "acc_test": metrics.accuracy(model, setup.test, obj),
            "margins_forget": metrics.margins(model, setup.forget, obj).numpy(),
            "margins_retain": metrics.margins(model, setup.retain, obj).numpy(),
            "margins_test": metrics.margins(model, setup.test, obj).numpy(),
            "acc_val": metrics.accuracy(model, setup.val, obj),
            "margins_val": metrics.margins(model, setup.val, obj).numpy(),
            "mia_loss": metrics.mia_loss_threshold(model, setup.forget, setup.retain, setup.test, obj),
            "mia_svc": metrics.mia_svc(model, setup.forget, setup.retain, setup.test, obj),
        }
        # every SVC-MIA feature of Unlearn-Sparse (mia_svc above is its confidence feature)
        for f, v in metrics.mia_svc_all(model, setup.forget, setup.retain, setup.test, obj).items():
            out[f"mia_svc_{f}"] = v
        if setup.scenario == "mislabel":
            out["acc_forget_true_label"] = metrics.accuracy(model, setup.extra["forget_true_labels"], obj)
        if original is not None:
            out["retain_kl"] = metrics.retain_kl(original, model, setup.retain, obj)
        if probes:
            for bits in (8, 4):
                q = quantize_rtn(model, bits)
                out[f"int{bits}_acc_forget"] = metrics.accuracy(q, setup.forget, obj)
                out[f"int{bits}_margins_forget"] = metrics.margins(q, setup.forget, obj).numpy()
            # bitsandbytes emulations (what the quantization-failure paper measured; head unquantised)
            for name, q in (("bnb4", quantize_bnb_fp4(model)), ("bnb8", quantize_llm_int8(model))):
                out[f"{name}_acc_forget"] = metrics.accuracy(q, setup.forget, obj)
                out[f"{name}_margins_forget"] = metrics.margins(q, setup.forget, obj).numpy()
            # accuracy on the 90% of the forget set held out from the 10 relearning steps
            out["relearn_acc_forget"] = np.array(relearn(
                model, setup.forget, lambda m, d: metrics.accuracy(m, d, obj), fraction=0.1, steps=10,
                lr=0.1, objective=obj, seed=setup.split_seed))
        return out

    # --- tuning budget: 6 configurations per method --------------------------------------------
    def grid(self, method: str) -> list[dict]:
        first_order = dict(optimizer="adam", batch_size=64)
        grids = {
            "finetune": [dict(lr=lr, epochs=e, optimizer="sgd", batch_size=128) for lr in (0.01, 0.1, 0.3) for e in (5, 20)],
            "gradient_ascent": [dict(lr=lr, epochs=5, **first_order) for lr in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)],
            "grad_diff": [dict(lr=lr, epochs=10, retain_loss=rl, **first_order) for lr in (1e-3, 1e-2, 3e-2)
                          for rl in ("nll", "kl")],
            "npo": [dict(lr=lr, epochs=e, beta=0.1, **first_order) for lr in (1e-3, 1e-2, 3e-2) for e in (5, 20)],
            "simnpo": [dict(lr=lr, epochs=e, beta=4.5, **first_order) for lr in (1e-3, 1e-2, 3e-2) for e in (5, 20)],
            "ssd": [dict(alpha=a, lam=lam) for a, lam in ((10, 1), (5, 1), (50, 1), (100, 1), (10, 0.1), (50, 0.1))],
            "l1_sparse": [dict(alpha=a, lr=lr, epochs=10) for a in (1e-4, 5e-4, 2e-3) for lr in (0.01, 0.1)],
            "prune_then_unlearn": [dict(sparsity=s, unlearner="finetune", unlearner_kwargs=dict(lr=lr, epochs=10))
                                   for s in (0.5, 0.8, 0.95) for lr in (0.01, 0.1)],
            "iau": [dict(lr=lr) for lr in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)],
            "newton_step": [dict(damping=dmp, weight_decay=wd) for dmp in (1e-4, 1e-3, 1e-2) for wd in (0.0, L2)],
            "kfade": [dict(curvature=c, steps=st, kl_budget=eps, damping=dmp) for c in ("ekfac", "kfac")
                      for st, eps, dmp in ((3, 0.02, 1e-5), (1, 0.05, None), (3, 0.05, 1e-4))],
            "representation_projection": [dict(dim=k, lr=lr, epochs=5) for k in (2, 4, 8) for lr in (2e-4, 2e-2)],
        }
        if method not in grids:
            raise ValueError(f"Track A has no grid for method {method!r}")
        return grids[method]
