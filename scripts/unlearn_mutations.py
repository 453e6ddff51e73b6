"""Mutation check of the unlearning test suite (the unlearning-v2 issue, item 4): break one
metric, probe or method on purpose, run the unlearning tests, and confirm they go red.

    .venv/bin/python scripts/unlearn_mutations.py            # every mutation (~1-2 min each)
    .venv/bin/python scripts/unlearn_mutations.py fp4_identity npo_noop

Each mutation is applied inside the pytest process by this file acting as a pytest plugin
(``-p unlearn_mutations`` with STRUCTOPS_MUTATION=<name>), so the library itself is never edited.
A mutation that leaves the suite green is a hole in the tests: the script exits 1 and says which.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TESTS = ["tests/test_unlearn_methods.py", "tests/test_unlearn_metrics.py", "tests/test_unlearn_probes.py",
         "tests/test_unlearn_tracks.py::test_oracle_free_choice_uses_no_oracle_quantity",
         "tests/test_unlearn_tracks.py::test_track_a_variant_originals",
         "tests/test_unlearn_tracks.py::test_gradient_restriction_closed_form_matches_double_backprop",
         "tests/test_unlearn_tracks.py::test_protocol_runs_methods_on_their_variant_originals",
         "tests/test_unlearn_tracks.py::test_track_b_truth_ratio_uses_tofus_paraphrased_answer",
         "tests/test_unlearn_tracks.py::test_track_b_scored_path_equals_the_full_forward",
         "tests/test_unlearn_tracks.py::test_track_b_training_targets_are_consistent",
         "tests/test_unlearn_tracks.py::test_track_b_fit_check_and_answer_replacement_match_their_plain_forms"]


def _noop_method(name):
    def apply(unlearn):
        def noop(model, forget, retain=None, *, objective=None, inplace=False, seed=0, check=True, **hp):
            out = model if inplace else copy.deepcopy(model)
            out.unlearning_log = list(getattr(model, "unlearning_log", [])) + [
                {"method": name, "seconds": 0.0, "hparams": dict(hp)}]
            return out
        unlearn.METHODS[name] = noop
        setattr(unlearn, name, noop)
        setattr(unlearn.methods, name, noop)
    return apply


def _mutations():
    import numpy as np
    import torch

    def rtn_identity(unlearn):
        unlearn.probes.quantize_rtn = lambda model, bits=8: copy.deepcopy(model)

    def fp4_identity(unlearn):
        unlearn.probes.fp4_blockwise = lambda w, blocksize=64: w.detach().clone()

    def fp4_global_absmax(unlearn):  # one scale for the whole tensor instead of blocks of 64
        orig = unlearn.probes.fp4_blockwise
        unlearn.probes.fp4_blockwise = lambda w, blocksize=64: orig(w, blocksize=w.numel())

    def int8_no_outliers(unlearn):  # LLM.int8 without the mixed-precision decomposition
        orig = unlearn.probes.quantize_llm_int8
        unlearn.probes.quantize_llm_int8 = lambda model, threshold=6.0, skip=("lm_head", "head"): orig(
            model, threshold=float("inf"), skip=skip)

    def truth_ratio_arithmetic(unlearn):
        orig = unlearn.metrics.truth_ratio
        unlearn.metrics.truth_ratio = lambda p, c, mean="geometric": orig(p, c, mean="arithmetic")

    def klom_reversed(unlearn):
        orig = unlearn.metrics.klom
        unlearn.metrics.klom = lambda u, o: orig(o, u) if np.asarray(o).shape == np.asarray(u).shape else np.array(
            [unlearn.metrics.binned_kl(np.asarray(o)[:, i], np.asarray(u)[:, i]) for i in range(np.asarray(u).shape[1])])

    def warmup_off(unlearn):  # GradDiff / NPO / SimNPO without open-unlearning's warmup
        orig = unlearn.methods._train_loop
        unlearn.methods._train_loop = lambda *a, warmup_epochs=0.0, **k: orig(*a, warmup_epochs=0.0, **k)

    def relearn_scores_relearned(unlearn):  # v1's relearning score: on the relearned points too
        orig = unlearn.probes.relearn
        unlearn.probes.relearn = lambda *a, score_on="heldout", **k: orig(*a, score_on="all", **k)

    def oracle_free_uses_oracle(unlearn):  # the "oracle-free" choice secretly takes the oracle score
        from structops.unlearn import protocol

        protocol.oracle_free_choice = lambda rows, originals, tol: min(rows, key=lambda r: r["score"])["config"]

    def svc_one_feature(unlearn):  # the all-features SVC MIA silently uses the confidence feature only
        orig = unlearn.metrics.mia_svc_all
        unlearn.metrics.mia_svc_all = lambda *a, **k: {f: v for f, v in orig(*a, **k).items() if f == "confidence"}

    def mrp_forget_init(unlearn):  # MRP back to the forget-state initialisation
        orig = unlearn.methods._mrp_init
        unlearn.methods._mrp_init = lambda f, r, dim, init, rv: orig(f, r, dim, "forget_pca", rv)

    def sparse_no_rewind(unlearn):  # "sparse original" = the dense model masked, not rewound and retrained
        from structops.unlearn.tracks import track_a

        orig = track_a.TrackA.train_variant

        def masked_only(self, data, seed, variant, dense=None):
            if not variant.startswith("sparse-"):
                return orig(self, data, seed, variant, dense)
            model = dense if dense is not None else self.train(data, seed)
            for m, mask in unlearn.methods.magnitude_masks(model, float(variant.split("-", 1)[1])).items():
                m.weight.data.mul_(mask)
            return model
        track_a.TrackA.train_variant = masked_only

    def gr_ignored(unlearn):  # IAU's gradient restriction silently dropped from training
        from structops.unlearn.tracks import track_a

        orig = track_a.train_lbfgs
        track_a.train_lbfgs = lambda model, data, l2=track_a.L2, max_iter=1500, gradient_restriction=0.0: orig(
            model, data, l2, max_iter, 0.0)

    def gr_closed_form_tanh(unlearn):  # the closed-form restriction with tanh' = 1 - h, not 1 - h²
        from structops.unlearn.tracks import track_a

        def wrong(model, stacked):
            xb, onehot, weight = stacked
            W1, b1, W2, b2 = model.fc1.weight, model.fc1.bias, model.fc2.weight, model.fc2.bias
            h = torch.tanh(xb @ W1.T + b1)
            d2 = (torch.softmax(h @ W2.T + b2, -1) - onehot) * weight
            d1 = (d2 @ W2) * (1 - h)
            return (torch.linalg.vector_norm(d1.transpose(1, 2) @ xb, dim=(1, 2))
                    + torch.linalg.vector_norm(d1.sum(1), dim=1)
                    + torch.linalg.vector_norm(d2.transpose(1, 2) @ h, dim=(1, 2))
                    + torch.linalg.vector_norm(d2.sum(1), dim=1)).mean()
        track_a.gradient_restriction_mlp = wrong

    def gr_batches_equal_weight(unlearn):  # the short last restriction batch weighted as a full one
        from structops.unlearn.tracks import track_a

        orig = track_a.stack_restriction_batches

        def equal(x, y, batches, n_classes=10):
            xb, onehot, weight = orig(x, y, batches, n_classes)
            return xb, onehot, (weight > 0).to(weight.dtype) / track_a.GR_BATCH
        track_a.stack_restriction_batches = equal

    def variants_ignored(unlearn):  # the protocol runs every method on the ordinary original
        from structops.unlearn import protocol

        protocol.original_variant = lambda method, config: "dense"

    def omp_prunes_head(unlearn):  # OMP prunes the output head too (v1's behaviour)
        unlearn.methods._output_head = lambda model: None

    def truth_ratio_question_paraphrase(unlearn):  # v1: TR on template B with plain answers
        from structops.unlearn.tracks.track_b import TrackB

        def authors(self, model, x, which, qpara=False):
            return self._qa(model, x[f"{which}_A"], x[f"{which}_perturbed"],
                            (x[f"{which}_B"], x[f"{which}_perturbed"]), qpara=x[f"{which}_B"] if qpara else None)
        TrackB._authors = authors

    def patch_facts(edit):  # Track B's data with `edit(fd)` applied after generation
        from structops.unlearn.tracks import synthetic_facts
        import structops.unlearn.tracks.track_b as tb

        orig = synthetic_facts.make_facts

        def make(*a, **k):
            fd = orig(*a, **k)
            edit(fd)
            return fd
        synthetic_facts.make_facts = tb.make_facts = make

    def wording_trained_on_authors(unlearn):  # the answer paraphrase becomes a trained template
        def edit(fd):
            fd.general_para = tuple(torch.cat([g, p]) for g, p in zip(fd.general_para, fd.author_para))
        patch_facts(edit)

    def namely_scored(unlearn):  # the answer wording's "namely" scored: contradictory targets
        def edit(fd):
            namely = fd.vocab["namely"]
            ids, labels = fd.general_para
            labels = labels.clone()
            rows, cols = torch.nonzero(ids == namely, as_tuple=True)
            labels[rows, cols - 1] = namely
            fd.general_para = (ids, labels)
        patch_facts(edit)

    def scored_path_skips_final_norm(unlearn):  # TinyLM's scored path forgets the final LayerNorm
        from structops.unlearn.tracks.tiny_lm import TinyLM

        full = TinyLM.forward

        def forward(self, ids, scored=None):
            if scored is None:
                return full(self, ids)
            x = self.tok(ids) + self.pos(torch.arange(ids.shape[1]))
            for blk in self.blocks:
                x = blk(x)
            return self.head(x[scored])  # same shape as the right answer, wrong values
        TinyLM.forward = forward

    def fit_check_exits_early(unlearn):  # the fit check stops training before the data fit
        import structops.unlearn.tracks.track_b as tb

        def fits(model, ids, labels, need, batch_size=2048):
            lab = labels[:batch_size]
            return tb._token_accuracy(model, ids[:batch_size], lab, batch_size) >= need  # first batch only
        tb._fits = fits

    def fit_screen_counts_near_ties(unlearn):  # the screen counts every miss, near ties included
        import structops.unlearn.tracks.track_b as tb

        @torch.no_grad()
        def clear_misses(model, ids, labels):
            mask = labels != tb.IGNORE
            logits = tb._scored_logits(model, ids, mask).float()
            return int((logits.argmax(-1) != labels[mask]).sum())
        tb._clear_misses = clear_misses

    def shared_statistics_ignore_forget(unlearn):  # SSD/IAU/MRP cache keys miss the forget set
        orig = unlearn.methods._data_key

        def key(model, datasets, objective, what, batch_size, cache):
            keep = tuple(d for d in datasets if d is not datasets[0 if what == "mrp-hidden-states" else 1])
            return orig(model, keep, objective, what, batch_size, cache)
        unlearn.methods._data_key = key

    def answer_replaced_off_by_one(unlearn):  # perturbed answers written one input column early
        import structops.unlearn.tracks.track_b as tb

        def replace(ids, labels, answers):
            mask = labels != tb.IGNORE
            flat = torch.tensor([t for a in answers for t in a], dtype=ids.dtype)
            ids, labels = ids.clone(), labels.clone()
            labels[mask] = flat
            ids[mask] = flat
            return ids, labels
        tb._replace_answer = replace

    muts = {
        "fit_check_exits_early": fit_check_exits_early,
        "fit_screen_counts_near_ties": fit_screen_counts_near_ties,
        "shared_statistics_ignore_forget": shared_statistics_ignore_forget,
        "answer_replaced_off_by_one": answer_replaced_off_by_one,
        "scored_path_skips_final_norm": scored_path_skips_final_norm,
        "truth_ratio_question_paraphrase": truth_ratio_question_paraphrase,
        "namely_scored": namely_scored,
        "wording_trained_on_authors": wording_trained_on_authors,
        "sparse_no_rewind": sparse_no_rewind,
        "gr_ignored": gr_ignored,
        "gr_closed_form_tanh": gr_closed_form_tanh,
        "gr_batches_equal_weight": gr_batches_equal_weight,
        "variants_ignored": variants_ignored,
        "omp_prunes_head": omp_prunes_head,
        "mrp_forget_init": mrp_forget_init,
        "svc_one_feature": svc_one_feature,
        "warmup_off": warmup_off,
        "relearn_scores_relearned": relearn_scores_relearned,
        "oracle_free_uses_oracle": oracle_free_uses_oracle,
        "rtn_identity": rtn_identity,
        "fp4_identity": fp4_identity,
        "fp4_global_absmax": fp4_global_absmax,
        "int8_no_outliers": int8_no_outliers,
        "truth_ratio_arithmetic": truth_ratio_arithmetic,
        "klom_reversed": klom_reversed,
    }
    from structops import unlearn

    for name in unlearn.METHODS:
        muts[f"{name}_noop"] = _noop_method(name)
    return muts


# ---- pytest plugin side ----------------------------------------------------------------------
def pytest_configure(config):
    name = os.environ.get("STRUCTOPS_MUTATION")
    if not name:
        return
    from structops import unlearn

    _mutations()[name](unlearn)


# ---- driver ----------------------------------------------------------------------------------
def main(argv) -> int:
    names = argv or list(_mutations())
    holes = []
    print(f"{'mutation':32s} {'result':10s} seconds")
    for name in names:
        t0 = time.perf_counter()
        env = dict(os.environ, STRUCTOPS_MUTATION=name, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-p", "unlearn_mutations",
                            *TESTS], cwd=ROOT, env=env, capture_output=True, text=True)
        # a mutation that cannot be applied (pytest INTERNALERROR) proves nothing: report it
        broken = "INTERNALERROR" in r.stdout + r.stderr
        caught = r.returncode != 0 and not broken
        if not caught:
            holes.append(name)
        last = (r.stdout.strip().splitlines() or [""])[-1]
        verdict = "BROKEN" if broken else ("caught" if caught else "MISSED")
        print(f"{name:32s} {verdict:10s} {time.perf_counter() - t0:6.1f}  {last[:90]}")
    if holes:
        print(f"\n{len(holes)} mutation(s) left the unlearning tests green or could not be applied: {', '.join(holes)}")
        return 1
    print(f"\nall {len(names)} mutations caught")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
