"""Track B: a tiny causal transformer that memorises synthetic fictitious-author facts (TOFU-like).

* Data: :mod:`.synthetic_facts` — 200 authors x 10 attributes x 2 paraphrase templates, 60 world
  facts, 2-digit addition (held-out pairs measure the general skill), 50 never-trained
  authors for membership inference.  Token-level loss on the answer tokens only.
* Model: :class:`.tiny_lm.TinyLM` (d = 80, 2 layers, 4 heads: ~225k parameters), AdamW
  (lr 3e-3, weight decay 0.01, batch 256), trained until every training answer token is
  predicted (checked every epoch from epoch 10, at most 80 epochs; TinyLM's scored path runs
  the head on the answer positions only); deterministic given the seed.
* Scenarios: ``forget01`` / ``forget05`` / ``forget10`` = 1% / 5% / 10% of the authors (2 / 10 /
  20 authors, all their questions in both templates); split_seed picks which authors.

Metrics (open-unlearning's, computed locally; "forget" = the forget authors' questions):
accuracy (greedy exact match of the answer, template A), TOFU's truth ratio: the paraphrased
*answer* (``-> namely ANSWER``, a wording the model learns from the general data only) against 4
perturbed answers from the same attribute vocabulary in the same wording (forget aggregate
mean(min(R, 1/R)), retain aggregate mean(max(0, 1 - R))); v1's truth ratio on the paraphrased
*question* (template B) is kept beside it (``truth_ratio_forget_qpara``, ``forget_quality_qpara``);
forget quality = KS p-value of the
forget truth ratios against the reference oracles', model utility = harmonic mean of
{answer probability, accuracy, truth-ratio aggregate} x {retain authors, world facts, held-out
addition} (the probability option-normalised on world facts and additions, as TOFU does on its
real-author and world-fact sets), extraction strength, exact memorisation, Min-K% (k = 40%) MIA AUC (forget vs
never-trained authors, over the answer tokens: the only trained positions) and privleak relative
to the oracles, the loss-threshold MIA (retain vs never-trained authors), margins for Gaussian
KLoM.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import metrics
from ..objectives import CausalLM, scored_rows
from ..probes import quantize_bnb_fp4, quantize_llm_int8, quantize_rtn, relearn
from .base import Setup, Track
from .synthetic_facts import IGNORE, make_facts
from .tiny_lm import TinyLM

__all__ = ["TrackB"]

FRACTIONS = {"forget01": 0.01, "forget05": 0.05, "forget10": 0.10}


def _replace_answer(ids: torch.Tensor, labels: torch.Tensor, answers: list) -> tuple:
    """Rows with their answer tokens replaced by `answers[i]` (one token per scored position of
    row i).  Vectorised: one boolean-mask write per tensor (row-major, the order of `answers`)."""
    mask = labels != IGNORE
    flat = [t for a in answers for t in a]
    lengths = mask.sum(1).tolist()
    if len(answers) != ids.shape[0] or any(len(a) != n for a, n in zip(answers, lengths)):
        raise ValueError("_replace_answer: every row needs exactly one replacement token per scored position")
    if bool(mask[:, -1].any()):
        raise ValueError("_replace_answer: a label in the last column has no input position to replace")
    flat = torch.tensor(flat, dtype=ids.dtype)
    ids, labels = ids.clone(), labels.clone()
    labels[mask] = flat
    ids[:, 1:][mask[:, :-1]] = flat  # label t is the input token at t + 1
    return ids, labels


def _scored_logits(model, ids, mask):
    """Logits at the scored positions, (mask.sum(), V) row-major: the model's scored path
    (TinyLM: the head and softmax on the answer rows only; the same capability flag as
    CausalLM.nll) or, for any other model, ``model(ids)[mask]``."""
    if getattr(model, "supports_scored_positions", False):
        return model(ids, scored=mask)
    return model(ids)[mask]


@torch.no_grad()
def _answer_stats(model, ids, labels):
    """Per row: mean answer-token log-prob, teacher-forced token correctness (B, T) bool, the
    scored mask (B, T), mean margin logit_y - logsumexp(others)."""
    model.eval()
    mask = labels != IGNORE
    logp = torch.log_softmax(_scored_logits(model, ids, mask).float(), -1)  # (N, V)
    tgt = labels[mask]
    lp_tok = logp.gather(-1, tgt[:, None])[:, 0]
    other = logp.scatter(-1, tgt[:, None], float("-inf")).logsumexp(-1)
    row = scored_rows(mask)
    n = mask.sum(1).clamp_min(1)
    mean_lp = torch.zeros(ids.shape[0]).index_add_(0, row, lp_tok) / n
    margin = torch.zeros(ids.shape[0]).index_add_(0, row, lp_tok - other) / n
    correct = torch.zeros_like(mask)
    correct[mask] = logp.argmax(-1) == tgt
    return mean_lp, correct, mask, margin


def _exact(correct, mask):
    """Per row 1.0 where every answer token is the argmax prediction (from _answer_stats)."""
    return (correct.sum(1) == mask.sum(1)).float()


def _exact_match(model, ids, labels) -> float:
    """Share of questions whose whole answer is the greedy (argmax) prediction."""
    _, correct, mask, _ = _answer_stats(model, ids, labels)
    return float(_exact(correct, mask).mean())


def _acc_margin(model, question) -> tuple:
    """Per question: exact-match accuracy and mean margin, numpy (as _qa's "acc" and "margin")."""
    _, correct, mask, margin = _answer_stats(model, *question)
    return _exact(correct, mask).numpy(), margin.numpy()


def _forget_truth_ratio(tr: np.ndarray) -> float:
    """open-unlearning's forget aggregate mean(min(R, 1/R)); R = 0 (all mass on wrong answers)
    counts as 0, without a division warning."""
    return float(np.minimum(tr, 1 / np.maximum(tr, np.finfo(np.float64).tiny)).mean())


def _truth_ratios(model, ids, labels, perturbed: list) -> np.ndarray:
    """TOFU / open-unlearning truth ratio per question: the *geometric* mean over the perturbed
    answers of their length-normalised probability P(a_pert)^(1/|a|), divided by that of the
    correct answer (metrics.truth_ratio).  Before the unlearning-v2 work this averaged the
    perturbed probabilities arithmetically; docs/UNLEARNING.md says which numbers used which."""
    base, _, _, _ = _answer_stats(model, ids, labels)
    k = len(perturbed[0])
    pert_lp = []
    for j in range(k):
        pi, pl = _replace_answer(ids, labels, [p[j] for p in perturbed])
        lp, _, _, _ = _answer_stats(model, pi, pl)
        pert_lp.append(lp)
    return metrics.truth_ratio(torch.stack(pert_lp, 1), base)


@torch.no_grad()
def _mink(model, ids, labels, frac: float = 0.4) -> np.ndarray:
    """Min-K% score per sequence: mean of the lowest ``frac`` of its scored (answer) token
    log-probs — the only positions the model is trained on, so the prompt tokens carry no
    membership signal here."""
    model.eval()
    mask = labels != IGNORE
    logp = torch.log_softmax(_scored_logits(model, ids, mask).float(), -1)
    lp_tok = logp.gather(-1, labels[mask][:, None])[:, 0]
    per_row = torch.split(lp_tok, mask.sum(1).tolist())
    out = []
    for v in per_row:
        v = torch.sort(v).values
        k = max(1, int(round(frac * v.numel())))
        out.append(float(v[:k].mean()))
    return np.array(out)


def _batch_hits(model, ids, labels, batch_size: int):
    """Per batch of ``batch_size`` rows (in order): (answer tokens predicted by argmax, answer
    tokens), on the scored path; the caller holds no_grad."""
    model.eval()
    for i in range(0, ids.shape[0], batch_size):
        lab = labels[i:i + batch_size]
        mask = lab != IGNORE
        yield int((_scored_logits(model, ids[i:i + batch_size], mask).argmax(-1) == lab[mask]).sum()), int(mask.sum())


@torch.no_grad()
def _token_accuracy(model, ids, labels, batch_size: int = 2048) -> float:
    """metrics.accuracy on the scored path: share of answer tokens predicted by argmax."""
    hit, tot = 0, 0
    for h, n in _batch_hits(model, ids, labels, batch_size):
        hit, tot = hit + h, tot + n
    return hit / max(tot, 1)


# The fit check's screen: the first SCREEN_ROWS rows, in a batch of their own.  Per-row logits
# depend on the batch size in their last bits (measured on trained Track B models: at most
# 1.2e-5 between batches of 64..1000 rows and of 2048), so only a *clear* miss — the label's
# logit below the top logit by more than SCREEN_MARGIN, 4000x that — is certain to be a miss in
# the exact pass too.
SCREEN_ROWS = 256
SCREEN_MARGIN = 0.05


@torch.no_grad()
def _clear_misses(model, ids, labels) -> int:
    """Answer tokens whose label logit trails the top logit by more than SCREEN_MARGIN (scored
    path, one batch, eval mode): a lower bound on the argmax misses of any other batching."""
    model.eval()
    mask = labels != IGNORE
    logits = _scored_logits(model, ids, mask).float()
    gap = logits.max(-1).values - logits.gather(-1, labels[mask][:, None])[:, 0]
    return int((gap > SCREEN_MARGIN).sum())


@torch.no_grad()
def _fits(model, ids, labels, need: float, batch_size: int = 2048, screen_rows: int = SCREEN_ROWS) -> bool:
    """``_token_accuracy(model, ids, labels, batch_size) >= need``, the same decision from the same
    batches, but cheaper when the answer is no:

    * a screen on the first ``screen_rows`` rows (0: none) counts their clear misses
      (_clear_misses); if even every other token right could not reach ``need``, the answer is
      no — the exact pass would count at least those misses.  Early in training that settles
      the check for an eighth of the exact pass's first batch;
    * otherwise the exact pass stops at the first batch after which even all remaining tokens
      right could not reach ``need``."""
    tot = int((labels != IGNORE).sum())
    if screen_rows > 0 and tot > 0:
        clear = _clear_misses(model, ids[:screen_rows], labels[:screen_rows])
        if (tot - clear) / tot < need:
            return False
    hit, seen = 0, 0
    for h, n in _batch_hits(model, ids, labels, batch_size):
        hit, seen = hit + h, seen + n
        if (hit + tot - seen) / max(tot, 1) < need:
            return False
    return hit / max(tot, 1) >= need


class TrackB(Track):
    name = "B"
    scenarios = tuple(FRACTIONS)
    objective = CausalLM()
    transient_attrs = ("_facts",)  # rebuilt on first use, not pickled (Track.transient_attrs)

    def __init__(self, d: int = 80, max_epochs: int = 80, utility_subset: int = 200):
        self.d = d
        self.max_epochs = max_epochs
        self.utility_subset = utility_subset
        self._facts = None

    @property
    def facts(self):
        if self._facts is None:
            self._facts = make_facts(0)
        return self._facts

    def setup(self, scenario: str, split_seed: int) -> Setup:
        if scenario not in FRACTIONS:
            raise ValueError(f"Track B scenario must be one of {self.scenarios}, got {scenario!r}")
        fd = self.facts
        n_forget = max(1, int(round(FRACTIONS[scenario] * fd.n_authors)))
        if (split_seed + 1) * n_forget > fd.n_authors:
            raise ValueError(f"Track B {scenario}: only {fd.n_authors // n_forget} disjoint forget sets exist; "
                             f"split {split_seed} was asked for")
        # chunk split_seed of one fixed permutation of the authors: splits are disjoint by construction
        perm = np.random.default_rng(2000).permutation(fd.n_authors)
        forget_authors = np.sort(perm[split_seed * n_forget:(split_seed + 1) * n_forget])
        is_f = np.isin(fd.author_of_row, forget_authors)
        fi, ri = torch.tensor(np.nonzero(is_f)[0]), torch.tensor(np.nonzero(~is_f)[0])
        A, B = fd.author_q["A"], fd.author_q["B"]

        def rows(q, idx):
            return q[0][idx], q[1][idx]

        def cat(*parts):
            return tuple(torch.cat([p[i] for p in parts]) for i in range(2))

        forget = cat(rows(A, fi), rows(B, fi))
        general = (fd.world_q["A"], fd.world_q["B"], fd.add_train, fd.general_para)
        retain = cat(rows(A, ri), rows(B, ri), *general)
        # one canonical order for the full training set, so every split shares the originals
        train = cat(A, B, *general)
        u_rng = np.random.default_rng(3000 + split_seed)
        ru = torch.tensor(np.sort(u_rng.choice(ri.numpy(), min(self.utility_subset, len(ri)), replace=False)))
        # held-out additions: one fixed permutation, the first part reported (utility), the next
        # part the tuning validation set (disjoint)
        n_add = len(fd.add_test_answers)
        add_perm = np.random.default_rng(3000).permutation(n_add)
        k_add = min(self.utility_subset, n_add // 2)
        au, av = np.sort(add_perm[:k_add]), np.sort(add_perm[k_add:2 * k_add])
        extra = {
            "forget_A": rows(A, fi), "forget_B": rows(B, fi),
            "forget_perturbed": [fd.author_perturbed[i] for i in fi.tolist()],
            "forget_para": rows(fd.author_para, fi),
            "forget_para_perturbed": [fd.author_para_perturbed[i] for i in fi.tolist()],
            "retain_A": rows(A, ru), "retain_B": rows(B, ru),
            "retain_perturbed": [fd.author_perturbed[i] for i in ru.tolist()],
            "retain_para": rows(fd.author_para, ru),
            "retain_para_perturbed": [fd.author_para_perturbed[i] for i in ru.tolist()],
            "world_A": fd.world_q["A"], "world_B": fd.world_q["B"], "world_perturbed": fd.world_perturbed,
            "add_test": (fd.add_test[0][au], fd.add_test[1][au]),
            "add_perturbed": [fd.add_test_perturbed[i] for i in au.tolist()],
            "add_val": (fd.add_test[0][av], fd.add_test[1][av]),
            "holdout_A": fd.holdout_q["A"],
        }
        test = extra["add_test"]
        return Setup(scenario, split_seed, train, forget, retain, test, extra, key=f"B-{scenario}-{split_seed}",
                     val=extra["add_val"], forget_ids=[int(a) for a in forget_authors])

    def new_model(self):
        return TinyLM(len(self.facts.vocab), d=self.d)

    def train(self, data: tuple, seed: int):
        """AdamW on the answer tokens' mean NLL per question (CausalLM.mean_nll, which runs
        TinyLM's scored path: same maths, about half the time); fit checked every epoch from
        epoch 10 (teacher-forced token accuracy >= 0.999 on the training data)."""
        torch.manual_seed(seed)
        model = self.new_model()
        ids, labels = data
        # foreach: one multi-tensor update instead of a loop over the 30 parameters (the same
        # arithmetic, equal bits; ~1 ms of a ~70 ms step)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01, foreach=True)
        g = torch.Generator().manual_seed(seed)
        n, bs = ids.shape[0], 256
        for epoch in range(self.max_epochs):
            model.train()
            perm = torch.randperm(n, generator=g)
            for i in range(0, n, bs):
                b = perm[i:i + bs]
                loss = self.objective.mean_nll(model, (ids[b], labels[b])).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if epoch >= 9 and _fits(model, ids, labels, 0.999):
                break
        model.eval()
        return model

    # --- measurements ------------------------------------------------------------------------
    def _qa(self, model, question, perturbed, truth=None, qpara=None, options: bool = False):
        """Accuracy, mean answer probability, extraction strength, exact memorisation, truth
        ratios, margins for one question set.

        ``question``: (ids, labels) of template A, plain answers; ``perturbed``: per question the
        wrong answers in the plain wording.  ``truth`` = ((ids, labels), perturbed answers in the
        same wording): the truth ratio's correct sequence and its alternatives — for the authors
        TOFU's paraphrased *answer* (``-> namely ANSWER``, a wording never trained on an author)
        against perturbed answers in that wording; ``None`` (the general sets, as TOFU's
        real-author and world-fact sets): the plain answer against the plain options, reusing
        the option log-probs when ``options`` computed them.  ``qpara``: (ids,
        labels) of the paraphrased *question* (template B); when given, the v1 truth ratio on it
        is returned too (``tr_qpara``).  ``options``: the probability is TOFU's option-normalised
        one (the correct answer against the perturbed ones), as TOFU scores its real-author and
        world-fact utility sets; otherwise P(a)^(1/|a|)."""
        ids_a, labels_a = question
        lp, correct, mask, margin = _answer_stats(model, ids_a, labels_a)
        opt_lp = None
        if options:
            opt_lp = []
            for j in range(len(perturbed[0])):
                pi, pl = _replace_answer(ids_a, labels_a, [p[j] for p in perturbed])
                opt_lp.append(_answer_stats(model, pi, pl)[0])
            opt_lp = torch.stack(opt_lp, 1)
            prob = metrics.option_normalised_probability(lp, opt_lp)
        else:
            prob = lp.exp().numpy()
        n = mask.sum(1)
        acc = _exact(correct, mask)
        es = []
        for i in range(ids_a.shape[0]):
            c = correct[i][mask[i]].tolist()
            k = len(c)
            while k > 0 and c[k - 1]:
                k -= 1
            es.append(1 - k / max(len(c), 1))  # smallest prefix after which greedy reproduces the rest
        em = correct.sum(1).float() / n.clamp_min(1)
        if truth is not None:
            tr = _truth_ratios(model, *truth[0], truth[1])
        elif opt_lp is not None:
            tr = metrics.truth_ratio(opt_lp, lp)
        else:
            tr = _truth_ratios(model, ids_a, labels_a, perturbed)
        out = {"acc": acc.numpy(), "prob": prob, "es": np.array(es), "em": em.numpy(), "tr": tr,
               "margin": margin.numpy()}
        if qpara is not None:
            out["tr_qpara"] = _truth_ratios(model, *qpara, perturbed)
        return out

    def _authors(self, model, x: dict, which: str, qpara: bool = False) -> dict:
        """_qa of the forget or retain authors' questions (``which`` = "forget" / "retain")."""
        return self._qa(model, x[f"{which}_A"], x[f"{which}_perturbed"],
                        (x[f"{which}_para"], x[f"{which}_para_perturbed"]),
                        qpara=x[f"{which}_B"] if qpara else None)

    def tuning_evaluate(self, model, setup: Setup, original=None) -> dict:
        """What tuning reads, computed exactly as :meth:`evaluate` computes it (the same calls on
        the same tensors, so equal bit for bit — tested): forget/retain accuracy, the forget,
        retain, test and validation margins, retain KL.  Skips the truth ratios, option
        probabilities, Min-K% and MIA — about four fifths of an evaluation's forward passes."""
        x = setup.extra
        f_acc, f_margin = _acc_margin(model, x["forget_A"])
        r_acc, r_margin = _acc_margin(model, x["retain_A"])
        out = {
            "acc_forget": float(f_acc.mean()),
            "acc_retain": float(r_acc.mean()),
            "margins_forget": f_margin,
            "margins_retain": r_margin,
            "margins_test": _acc_margin(model, x["add_test"])[1],
            "margins_val": _answer_stats(model, *x["add_val"])[3].numpy(),
        }
        if original is not None:
            out["retain_kl"] = metrics.retain_kl(original, model, x["retain_A"], self.objective)
        return out

    def evaluate(self, model, setup: Setup, original=None, probes: bool = False) -> dict:
        x = setup.extra
        f = self._authors(model, x, "forget", qpara=True)
        r = self._authors(model, x, "retain")
        # the general-knowledge utility sets (TOFU's real authors / world facts): option-normalised
        w = self._qa(model, x["world_A"], x["world_perturbed"], options=True)
        a = self._qa(model, x["add_test"], x["add_perturbed"], options=True)
        util_parts = []
        for part in (r, w, a):
            util_parts += [part["prob"].mean(), part["acc"].mean(), np.maximum(0, 1 - part["tr"]).mean()]
        mink_f = _mink(model, *x["forget_A"])
        mink_h = _mink(model, *x["holdout_A"])
        out = {
            "acc_forget": float(f["acc"].mean()),
            "acc_retain": float(r["acc"].mean()),
            "acc_world": float(w["acc"].mean()),
            "acc_add_test": float(a["acc"].mean()),
            "prob_forget": float(f["prob"].mean()),
            "truth_ratio_forget": _forget_truth_ratio(f["tr"]),
            # v1's question-paraphrase truth ratio (geometric), shown beside TOFU's answer paraphrase
            "truth_ratio_forget_qpara": _forget_truth_ratio(f["tr_qpara"]),
            "truth_ratio_retain": float(np.maximum(0, 1 - r["tr"]).mean()),
            "extraction_strength_forget": float(f["es"].mean()),
            "exact_memorization_forget": float(f["em"].mean()),
            "model_utility": metrics.harmonic_mean(util_parts),
            "mink_auc": metrics.auc(mink_f, mink_h),
            # loss-threshold MIA calibrated on retain authors (members) vs never-trained authors
            "mia_loss": metrics.mia_loss_threshold(model, x["forget_A"], x["retain_A"], x["holdout_A"],
                                                   self.objective),
            "tr_values_forget": f["tr"],
            "tr_values_forget_qpara": f["tr_qpara"],
            "margins_forget": f["margin"],
            "margins_retain": r["margin"],
            "margins_test": a["margin"],
            "margins_val": _answer_stats(model, *x["add_val"])[3].numpy(),
        }
        if original is not None:
            out["retain_kl"] = metrics.retain_kl(original, model, x["retain_A"], self.objective)
        if probes:
            for bits in (8, 4):
                qm = quantize_rtn(model, bits)
                qf = self._authors(qm, x, "forget")
                out[f"int{bits}_acc_forget"] = float(qf["acc"].mean())
                out[f"int{bits}_truth_ratio_forget"] = _forget_truth_ratio(qf["tr"])
                out[f"int{bits}_margins_forget"] = qf["margin"]
            for name, qm in (("bnb4", quantize_bnb_fp4(model)), ("bnb8", quantize_llm_int8(model))):
                qf = self._authors(qm, x, "forget")
                out[f"{name}_acc_forget"] = float(qf["acc"].mean())
                out[f"{name}_truth_ratio_forget"] = _forget_truth_ratio(qf["tr"])
                out[f"{name}_margins_forget"] = qf["margin"]
            fa = x["forget_A"]
            # exact match on the forget answers held out from the 10 relearning steps
            out["relearn_acc_forget"] = np.array(relearn(
                model, fa, lambda m, d: _exact_match(m, *d), fraction=0.1, steps=10, lr=0.05,
                objective=self.objective, seed=setup.split_seed))
        return out

    def aggregate_extra(self, arm: list[dict], reference: list[dict]) -> dict:
        """Forget quality (KS p-value vs the pooled reference truth ratios, median over models)
        and privleak relative to the reference oracles' Min-K% AUC."""
        out = {}
        for suffix in ("", "_qpara"):
            key = "tr_values_forget" + suffix
            if all(key in m for m in arm + reference):
                ref_tr = np.concatenate([r[key] for r in reference])
                fq = [metrics.ks_forget_quality(a[key], ref_tr) for a in arm]
                out["forget_quality" + suffix] = float(np.median(fq))
        if all("mink_auc" in m for m in arm + reference):  # not measured by tuning_evaluate
            auc_u = float(np.mean([a["mink_auc"] for a in arm]))
            auc_o = float(np.mean([r["mink_auc"] for r in reference]))
            out["privleak"] = ((1 - auc_u) - (1 - auc_o)) / max(1 - auc_o, 1e-9) * 100
        return out

    # --- tuning budget: 6 configurations per method ------------------------------------------
    def grid(self, method: str) -> list[dict]:
        fo = dict(optimizer="adamw", batch_size=32, weight_decay=0.01)
        grids = {
            "finetune": [dict(lr=lr, epochs=e, optimizer="adamw", batch_size=256, weight_decay=0.01)
                         for lr in (1e-3, 3e-3, 1e-2) for e in (1, 3)],
            "gradient_ascent": [dict(lr=lr, epochs=e, **fo) for lr in (1e-4, 1e-3, 1e-2) for e in (2, 5)],
            "grad_diff": [dict(lr=lr, epochs=5, retain_loss=rl, **fo) for lr in (1e-4, 1e-3, 1e-2) for rl in ("nll", "kl")],
            "npo": [dict(lr=lr, epochs=e, beta=0.1, **fo) for lr in (1e-4, 1e-3, 1e-2) for e in (2, 5)],
            "simnpo": [dict(lr=lr, epochs=e, beta=4.5, **fo) for lr in (1e-4, 1e-3, 1e-2) for e in (2, 5)],
            "ssd": [dict(alpha=a, lam=lam, batch_size=64) for a, lam in ((10, 1), (5, 1), (50, 1), (100, 1), (10, 0.1), (50, 0.1))],
            "l1_sparse": [dict(alpha=al, lr=lr, epochs=1, optimizer="adamw", batch_size=256, weight_decay=0.01)
                          for al in (1e-5, 1e-4, 1e-3) for lr in (1e-3, 3e-3)],
            "prune_then_unlearn": [dict(sparsity=s, unlearner="finetune",
                                        unlearner_kwargs=dict(lr=lr, epochs=1, optimizer="adamw", batch_size=256))
                                   for s in (0.3, 0.5, 0.8) for lr in (1e-3, 3e-3)],
            "iau": [dict(lr=lr, batch_size=512) for lr in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)],
            "kfade": [dict(curvature=c, steps=st, kl_budget=eps, damping=dmp, batch_size=64) for c in ("ekfac", "kfac")
                      for st, eps, dmp in ((3, 0.02, 1e-5), (1, 0.05, None), (3, 0.05, 1e-4))],
            "representation_projection": [dict(dim=k, lr=lr, epochs=5, batch_size=32) for k in (2, 8, 16)
                                          for lr in (2e-4, 2e-2)],
        }
        if method not in grids:
            raise ValueError(f"Track B has no grid for method {method!r} (newton_step needs a dense GGN: "
                             f"small models only)")
        return grids[method]
