"""Benchmark tracks and the protocol: data, caching, determinism, the CLI."""

import json
import os
import sys
import time

import numpy as np
import pytest
import torch

from structops.unlearn import bench, protocol
from structops.unlearn.tracks.track_a import TrackA
from structops.unlearn.tracks.track_b import TrackB


@pytest.mark.parametrize("scenario", TrackA.scenarios)
def test_track_a_setups(scenario):
    t = TrackA()
    s = t.setup(scenario, 1)
    n_train = s.train[0].shape[0]
    assert n_train == 1203 and s.test[0].shape[0] + s.val[0].shape[0] == 594
    assert s.forget[0].shape[0] + s.retain[0].shape[0] == n_train
    if scenario == "random":
        assert s.forget[0].shape[0] == 120
    if scenario == "class":
        assert (s.forget[1] == 8).all() and not (s.retain[1] == 8).any()  # fresh split 1 = digit 8
    if scenario == "mislabel":
        true = s.extra["forget_true_labels"][1]
        assert s.forget[0].shape[0] == 60 and (s.forget[1] != true).all()
    # deterministic
    s2 = t.setup(scenario, 1)
    assert all(torch.equal(a, b) for a, b in zip(s.forget, s2.forget))


def _batch_grad_norm(model, data):
    from structops.unlearn.tracks.track_a import GR_BATCH

    x, y = data
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    out, total, nb = model(x), 0.0, 0
    for i in range(0, len(y), GR_BATCH):
        b = order[i:i + GR_BATCH]
        g = torch.autograd.grad(torch.nn.functional.cross_entropy(out[b], y[b]), list(model.parameters()),
                                retain_graph=True)
        total += sum(float(t.norm()) for t in g)
        nb += 1
    return total / nb


def test_track_a_variant_originals():
    """sparse-<rate>: the hidden layer pruned to exactly the rate, the head dense, the survivors
    retrained from the seed's initialisation (not the dense weights masked); gr-<alpha>: the
    mini-batch gradient norms IAU restricts shrink (effect size, at a large alpha); both
    deterministic; an unknown variant is a clear error."""
    t = TrackA(max_iter=300)
    s = t.setup("mislabel", 1)
    dense = t.train(s.train, 3)
    sparse = t.train_variant(s.train, 3, "sparse-0.8")
    w = sparse.fc1.weight.detach()
    assert int((w == 0).sum()) == round(0.8 * w.numel()) and (sparse.fc2.weight != 0).all()
    kept = w != 0
    assert not torch.allclose(w[kept], dense.fc1.weight[kept], atol=1e-3)  # rewound and retrained
    assert torch.equal(t.train_variant(s.train, 3, "sparse-0.8").fc1.weight, w)
    gr = t.train_variant(s.train, 3, "gr-0.1")
    assert _batch_grad_norm(gr, s.train) < 0.7 * _batch_grad_norm(dense, s.train)
    with pytest.raises(ValueError, match="unknown original variant"):
        t.train_variant(s.train, 3, "lottery-3")
    assert TrackA().supports_variant("sparse-0.95") and not TrackB().supports_variant("gr-0.005")


def test_gradient_restriction_closed_form_matches_double_backprop():
    """The stacked closed-form batch gradients IAU's restriction trains the gr originals with
    equal the double-backprop definition — value and gradient w.r.t. every parameter, in
    float64, with a short last batch (1203 = 9 x 128 + 51), at a trained-ish and a random point."""
    from structops.unlearn.tracks import track_a as ta

    t = TrackA()
    x, y = t.setup("mislabel", 1).train
    x = x.double()
    batches = ta.restriction_batches(len(y))
    assert [len(b) for b in batches] == [128] * 9 + [51]
    stacked = ta.stack_restriction_batches(x, y, batches)
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = ta.DigitsMLP().double()
        with torch.no_grad():
            for p in m.parameters():
                p.mul_(1 + 2 * seed)  # seed 1: larger weights, saturated tanh units
        params = list(m.parameters())
        ref = ta.gradient_restriction_autograd(m, params, x, y, batches)
        got = ta.gradient_restriction_mlp(m, stacked)
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=0)
        for g_ref, g_got in zip(torch.autograd.grad(ref, params), torch.autograd.grad(got, params)):
            torch.testing.assert_close(g_got, g_ref, rtol=1e-10, atol=1e-14)


def test_protocol_runs_methods_on_their_variant_originals(tmp_path):
    """prune_then_unlearn starts from sparse originals (and is also scored against sparse
    oracles), iau from gradient-restriction-trained ones; the variant originals are reported as
    arms of their own; a track without variants falls back to the ordinary original and says so."""

    class QuickA(TrackA):
        def grid(self, method):
            return super().grid(method)[-1:]  # one config per method: sparsity 0.95 / the largest lr

    cfg = protocol.ProtocolConfig(seeds=2, tune_seeds=1, tune_oracles=2, fresh_splits=(1,), bootstrap=0,
                                  stability_resamples=0, methods=("prune_then_unlearn", "iau"), workers=1,
                                  cache_dir=str(tmp_path), probes=False, progress=False)
    r = protocol.run_protocol(QuickA(max_iter=150), "mislabel", cfg)
    v = r["original_variants"]
    assert v["prune_then_unlearn"]["chosen"] == "sparse-0.95" and v["iau"]["chosen"] == "gr-0.005"
    rep = r["report"]["1"]
    for arm in ("original@sparse-0.95", "original@gr-0.005"):
        assert arm in rep
    assert "vs_sparse_oracles" in rep["prune_then_unlearn"] and "vs_sparse_oracles" in rep["original@sparse-0.95"]
    # a sparse original really is less accurate on the test set than the dense one here
    assert rep["original@sparse-0.95"]["acc_test"] < rep["original"]["acc_test"]
    files = os.listdir(tmp_path / "trackA")
    assert sum(f.startswith("original@sparse-0.95") and f.endswith(".pt") for f in files) == 1 + 2
    assert sum(f.startswith("oracle@sparse-0.95") and f.endswith(".pt") for f in files) == 2
    assert sum(f.startswith("original@gr-0.005") and f.endswith(".pt") for f in files) == 1 + 2
    table = bench.render_pooled(r)
    assert "| original@sparse-0.95 |" in table and "| arm (vs sparse oracles) |" in table

    class NoVariants(QuickA):
        variants = ()

    r = protocol.run_protocol(NoVariants(max_iter=150), "mislabel", cfg)
    assert r["original_variants"]["iau"] == {"chosen": "dense", "oracle_free": "dense",
                                             "unsupported_by_track": "gr-0.005"}
    assert not any(k.startswith("original@") for k in r["report"]["1"])
    assert "vs sparse oracles" not in bench.render_pooled(r)


def test_track_b_setup_and_metrics_on_untrained_model():
    t = TrackB()
    s = t.setup("forget05", 1)
    assert s.forget[0].shape[0] == 10 * 10 * 2  # 10 authors x 10 attributes x 2 templates
    fa = set(map(tuple, s.forget[0].tolist()))
    assert not fa & set(map(tuple, s.retain[0].tolist()))
    assert s.train[0].shape[0] == s.forget[0].shape[0] + s.retain[0].shape[0]
    torch.manual_seed(0)
    m = t.new_model()
    assert 100_000 <= sum(p.numel() for p in m.parameters()) <= 300_000
    e = t.evaluate(m, s, original=m, probes=True)
    assert 0 <= e["acc_forget"] <= 0.3 and 0 <= e["model_utility"] <= 1
    assert 0 <= e["mink_auc"] <= 1 and e["retain_kl"] == pytest.approx(0.0, abs=1e-6)
    assert e["relearn_acc_forget"].shape == (11,)
    assert 0 <= e["bnb4_acc_forget"] <= 1 and 0 <= e["bnb8_acc_forget"] <= 1 and "bnb4_margins_forget" in e
    extra = t.aggregate_extra([e], [e])
    assert extra["forget_quality"] == pytest.approx(1.0) and extra["privleak"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="small models only"):
        t.grid("newton_step")


def test_protocol_track_a_small(tmp_path):
    """Track A end to end with 2 seeds (the CI-sized run): the oracle arm sits on the reference
    oracles, the original is far from them, a second run reuses the cached models and gives
    identical numbers."""
    cfg = protocol.ProtocolConfig(seeds=2, tune_seeds=1, tune_oracles=2, fresh_splits=(1,), bootstrap=50,
                                  stability_resamples=20, methods=("finetune", "ssd", "newton_step"), workers=1,
                                  cache_dir=str(tmp_path), probes=True, progress=False)
    r1 = protocol.run_protocol(TrackA(), "mislabel", cfg)
    rep = r1["report"]["1"]
    # with 2 models per arm the Gaussian fits are noisy, but the separation is two orders
    assert 50 * rep["oracle"]["gklom_forget_p50"] < rep["original"]["gklom_forget_p50"]
    assert rep["original"]["acc_forget"] > 0.9 and rep["oracle"]["acc_forget"] < 0.2
    assert set(r1["chosen"]) == {"finetune", "ssd", "newton_step"}
    assert set(r1["chosen_oracle_free"]) == set(r1["chosen"]) and "never a retrained oracle" in r1["oracle_free_rule"]
    for m in ("finetune", "ssd", "newton_step"):
        for k in ("acc_forget", "retain_kl", "gklom_forget_p50", "int4_acc_forget", "relearn_gap", "relearn_acc_k",
                  "seconds", "mia_svc", "mia_svc_prob", "mia_svc_m_entropy", "bnb4_acc_forget", "bnb8_acc_forget",
                  "gklom_bnb4_forget_p50"):
            assert k in rep[m]
            assert k in rep[m + protocol.ORACLE_FREE_SUFFIX]
        # per-model forget margins (n models x n forget points) recorded for every arm
        pm = rep[m]["per_model_margins_forget"]
        assert len(pm) == 2 and len(pm[0]) == 60
    assert len(rep["_reference_margins_forget"]) == 2
    n_models = len([f for f in os.listdir(tmp_path / "trackA") if f.endswith(".pt")])
    assert n_models == 1 + 2 + 2 + 4  # tuning: 1 original + 2 oracles; report: 2 originals + 4 oracles
    # provenance, forget sets (disjoint), stability, CIs
    fs = r1["forget_sets"]
    assert len(fs["tuning"]) == 60 and len(fs["report"]) == 1 and not set(fs["tuning"]) & set(fs["report"][0])
    assert r1["provenance"]["commit"] is not None and "torch" in r1["provenance"]
    for m in ("finetune", "ssd", "newton_step"):
        st = r1["stability"][m]
        assert 0 <= st["chosen_share"] <= 1 and abs(sum(st["shares"].values()) - 1) < 1e-9
        lo, hi = rep[m]["ci"]["acc_forget"]
        assert lo <= rep[m]["acc_forget"] + 1e-12 and rep[m]["acc_forget"] <= hi + 1e-12
    assert "acc_forget" in r1["report_pooled"]["original"]
    r2 = protocol.run_protocol(TrackA(), "mislabel", cfg)
    assert r2["timing"]["models_s"] < 0.5 * r1["timing"]["models_s"] + 1
    for arm, s in r1["report"]["1"].items():  # deterministic given the seeds (timings aside)
        if arm.startswith("_"):
            continue
        for k, v in s.items():
            if k.startswith("seconds"):
                continue
            if isinstance(v, dict):  # the bootstrap CIs: seeded, so identical too
                for kk, vv in v.items():
                    assert np.allclose(vv, r2["report"]["1"][arm][k][kk]), (arm, k, kk)
            else:
                assert np.allclose(v, r2["report"]["1"][arm][k]), (arm, k)


def test_bench_cli_smoke(tmp_path, capsys):
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    rc = bench.main(["--track", "A", "--scenario", "class", "--seeds", "2", "--tune-seeds", "1", "--tune-oracles",
                     "2", "--fresh", "2", "--bootstrap", "20", "--stability", "10", "--methods",
                     "finetune,iau", "--workers", "1", "--cache", str(tmp_path / "c"), "--json", str(out_json),
                     "--png", str(out_png), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "oracle" in text and "original" in text and "gKLoM F" in text and "chosen configurations" in text
    data = json.loads(out_json.read_text())
    assert data["scenario"] == "class" and data["seeds"] == 2
    assert "pooled over the 2 fresh forget sets" in text and "stability" in text
    assert len(data["forget_sets"]["report"]) == 2
    pngs = list(tmp_path.glob("r*.png"))
    assert pngs and all(p.stat().st_size > 1000 for p in pngs)


def test_bench_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="--track must be A or B"):
        bench.main(["--track", "C", "--scenario", "x"])
    with pytest.raises(ValueError, match="scenarios"):
        bench.main(["--track", "A", "--scenario", "nope", "--cache", str(tmp_path)])
    with pytest.raises(ValueError, match="unknown method"):
        bench.main(["--track", "A", "--scenario", "class", "--methods", "magic", "--cache", str(tmp_path)])


@pytest.mark.slow
def test_track_a_mislabel_8_seeds_end_to_end(tmp_path, capsys):
    """The documented 8-seed command runs from an empty cache and writes a complete result.  Its
    wall clock is printed, not asserted (timings are measured in docs/UNLEARNING.md, never
    asserted in tests)."""
    t0 = time.perf_counter()
    rc = bench.main(["--track", "A", "--scenario", "mislabel", "--seeds", "8", "--cache", str(tmp_path),
                     "--json", str(tmp_path / "a.json"), "--png", str(tmp_path / "a.png"), "--no-progress"])
    res = json.loads((tmp_path / "a.json").read_text())
    assert rc == 0 and len(res["forget_sets"]["report"]) == 3 and (tmp_path / "a.png").stat().st_size > 0
    with capsys.disabled():
        print(f"\nTrack A mislabel, 8 seeds, empty cache: {time.perf_counter() - t0:.0f} s")


@pytest.mark.parametrize("track,scenario", [(TrackA(), sc) for sc in TrackA.scenarios] +
                         [(TrackB(), sc) for sc in TrackB.scenarios])
def test_forget_sets_disjoint_and_validation_separate(track, scenario):
    """Tuning (split 0) and reporting forget sets (1, 2, 3) share nothing, by construction; the
    tuning validation set is disjoint from the reported test set."""
    sets = [set(track.setup(scenario, s).forget_ids) for s in range(4)]
    assert all(len(x) > 0 for x in sets)
    for i in range(4):
        for j in range(i):
            assert not sets[i] & sets[j], (scenario, i, j)
    s = track.setup(scenario, 1)
    val = set(map(tuple, s.val[0].tolist()))
    test = set(map(tuple, s.test[0].tolist()))
    assert val and test and not val & test


def test_protocol_rejects_overlapping_forget_sets(tmp_path, monkeypatch):
    t = TrackA()
    real = t.setup

    def leaky(scenario, split):  # split 1 reuses split 0's forget set: must be refused
        return real(scenario, 0 if split == 1 else split)

    monkeypatch.setattr(t, "setup", leaky)
    cfg = protocol.ProtocolConfig(seeds=1, tune_seeds=1, tune_oracles=1, fresh_splits=(1,), methods=("finetune",),
                                  workers=1, cache_dir=str(tmp_path), progress=False)
    with pytest.raises(AssertionError, match="overlap"):
        protocol.run_protocol(t, "mislabel", cfg)


def test_oracle_free_choice_uses_no_oracle_quantity():
    """Hand-made tuning rows: the most forgetting configuration among those that keep validation
    accuracy within the tolerance of the originals'; the oracle-tuned score plays no part."""
    rows = [
        {"config": {"lr": 1}, "score": 0.0, "summary": {"acc_val": 0.95, "acc_forget": 0.50}},
        {"config": {"lr": 2}, "score": 9.0, "summary": {"acc_val": 0.945, "acc_forget": 0.20}},
        {"config": {"lr": 3}, "score": 5.0, "summary": {"acc_val": 0.90, "acc_forget": 0.00}},
    ]
    originals = [{"acc_val": 0.95}, {"acc_val": 0.95}]
    assert protocol.oracle_free_choice(rows, originals, 0.01) == {"lr": 2}
    assert protocol.oracle_free_choice(rows, originals, 0.1) == {"lr": 3}
    # nothing within tolerance: the best validation accuracy
    assert protocol.oracle_free_choice(rows, [{"acc_val": 0.99}], 0.01) == {"lr": 1}
    # tracks without a validation set use retain accuracy
    rows_b = [{"config": {"a": i}, "summary": {"acc_retain": v, "acc_forget": f}} for i, (v, f) in enumerate([(0.9, 0.3), (0.7, 0.0)])]
    assert protocol.oracle_free_choice(rows_b, [{"acc_retain": 0.9}], 0.05) == {"a": 0}


def test_model_cache_key_includes_recipe_and_code():
    """A changed training recipe (a track setting, or the track's source) gets a new cache path;
    an unchanged one the same path."""
    from structops.unlearn import protocol
    from structops.unlearn.tracks.track_a import TrackA

    data = (torch.zeros(3, 2), torch.zeros(3, dtype=torch.long))
    a, b = TrackA(), TrackA()
    pa = protocol._model_path("/c", a, "original", data, 0)
    assert pa == protocol._model_path("/c", b, "original", data, 0)
    c = TrackA(n_mislabel=61)
    assert protocol._model_path("/c", c, "original", data, 0) != pa
    recipe = a.recipe()
    assert "structops.unlearn.tracks.track_a" in recipe["sources"]
    assert "def train" in recipe["sources"]["structops.unlearn.tracks.track_a"]
    assert protocol._model_path("/c", a, "original", data, 1) != pa


def test_confidence_intervals_contain_their_estimates():
    """Every headline CI contains its point estimate (the percentile bootstrap of the Gaussian
    KLoM did not: resamples repeat models, shrink the fitted spread and bias KLoM upwards, so the
    KLoM intervals are jackknife ones)."""
    rng = np.random.default_rng(0)

    def model(shift):
        return {"acc_forget": float(rng.uniform(0, 0.1)), "margins_forget": rng.normal(shift, 1.0, 50),
                "margins_test": rng.normal(0.0, 1.0, 40)}

    ref = [model(0.0) for _ in range(16)]
    for shift in (0.0, 0.5, 3.0):  # oracle-like, near, far
        arm = [model(shift) for _ in range(8)]
        est = protocol.aggregate(arm, ref)
        ci = protocol._ci(protocol._bootstrap(arm, ref, 500, seed=1), est)
        for k in ("acc_forget", "gklom_forget_p50", "gklom_forget_p95", "gklom_test_p50"):
            lo, hi = ci[k]
            assert lo <= est[k] <= hi, (shift, k, lo, est[k], hi)
        assert ci["gklom_forget_p50"][1] - ci["gklom_forget_p50"][0] > 0


def test_docs_tables_render_from_results_and_stale_ones_are_caught(tmp_path, capsys):
    """bench --check-docs re-renders the v2 table of a results JSON and requires it verbatim in
    the doc: a doc holding the rendered table passes, one with a single changed number fails."""
    from structops.unlearn import bench

    res = os.path.join(os.path.dirname(__file__), "..", "docs", "results", "unlearn_v2_A_mislabel.json")
    with open(res) as f:
        table = bench.render_pooled(json.load(f))
    assert table.startswith("#### Track A / mislabel — v2") and "| finetune |" in table
    good = tmp_path / "good.md"
    good.write_text("intro\n\n" + table + "\n\nmore\n")
    assert bench.main(["--check-docs", str(good), res]) == 0
    bad = tmp_path / "bad.md"
    bad.write_text(table.replace("| finetune | ", "| finetune | 9", 1))
    assert bench.main(["--check-docs", str(bad), res]) == 1
    assert "STALE" in capsys.readouterr().out


def test_bench_all_means_every_method_with_a_grid():
    """`--methods all` runs every method a track can tune (a hand-kept list dropped K-FADE from
    Track B before)."""
    from structops.unlearn.methods import METHODS

    assert [m for m in METHODS if bench.track_has_grid(TrackA(), m)] == list(METHODS)
    on_b = [m for m in METHODS if bench.track_has_grid(TrackB(), m)]
    assert "kfade" in on_b and "newton_step" not in on_b and len(on_b) == len(METHODS) - 1


class _Bigram(torch.nn.Module):
    """A model whose next-token distribution depends only on the current token: log P(b | a) =
    log_softmax(table[a])[b], so every answer probability can be computed by hand."""

    def __init__(self, vocab: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(2 * torch.randn(vocab, vocab, generator=g, dtype=torch.float64))

    def forward(self, ids):
        return self.table[ids]


def test_track_b_training_targets_are_consistent():
    """No two training rows of Track B may ask for different next tokens after the same prefix:
    such a contradiction cannot be fitted, so the originals never reach the training-accuracy
    stop and every model trains for all its epochs (the answer wording once scored ``namely``
    after the same ``... ? ->`` its plain row answers).  Checked on every scored position of
    the originals' training set; it also needs the originals' data to fit."""
    t = TrackB()
    s = t.setup("forget05", 1)
    ids, labels = s.train
    target = {}
    for row, lab in zip(ids.tolist(), labels.tolist()):
        for pos, want in enumerate(lab):
            if want != -100:
                prev = target.setdefault(tuple(row[:pos + 1]), want)
                assert prev == want, ("contradictory targets after", row[:pos + 1], prev, want)
    assert len(target) >= ids.shape[0]


def test_track_b_truth_ratio_uses_tofus_paraphrased_answer():
    """TOFU's truth ratio, hand-computed: the paraphrased correct *answer* (``-> namely ANSWER``)
    against the perturbed answers in the same wording, each scored by its length-normalised
    probability, the perturbed ones combined by a geometric mean.  With a bigram model the
    answer's tokens are scored after "namely" (paraphrased answer) or after "->" (v1's
    question paraphrase), so either substitution, or an arithmetic mean, gives other values."""
    t = TrackB()
    s = t.setup("forget05", 1)
    fd = t.facts
    v = fd.vocab
    model = _Bigram(len(v))
    logp = torch.log_softmax(model.table.detach(), -1)

    def mean_lp(prefix_tok, ans):  # answer tokens scored after prefix_tok, then chained
        toks = [prefix_tok, *ans]
        return float(sum(logp[a, b] for a, b in zip(toks[:-1], toks[1:])) / len(ans))

    forget_rows = np.nonzero(np.isin(fd.author_of_row, s.forget_ids))[0]
    want, want_q = [], []
    for i in forget_rows:
        ans, pert = fd.author_answers[i], fd.author_perturbed[i]
        base = mean_lp(v["namely"], ans)
        want.append(np.exp(np.mean([mean_lp(v["namely"], p) for p in pert]) - base))
        want_q.append(np.exp(np.mean([mean_lp(v["->"], p) for p in pert]) - mean_lp(v["->"], ans)))
    e = t.evaluate(model, s)
    assert np.allclose(e["tr_values_forget"], want, rtol=1e-5)
    assert np.allclose(e["tr_values_forget_qpara"], want_q, rtol=1e-5)
    assert not np.allclose(want, want_q, rtol=1e-2)  # the two definitions differ on this model
    w = np.array(want)
    assert e["truth_ratio_forget"] == pytest.approx(float(np.minimum(w, 1 / w).mean()), rel=1e-5)
    # the wording is general language: trained on world facts and additions, never on an author
    namely = v["namely"]
    author_rows = {tuple(r) for q in fd.author_q.values() for r in q[0].tolist()}
    train_rows = [tuple(r) for r in s.train[0].tolist()]
    with_wording = [r for r in train_rows if namely in r]
    assert len(with_wording) == fd.general_para[0].shape[0] > 120
    assert not any(r in author_rows for r in with_wording)
    assert not any(namely in r for r in author_rows)
    assert not {tuple(r) for r in fd.author_para[0].tolist()} & set(train_rows)
    # the oracle's training data (retain) keeps the wording too: it is not forget data
    assert sum(namely in r for r in s.retain[0].tolist()) == len(with_wording)


def test_track_b_scored_path_equals_the_full_forward():
    """TinyLM's scored path (columns after the last answer dropped, head on the answer rows only)
    must give forward(ids)[mask]'s values, and the training loss / measurements built on it must
    equal the ones computed from the full logits through CausalLM."""
    from structops.unlearn.tracks import track_b as tb

    t = TrackB()
    torch.manual_seed(0)
    model = t.new_model().double()
    for p in model.parameters():  # a non-trivial model: every position's logits differ
        p.data.add_(0.2 * torch.randn_like(p))
    s = t.setup("forget05", 0)
    ids, labels = s.train[0][:300], s.train[1][:300]
    mask = labels != tb.IGNORE
    assert mask[:, -1].sum() == 0  # the trailing columns really are cut, so the test sees the truncation
    full = model(ids)
    scored = model(ids, scored=mask)
    assert scored.shape == (int(mask.sum()), full.shape[-1])
    torch.testing.assert_close(scored, full[mask], rtol=1e-12, atol=1e-12)
    # CausalLM.nll takes the scored path for TinyLM: loss and gradients equal the full forward's
    logp = torch.log_softmax(full, -1)
    tok_lp = logp.gather(-1, labels.masked_fill(~mask, 0)[..., None])[..., 0] * mask
    tok_nll = -tok_lp
    s_nll, n_nll = t.objective.nll(model, (ids, labels))
    torch.testing.assert_close(s_nll, tok_nll.sum(1), rtol=1e-12, atol=1e-12)
    assert torch.equal(n_nll, mask.sum(1).to(n_nll.dtype))
    g_scored = torch.autograd.grad(s_nll.sum(), model.head.weight)[0]
    g_full = torch.autograd.grad(tok_nll.sum(), model.head.weight)[0]
    torch.testing.assert_close(g_scored, g_full, rtol=1e-10, atol=1e-12)
    lp, correct, m, margin = tb._answer_stats(model, ids, labels)
    torch.testing.assert_close(lp.double(), tok_lp.sum(1) / mask.sum(1), rtol=1e-6, atol=1e-6)
    assert torch.equal(correct, (logp.argmax(-1) == labels) & mask)
    from structops.unlearn import metrics

    assert tb._token_accuracy(model, ids, labels) == pytest.approx(metrics.accuracy(model, (ids, labels), t.objective))
    with pytest.raises(ValueError, match="scored"):
        model(ids, scored=mask.int())


def test_track_b_fit_check_and_answer_replacement_match_their_plain_forms():
    """The training fit check (_fits) stops early but must take the same decision as
    _token_accuracy(...) >= need on every threshold, including ones decided only by the last
    batch; _replace_answer (vectorised) must write each row's tokens where the per-row loop does."""
    from structops.unlearn.tracks import track_b as tb

    t = TrackB()
    torch.manual_seed(0)
    model = t.new_model()
    s = t.setup("forget05", 0)
    ids, labels = s.train[0][:700], s.train[1][:700]
    # a model that gets the first rows' answers right and the rest mostly wrong: accuracy is
    # decided late, so an early exit that miscounts would flip the decision
    with torch.no_grad():
        model.head.bias.zero_()
    acc = tb._token_accuracy(model, ids, labels, batch_size=128)
    for need in (0.0, acc / 2, acc, acc + 1e-9, 0.5, 0.999, 1.0):
        assert tb._fits(model, ids, labels, need, batch_size=128) == (acc >= need), need
    # a trained-on-these-rows stand-in: copy the true answer into a perfect "model"
    class Oracle(torch.nn.Module):
        supports_scored_positions = True

        def forward(self, x, scored):
            rows = [torch.nonzero(scored[i])[:, 0] for i in range(x.shape[0])]
            tgt = torch.cat([x[i, r + 1] for i, r in enumerate(rows)])
            wrong = torch.arange(tgt.numel()) % 97 == 0  # about 1% of the tokens wrong
            tgt = torch.where(wrong, (tgt + 1) % 400, tgt)
            return torch.nn.functional.one_hot(tgt, 428).float()
    acc = tb._token_accuracy(Oracle(), ids, labels, batch_size=128)
    assert 0.98 < acc < 1.0
    for need in (acc, acc + 1e-9, 0.999, 0.98):
        assert tb._fits(Oracle(), ids, labels, need, batch_size=128) == (acc >= need), need
    # the screen (first rows in a batch of their own) may only say no when the exact pass would
    for m in (model, Oracle()):
        acc = tb._token_accuracy(m, ids, labels, batch_size=128)
        for need in (0.0, acc / 2, acc, acc + 1e-9, 0.5, 0.98, 0.999, 1.0):
            for rows in (0, 16, 64, 700):
                assert tb._fits(m, ids, labels, need, batch_size=128, screen_rows=rows) == (acc >= need), (need, rows)

    # _clear_misses counts a miss only when the label's logit trails the top one by more than
    # SCREEN_MARGIN: a near tie (which another batching could flip) is not certain
    class Trailing(torch.nn.Module):
        supports_scored_positions = True

        def __init__(self, gap):
            super().__init__()
            self.gap = gap

        def forward(self, x, scored):
            rows = [torch.nonzero(scored[i])[:, 0] for i in range(x.shape[0])]
            tgt = torch.cat([x[i, r + 1] for i, r in enumerate(rows)])
            out = torch.nn.functional.one_hot(tgt, 428).float()
            wrong = torch.arange(tgt.numel()) % 5 == 0
            out[wrong, (tgt[wrong] + 1) % 400] = 1.0 + self.gap  # another token leads by `gap`
            return out
    n_wrong = (torch.arange(int((labels[:64] != tb.IGNORE).sum())) % 5 == 0).sum().item()
    assert tb._clear_misses(Trailing(2 * tb.SCREEN_MARGIN), ids[:64], labels[:64]) == n_wrong > 0
    assert tb._clear_misses(Trailing(0.5 * tb.SCREEN_MARGIN), ids[:64], labels[:64]) == 0

    answers = [[(7 * i + j) % 300 for j in range(int(n))] for i, n in enumerate((labels != tb.IGNORE).sum(1))]
    new_ids, new_labels = tb._replace_answer(ids, labels, answers)
    ref_ids, ref_labels = ids.clone(), labels.clone()
    for i, ans in enumerate(answers):
        for j, pos in enumerate(torch.nonzero(labels[i] != tb.IGNORE)[:, 0].tolist()):
            ref_ids[i, pos + 1], ref_labels[i, pos] = ans[j], ans[j]
    assert torch.equal(new_ids, ref_ids) and torch.equal(new_labels, ref_labels)
    assert not torch.equal(new_ids, ids)  # it changed something
    with pytest.raises(ValueError, match="one replacement token per scored position"):
        tb._replace_answer(ids, labels, [a + [1] for a in answers])


def test_bundled_kfade_jobs_give_the_unbundled_results(tmp_path, monkeypatch):
    """The protocol runs K-FADE's configurations on one original as one job sharing a curvature
    cache (protocol._bundle); the tuning and report numbers equal those of one job per
    configuration."""
    cfg = protocol.ProtocolConfig(seeds=2, tune_seeds=2, tune_oracles=2, fresh_splits=(1,), bootstrap=0,
                                  stability_resamples=0, methods=("kfade",), workers=1, cache_dir=str(tmp_path),
                                  probes=False, progress=False)
    sizes = []
    real_bundle = protocol._bundle

    def recording(jobs):
        out = real_bundle(jobs)
        sizes.append((len(jobs), len(out)))
        return out

    monkeypatch.setattr(protocol, "_bundle", recording)
    bundled = protocol.run_protocol(TrackA(), "mislabel", cfg)
    n_configs = len(TrackA().grid("kfade"))
    assert sizes[0][0] - sizes[0][1] == 2 * (n_configs - 1)  # tuning: the 6 configs of each of 2 originals merged
    monkeypatch.setattr(protocol, "_bundle", lambda jobs: jobs)
    separate = protocol.run_protocol(TrackA(), "mislabel", cfg)
    for a, b in zip(bundled["tuning"]["kfade"], separate["tuning"]["kfade"]):
        assert a["config"] == b["config"] and a["score"] == b["score"]
    assert bundled["chosen"] == separate["chosen"]
    for arm, s in bundled["report"]["1"].items():
        if arm.startswith("_"):
            continue
        for k, v in s.items():
            if not k.startswith("seconds") and not isinstance(v, dict):
                assert np.array_equal(np.asarray(v), np.asarray(separate["report"]["1"][arm][k])), (arm, k)


class TwoConfigTrackA(TrackA):
    """Track A with each method's last two configurations (module level: pool workers unpickle it)."""

    def grid(self, method):
        return super().grid(method)[-2:]


def test_one_queue_protocol_in_a_pool_equals_the_in_process_run(tmp_path):
    """run_protocol queues training, tuning and the report's method-free jobs at once (no phase
    barriers): in a 2-worker pool from an empty cache — tuning jobs waiting for their models,
    variant originals waiting for their dense models — every number equals the in-process run's."""
    def run(workers, cache):
        cfg = protocol.ProtocolConfig(seeds=2, tune_seeds=1, tune_oracles=2, fresh_splits=(1, 2), bootstrap=0,
                                      stability_resamples=0, methods=("iau", "prune_then_unlearn", "ssd"),
                                      workers=workers, cache_dir=str(tmp_path / cache), probes=False, progress=False)
        return protocol.run_protocol(TwoConfigTrackA(max_iter=150), "mislabel", cfg)

    pooled, alone = run(2, "pool"), run(1, "alone")
    assert pooled["chosen"] == alone["chosen"] and pooled["tuning"].keys() == alone["tuning"].keys()
    for m in pooled["tuning"]:
        assert [r["score"] for r in pooled["tuning"][m]] == [r["score"] for r in alone["tuning"][m]]
    assert pooled["report"].keys() == alone["report"].keys() == {"1", "2"}
    for split, arms in pooled["report"].items():
        assert arms.keys() == alone["report"][split].keys()
        for arm, summ in arms.items():
            if arm.startswith("_"):
                continue
            for k, v in summ.items():
                if not k.startswith("seconds") and not isinstance(v, dict):
                    assert np.array_equal(np.asarray(v), np.asarray(alone["report"][split][arm][k])), (split, arm, k)
    assert sorted(os.listdir(tmp_path / "pool" / "trackA")) == sorted(os.listdir(tmp_path / "alone" / "trackA"))


def test_a_failed_training_job_releases_the_jobs_waiting_for_its_model(tmp_path, monkeypatch):
    """A training job that raises leaves a .failed marker: jobs queued behind it that wait for
    its model (_wait_for) raise at once instead of waiting; a retry clears the marker."""

    class Broken(TrackA):
        def train(self, data, seed):
            raise ValueError("no")

    monkeypatch.setattr(protocol, "_WORKER", {})
    path = str(tmp_path / "trackA" / "original-x-seed0.pt")
    job = dict(track=Broken(), scenario="mislabel", split=0, kind="original", seed=0, path=path)
    with pytest.raises(ValueError, match="no"):
        protocol._train_job(job)
    assert os.path.exists(path + ".failed") and not os.path.exists(path)
    t0 = time.time()
    with pytest.raises(RuntimeError, match="failed"):
        protocol._wait_for(path, timeout_s=60)
    assert time.time() - t0 < 5
    with pytest.raises(TimeoutError):
        protocol._wait_for(str(tmp_path / "never.pt"), timeout_s=0.3)
    job["track"] = TrackA(max_iter=5)
    protocol._train_job(job)  # the retry succeeds and clears the marker
    assert os.path.exists(path) and not os.path.exists(path + ".failed")
    protocol._wait_for(path, timeout_s=1)


WORKER_ORPHAN_SCRIPT = """
import os, sys, time
from structops.unlearn import protocol
from structops.unlearn.tracks.track_a import TrackA

if __name__ == "__main__":
    pool = protocol._pool(TrackA(), 2)
    [f.result() for f in [pool.submit(os.getpid) for _ in range(2)]]
    jobs = [pool.submit(time.sleep, 300) for _ in range(2)]
    me = str(os.getpid())
    deadline = time.time() + 60
    while time.time() < deadline:
        kids = [p for p in os.listdir("/proc") if p.isdigit() and open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1] == me]
        if len(kids) >= 2:
            break
        time.sleep(0.2)
    print("ready", *kids, flush=True)
    time.sleep(600)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads worker processes from /proc (Linux)")
def test_pool_workers_exit_when_the_bench_process_is_killed(tmp_path):
    """SIGKILL / SIGTERM skip the executor's shutdown: the protocol's workers must notice the dead
    parent and exit instead of running their queued jobs on (here: 300 s sleeps)."""
    import signal
    import subprocess

    script = tmp_path / "orphan.py"
    script.write_text(WORKER_ORPHAN_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().split()
        assert line and line[0] == "ready", line
        kids = line[1:]
        assert len(kids) >= 2, f"expected two pool workers, saw {kids}"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def alive(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False
    deadline = time.time() + 60
    while time.time() < deadline and any(alive(p) for p in kids):
        time.sleep(0.5)
    left = [p for p in kids if alive(p)]
    for p in left:  # do not leave them behind if the test fails
        os.kill(int(p), signal.SIGKILL)
    assert not left, f"pool workers {left} outlived their killed parent"


@pytest.mark.parametrize("track_cls", [TrackA, TrackB])
def test_tuning_evaluate_equals_the_full_evaluation(track_cls):
    """Tuning measures models with Track.tuning_evaluate (Track B skips truth ratios, options,
    Min-K%, MIA): every quantity the tuning phase reads is present and bit-identical to
    evaluate's, so the recorded tuning rows (protocol._compact of the aggregate) are too."""
    t = track_cls()
    s = t.setup(t.scenarios[1], 1)
    torch.manual_seed(0)
    models = [t.new_model().eval() for _ in range(3)]
    original = models[0]
    full = [t.evaluate(m, s, original=original) for m in models]
    light = [t.tuning_evaluate(m, s, original=original) for m in models]
    for f, g in zip(full, light):
        read = [k for k in protocol.TUNING_READS if k in f]
        assert set(read) <= set(g), f"tuning_evaluate lacks {set(read) - set(g)}"
        assert "margins_forget" in read and "retain_kl" in read and "acc_forget" in read
        for k in read:
            assert np.array_equal(np.asarray(f[k]), np.asarray(g[k])), k
    arm_f, arm_l, ref_f, ref_l = full[1:], light[1:], full[:2], light[:2]
    extra = getattr(t, "aggregate_extra", None)  # as the tuning phase calls it
    summ_f, summ_l = protocol.aggregate(arm_f, ref_f, extra), protocol.aggregate(arm_l, ref_l, extra)
    assert protocol._compact(summ_l) == protocol._compact(summ_f)
    assert protocol._score(summ_l) == protocol._score(summ_f) < np.inf



def test_tracks_pickle_without_their_data_and_rebuild_it_equal():
    """Every protocol job carries its track: the data a track builds on first use
    (Track.transient_attrs) is left out of the pickle (Track B's facts were 2.6 MB and ~90 ms to
    unpickle per job) and rebuilt equal on the other side; the cache key (recipe) is unchanged."""
    import pickle

    for track, scenario in ((TrackA(), "mislabel"), (TrackB(), "forget05")):
        s = track.setup(scenario, 1)  # builds the data
        blob = pickle.dumps(track)
        assert len(blob) < 10_000, (type(track).__name__, len(blob))
        copy = pickle.loads(blob)
        assert copy.recipe() == track.recipe()
        s2 = copy.setup(scenario, 1)
        for a, b in zip(s.train + s.retain + s.forget + s.test, s2.train + s2.retain + s2.forget + s2.test):
            assert torch.equal(a, b)
        assert all(getattr(track, name) is not None for name in track.transient_attrs)  # the original keeps its data


def test_a_bundle_runs_fewer_epochs_first_and_changes_no_result(tmp_path, monkeypatch):
    """The report bundles a method's oracle-tuned and oracle-free configurations on one original,
    longest first as they are listed; the job runs the shorter epoch count first, so the longer
    run continues it (epoch-prefix sharing) — and every number equals a separate job's."""
    from structops.unlearn import methods

    track = TrackA(max_iter=150)
    s = track.setup("mislabel", 1)
    path = str(tmp_path / "original.pt")
    torch.save(track.train(s.train, 0).state_dict(), path)
    monkeypatch.setattr(protocol, "_WORKER", {})
    steps = []
    real_optimizer = methods._optimizer

    def counting(*a, **k):
        opt = real_optimizer(*a, **k)
        real_step = opt.step
        opt.step = lambda *x, **y: steps.append(1) or real_step(*x, **y)
        return opt
    monkeypatch.setattr(methods, "_optimizer", counting)
    base = dict(lr=1e-3, batch_size=16, optimizer="adamw", weight_decay=0.01)
    configs = [dict(base, epochs=3), dict(base, epochs=1)]  # the report's order: chosen, then oracle-free
    job = dict(track=track, scenario="mislabel", split=1, arm="method", method="gradient_ascent", seed=0,
               path=path, probes=False, tuning=True)
    separate = {c["epochs"]: protocol._eval_job(dict(job, config=c, tag=c["epochs"]))[0][1] for c in configs}
    per_epoch = len(steps) // 4
    assert per_epoch > 0 and len(steps) == 4 * per_epoch
    steps.clear()
    bundled = dict(protocol._eval_job(dict(job, config=configs[0], tag=3, bundle=[(c, c["epochs"]) for c in configs])))
    assert len(steps) == 3 * per_epoch  # 1 epoch, then 2 more continuing it (not 3 + 1)
    for e in (1, 3):
        for k, v in separate[e].items():
            if k != "seconds":
                assert np.array_equal(np.asarray(v), np.asarray(bundled[e][k])), (e, k)


HEAP_SCRIPT = """
import resource, sys, torch
torch.set_num_threads(1)
from structops.unlearn.protocol import keep_heap_mapped
if sys.argv[1] == "kept" and not keep_heap_mapped():
    print("unsupported")
    sys.exit(0)
net = torch.nn.Sequential(torch.nn.Linear(80, 320), torch.nn.GELU(), torch.nn.Linear(320, 80))

def forwards():  # evaluation-like: a few MiB of activations at several batch sizes
    with torch.no_grad():
        for rows in (200, 2600, 800, 3300, 200):
            net(torch.ones(rows, 80)).sum()

forwards()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    forwards()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's: Linux only")
def test_keep_heap_mapped_stops_the_page_faults_of_repeated_forwards(tmp_path):
    """protocol.keep_heap_mapped (the protocol's workers and the bench process): repeated
    forwards stop page-faulting their activations afresh (measured here: ~40k faults -> ~1k
    for 100 forwards); each variant in a fresh process."""
    import subprocess

    script = tmp_path / "heap.py"
    script.write_text(HEAP_SCRIPT)

    def faults(mode):
        out = subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    kept = faults("kept")
    if kept == "unsupported":
        pytest.skip("this C library has no mallopt (not glibc)")
    default = int(faults("default"))
    assert int(kept) * 4 < default, (kept, default)
