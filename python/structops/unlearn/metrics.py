"""Unlearning metrics.  Everything that judges a method compares it with the ensemble of models
retrained without the forget set (the oracles), never with "forget accuracy = 0".

Per-model quantities (``model``, ``data``, ``objective``): :func:`accuracy`, :func:`margins`,
:func:`example_losses`, :func:`retain_kl`, :func:`confidence_features`.

Ensemble comparisons (arrays of shape (n_models, n_points)): :func:`klom` (binned, exactly as
RoyRin/data-unlearning-bench ``compute_binned_KL_div``: values clipped to [-100, 100], 20 bins
shared over the combined range, eps 1e-5 floor on q where p > 0, scipy's entropy),
:func:`gaussian_klom` (KL of normal fits, std floor 0.1: stable for few models).

Membership inference: :func:`mia_loss_threshold`, :func:`mia_svc` (Unlearn-Sparse SVC on
confidence features, C = 3, RBF); both return the share of the forget set called
*non-member*, to be compared with the oracles' value.

Distribution tests: :func:`ks_forget_quality` (two-sample KS p-value), :func:`auc`.

TOFU / open-unlearning: :func:`truth_ratio` (geometric mean over perturbed answers, as upstream;
``mean="arithmetic"`` gives our pre-v2 variant for comparison).
"""

from __future__ import annotations


import numpy as np
import torch
from torch import Tensor, nn

from .data import batches
from .objectives import Objective, as_objective

__all__ = [
    "accuracy",
    "example_accuracy",
    "margins",
    "example_losses",
    "retain_kl",
    "klom",
    "binned_kl",
    "binned_kl_columns",
    "gaussian_klom",
    "confidence_features",
    "mia_loss_threshold",
    "mia_svc",
    "ks_forget_quality",
    "auc",
    "harmonic_mean",
    "truth_ratio",
]


@torch.no_grad()
def _scored(model: nn.Module, data, objective: Objective, batch_size: int = 1024):
    """(logp (N, C), targets (N,), example (N,)) over all of data, positions concatenated."""
    model.eval()
    lps, tg, ex = [], [], []
    offset = 0
    for b in batches(data, batch_size):
        logp, t, e = objective.scored_logprobs(model, b)
        lps.append(logp)
        tg.append(t)
        ex.append(e + offset)
        offset += int(b[0].shape[0])
    return torch.cat(lps), torch.cat(tg), torch.cat(ex), offset


def accuracy(model: nn.Module, data, objective=None) -> float:
    """Share of scored targets predicted by argmax (classification: examples; LM: tokens)."""
    logp, t, _, _ = _scored(model, data, as_objective(objective))
    return float((logp.argmax(-1) == t).float().mean()) if t.numel() else float("nan")


def example_accuracy(model: nn.Module, data, objective=None) -> Tensor:
    """Per example: 1 if every scored target is the argmax (greedy exact match), else 0."""
    logp, t, e, n = _scored(model, data, as_objective(objective))
    wrong = torch.zeros(n).index_add_(0, e, (logp.argmax(-1) != t).float())
    return (wrong == 0).float()


def margins(model: nn.Module, data, objective=None) -> Tensor:
    """Per-example margin logit_y - logsumexp(logits_{!=y}) (averaged over an example's scored
    positions), computed from log-probabilities (identical: the normaliser cancels)."""
    logp, t, e, n = _scored(model, data, as_objective(objective))
    correct = logp.gather(1, t[:, None])[:, 0]
    other = logp.scatter(1, t[:, None], float("-inf")).logsumexp(-1)
    m = correct - other
    s = torch.zeros(n, dtype=m.dtype).index_add_(0, e, m)
    c = torch.zeros(n, dtype=m.dtype).index_add_(0, e, torch.ones_like(m))
    return s / c.clamp_min(1)


def example_losses(model: nn.Module, data, objective=None) -> Tensor:
    """Per-example mean NLL."""
    objective = as_objective(objective)
    model.eval()
    with torch.no_grad():
        return torch.cat([objective.mean_nll(model, b) for b in batches(data, 1024)])


def retain_kl(original: nn.Module, unlearned: nn.Module, data, objective=None) -> float:
    """Mean over scored positions of KL(p_original || p_unlearned) — how much the unlearning
    moved the model's outputs where it should not have."""
    objective = as_objective(objective)
    a, _, _, _ = _scored(original, data, objective)
    b, _, _, _ = _scored(unlearned, data, objective)
    return float((a.exp() * (a - b)).sum(-1).mean())


# ---------------------------------------------------------------------------------------------
# KLoM
# ---------------------------------------------------------------------------------------------
def binned_kl(p_arr: np.ndarray, q_arr: np.ndarray, bin_count: int = 20, eps: float = 1e-5,
              min_val: float = -100.0, max_val: float = 100.0) -> float:
    """D_KL(p || q) of two samples via shared histogram bins — data-unlearning-bench's
    ``compute_binned_KL_div``, reproduced exactly (np.digitize bins, so a sample equal to the
    top edge is not counted, as there)."""
    from scipy import stats

    p_arr = np.clip(np.asarray(p_arr, dtype=np.float64), min_val, max_val)
    q_arr = np.clip(np.asarray(q_arr, dtype=np.float64), min_val, max_val)
    start = min(p_arr.min(), q_arr.min())
    end = max(p_arr.max(), q_arr.max())
    if start >= end:
        end = start + 1
    bins = np.linspace(start, end, bin_count + 1)
    pi, qi = np.digitize(p_arr, bins), np.digitize(q_arr, bins)
    pc = np.array([np.sum(pi == i) for i in range(1, bin_count + 1)])
    qc = np.array([np.sum(qi == i) for i in range(1, bin_count + 1)])
    pp = pc / pc.sum() if pc.sum() > 0 else np.zeros(bin_count)
    qp = qc / qc.sum() if qc.sum() > 0 else np.zeros(bin_count)
    qs = np.where(pp > 0, np.maximum(qp, eps), qp)
    return float(stats.entropy(pk=pp, qk=qs))


def binned_kl_columns(p_cols, q_cols, bin_count: int = 20, eps: float = 1e-5, min_val: float = -100.0,
                      max_val: float = 100.0, chunk_elems: int = 1 << 22) -> np.ndarray:
    """``[binned_kl(p_cols[:, i], q_cols[:, i]) for i in range(n_points)]`` for (n_p, n_points) and
    (n_q, n_points) samples, vectorised over the points and bit-identical to the per-point loop
    (the same linspace, digitize, normalisations and scipy ``rel_entr`` in the same order; tested
    for exact equality): the loop's ~50k small numpy/scipy calls per aggregate were a third of
    the unlearning protocol's time.  Points are processed in chunks of at most ``chunk_elems``
    bin comparisons."""
    from scipy import special

    p = np.clip(np.asarray(p_cols, dtype=np.float64), min_val, max_val)
    q = np.clip(np.asarray(q_cols, dtype=np.float64), min_val, max_val)
    if p.ndim != 2 or q.ndim != 2 or p.shape[1] != q.shape[1]:
        raise ValueError(f"binned_kl_columns needs (n_samples, n_points) arrays with equal n_points, "
                         f"got {p.shape} and {q.shape}")
    if np.isnan(p).any() or np.isnan(q).any():
        raise ValueError("binned_kl_columns: the samples contain NaN (margins of a diverged model?)")
    n_points = p.shape[1]
    out = np.empty(n_points)
    if n_points == 0:
        return out
    if p.shape[0] == 0 or q.shape[0] == 0:
        raise ValueError(f"binned_kl_columns needs at least one sample on each side, got {p.shape} and {q.shape}")
    p, q = np.ascontiguousarray(p.T), np.ascontiguousarray(q.T)  # (n_points, n_samples)
    start = np.minimum(p.min(1), q.min(1))
    end = np.maximum(p.max(1), q.max(1))
    end = np.where(start >= end, start + 1, end)
    if np.any((end - start) / bin_count == 0):  # linspace's zero-step branch would differ: per point
        return np.array([binned_kl(p[i], q[i], bin_count, eps, min_val, max_val) for i in range(n_points)])
    bins = np.linspace(start, end, bin_count + 1, axis=1)  # (n_points, bin_count + 1), as per point
    step = max(1, chunk_elems // ((p.shape[1] + q.shape[1]) * (bin_count + 1)))
    for c0 in range(0, n_points, step):
        sl = slice(c0, min(c0 + step, n_points))
        b = bins[sl, None, :]

        def counts(x):
            # np.digitize(x, bins) (increasing bins) = number of bin edges <= x
            idx = (x[sl, :, None] >= b).sum(-1)
            return np.stack([(idx == i).sum(1) for i in range(1, bin_count + 1)], axis=1)

        pc, qc = counts(p), counts(q)
        with np.errstate(invalid="ignore", divide="ignore"):
            pt, qt = pc.sum(1, keepdims=True), qc.sum(1, keepdims=True)
            pp = np.where(pt > 0, pc / np.where(pt > 0, pt, 1), 0.0)
            qp = np.where(qt > 0, qc / np.where(qt > 0, qt, 1), 0.0)
            qs = np.where(pp > 0, np.maximum(qp, eps), qp)
            # scipy.stats.entropy(pk=pp, qk=qs): both renormalised, then sum(rel_entr)
            qk = qs / qs.sum(1, keepdims=True)
            pk = pp / pp.sum(1, keepdims=True)
            out[sl] = special.rel_entr(pk, qk).sum(1)
    return out


def klom(unlearned_margins, oracle_margins) -> np.ndarray:
    """Per-point KLoM: binned KL(unlearned margins || oracle margins); inputs (n_models, n_points).
    Each point is ``binned_kl`` of its two columns (computed for all points at once)."""
    u, o = np.asarray(unlearned_margins), np.asarray(oracle_margins)
    if u.ndim != 2 or o.ndim != 2 or u.shape[1] != o.shape[1]:
        raise ValueError(f"klom needs (n_models, n_points) arrays with equal n_points, got {u.shape} and {o.shape}")
    return binned_kl_columns(u, o)


def gaussian_klom(unlearned_margins, oracle_margins, std_floor: float = 0.1) -> np.ndarray:
    """Per-point KL(N(mu_u, s_u^2) || N(mu_o, s_o^2)) of normal fits to the margin samples, std
    floored at ``std_floor``: a low-variance KLoM for few models."""
    u, o = np.asarray(unlearned_margins, dtype=np.float64), np.asarray(oracle_margins, dtype=np.float64)
    if u.shape[1] != o.shape[1]:
        raise ValueError(f"gaussian_klom needs equal n_points, got {u.shape} and {o.shape}")
    mu_u, mu_o = u.mean(0), o.mean(0)
    su = np.maximum(u.std(0, ddof=1) if u.shape[0] > 1 else np.zeros(u.shape[1]), std_floor)
    so = np.maximum(o.std(0, ddof=1) if o.shape[0] > 1 else np.zeros(o.shape[1]), std_floor)
    return np.log(so / su) + (su ** 2 + (mu_u - mu_o) ** 2) / (2 * so ** 2) - 0.5


# ---------------------------------------------------------------------------------------------
# membership inference
# ---------------------------------------------------------------------------------------------
def confidence_features(model: nn.Module, data, objective=None) -> dict[str, Tensor]:
    """Per-example features of Unlearn-Sparse's SVC MIA: correctness, confidence p_y, entropy,
    modified entropy (Song & Mittal 2021), averaged over positions for LMs; and, for classifiers
    (one scored position per example), "prob": the (n, classes) probability vectors."""
    logp, t, e, n = _scored(model, data, as_objective(objective))
    p = logp.exp()
    py = p.gather(1, t[:, None])[:, 0]
    ent = -(p * logp).sum(-1)
    log_1m = torch.log((1 - p).clamp_min(1e-30))
    m_ent = -(1 - py) * logp.gather(1, t[:, None])[:, 0] - (p * log_1m).sum(-1) + py * log_1m.gather(1, t[:, None])[:, 0]
    feats = {"correctness": (logp.argmax(-1) == t).float(), "confidence": py, "entropy": ent, "m_entropy": m_ent}
    cnt = torch.zeros(n).index_add_(0, e, torch.ones_like(py))
    out = {k: torch.zeros(n).index_add_(0, e, v.float()) / cnt.clamp_min(1) for k, v in feats.items()}
    if len(e) == n and torch.equal(e, torch.arange(n)):  # one scored position per example (classifiers)
        out["prob"] = p  # (n, classes): Unlearn-Sparse's "prob" feature, the whole softmax vector
    return out


def _best_threshold(member: np.ndarray, nonmember: np.ndarray) -> tuple[float, bool]:
    """Threshold on a score maximising balanced accuracy; returns (threshold, higher_is_member)."""
    vals = np.unique(np.concatenate([member, nonmember]))
    best = (-1.0, 0.0, True)
    for higher in (True, False):
        for thr in vals:
            tpr = np.mean(member >= thr) if higher else np.mean(member <= thr)
            tnr = np.mean(nonmember < thr) if higher else np.mean(nonmember > thr)
            acc = 0.5 * (tpr + tnr)
            if acc > best[0]:
                best = (acc, float(thr), higher)
    return best[1], best[2]


def mia_loss_threshold(model: nn.Module, forget, retain, test, objective=None) -> float:
    """Loss-threshold MIA calibrated on retain (members) vs test (non-members): the share of the
    forget set whose loss falls on the non-member side.  Compare with the oracles' value."""
    lr = -example_losses(model, retain, objective).numpy()
    lt = -example_losses(model, test, objective).numpy()
    lf = -example_losses(model, forget, objective).numpy()
    thr, higher = _best_threshold(lr, lt)
    member = lf >= thr if higher else lf <= thr
    return float(1 - member.mean())


SVC_FEATURES = ("correctness", "confidence", "entropy", "m_entropy", "prob")


def _svc_nonmember_share(fr: np.ndarray, ft: np.ndarray, ff: np.ndarray, max_shadow: int, seed: int) -> float:
    """SVC (C=3, RBF) trained on member (fr) vs non-member (ft) features, balanced by subsampling
    both to the same count; the share of ff predicted non-member.  Arrays (n,) or (n, d)."""
    from sklearn.svm import SVC

    fr, ft, ff = (np.asarray(a, dtype=np.float64).reshape(len(a), -1) for a in (fr, ft, ff))
    rng = np.random.default_rng(seed)
    k = min(len(fr), len(ft), max_shadow)
    fr, ft = fr[rng.choice(len(fr), k, replace=False)], ft[rng.choice(len(ft), k, replace=False)]
    X = np.concatenate([fr, ft])
    y = np.concatenate([np.ones(k), np.zeros(k)])
    clf = SVC(C=3, gamma="auto", kernel="rbf").fit(X, y)
    return float(1 - clf.predict(ff).mean())


def mia_svc_all(model: nn.Module, forget, retain, test, objective=None, features=SVC_FEATURES,
                max_shadow: int = 2000, seed: int = 0) -> dict:
    """Unlearn-Sparse's ``SVC_MIA`` with every feature it uses: {feature: share of the forget set
    predicted non-member} for correctness, confidence, entropy, modified entropy and the
    probability vector ("prob", classifiers only — omitted for sequence models).  One SVC per
    feature, trained on retain (members) vs test (non-members), balanced."""
    fr, ft, ff = (confidence_features(model, d, objective) for d in (retain, test, forget))
    out = {}
    for f in features:
        if f not in fr:
            continue
        if f not in ("correctness", "confidence", "entropy", "m_entropy", "prob"):
            raise ValueError(f"mia_svc_all: unknown feature {f!r}; choose from {SVC_FEATURES}")
        out[f] = _svc_nonmember_share(fr[f].numpy(), ft[f].numpy(), ff[f].numpy(), max_shadow, seed)
    return out


def mia_svc(model: nn.Module, forget, retain, test, objective=None, feature: str = "confidence",
            max_shadow: int = 2000, seed: int = 0) -> float:
    """Unlearn-Sparse ``SVC_MIA`` (efficacy form): an SVC (C=3, RBF) trained on one confidence
    feature of retain examples (members) vs test examples (non-members), balanced to equal
    counts; returns the share of the forget set predicted non-member."""
    from sklearn.svm import SVC

    fr = confidence_features(model, retain, objective)[feature].numpy()
    ft = confidence_features(model, test, objective)[feature].numpy()
    ff = confidence_features(model, forget, objective)[feature].numpy()
    rng = np.random.default_rng(seed)
    k = min(len(fr), len(ft), max_shadow)
    fr, ft = rng.choice(fr, k, replace=False), rng.choice(ft, k, replace=False)
    X = np.concatenate([fr, ft])[:, None]
    y = np.concatenate([np.ones(k), np.zeros(k)])
    clf = SVC(C=3, gamma="auto", kernel="rbf").fit(X, y)
    return float(1 - clf.predict(ff[:, None]).mean())


# ---------------------------------------------------------------------------------------------
# distribution comparisons
# ---------------------------------------------------------------------------------------------
def ks_forget_quality(values, reference) -> float:
    """Two-sample Kolmogorov-Smirnov p-value (TOFU's forget quality: 1 = indistinguishable)."""
    from scipy import stats

    return float(stats.ks_2samp(np.asarray(values), np.asarray(reference)).pvalue)


def auc(scores_pos, scores_neg) -> float:
    """Area under the ROC curve of scores (positives should score higher); ties count 1/2."""
    a, b = np.asarray(scores_pos, dtype=np.float64), np.asarray(scores_neg, dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    allv = np.concatenate([a, b])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    sv = allv[order]
    i = 0
    while i < len(sv):  # average ranks over ties
        j = i
        while j + 1 < len(sv) and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i:j + 1]] = 0.5 * (i + j) + 1
        i = j + 1
    return float((ranks[: len(a)].sum() - len(a) * (len(a) + 1) / 2) / (len(a) * len(b)))


def truth_ratio(perturbed_mean_logprob, correct_mean_logprob, mean: str = "geometric") -> np.ndarray:
    """Per question R = mean_j P(pert_j)^(1/|a_j|) / P(correct)^(1/|a|) from mean per-token
    log-probabilities: ``perturbed_mean_logprob`` (n_questions, n_perturbed),
    ``correct_mean_logprob`` (n_questions,).

    ``mean="geometric"`` is TOFU's and open-unlearning's (``exp(mean_j log p_j)``: the perturbed
    answers' average NLL); ``"arithmetic"`` averages the probabilities instead (always >= the
    geometric mean, by AM-GM) and is kept only to compare with results computed that way."""
    pert = torch.as_tensor(perturbed_mean_logprob, dtype=torch.float64)
    base = torch.as_tensor(correct_mean_logprob, dtype=torch.float64)
    if pert.dim() != 2 or base.dim() != 1 or pert.shape[0] != base.shape[0]:
        raise ValueError(f"truth_ratio needs (n, k) perturbed and (n,) correct log-probs, got "
                         f"{tuple(pert.shape)} and {tuple(base.shape)}")
    if mean == "geometric":
        num = pert.mean(1)
    elif mean == "arithmetic":
        num = pert.exp().mean(1).log()
    else:
        raise ValueError(f"truth_ratio: mean must be 'geometric' or 'arithmetic', got {mean!r}")
    return (num - base).exp().numpy()


def option_normalised_probability(correct_mean_logprob, option_mean_logprobs) -> np.ndarray:
    """TOFU's / open-unlearning's probability on its multiple-choice-like utility sets (real
    authors, world facts; ``probability_w_options``): the correct answer's length-normalised
    probability P(a)^(1/|a|) divided by the sum of it and the wrong options' P(a_j)^(1/|a_j|).
    ``correct_mean_logprob`` (n,), ``option_mean_logprobs`` (n, k) mean per-token log-probs."""
    base = torch.as_tensor(correct_mean_logprob, dtype=torch.float64)
    opts = torch.as_tensor(option_mean_logprobs, dtype=torch.float64)
    if opts.dim() != 2 or base.dim() != 1 or opts.shape[0] != base.shape[0]:
        raise ValueError(f"option_normalised_probability needs (n,) correct and (n, k) option log-probs, got "
                         f"{tuple(base.shape)} and {tuple(opts.shape)}")
    allp = torch.cat([base[:, None], opts], 1)
    return (base - torch.logsumexp(allp, 1)).exp().numpy()


def harmonic_mean(values) -> float:
    v = np.asarray(values, dtype=np.float64)
    if np.any(v <= 0):
        return 0.0
    return float(len(v) / np.sum(1.0 / v))
