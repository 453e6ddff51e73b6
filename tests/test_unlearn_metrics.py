"""Unlearning metrics on cases with known answers, and the robustness probes."""

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from structops.unlearn import metrics, probes


def test_binned_kl_identical_and_disjoint():
    a = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    assert metrics.binned_kl(a, a) == pytest.approx(0.0, abs=1e-12)
    # all of p in the first bin, q in the last: q is floored at eps = 1e-5 where p > 0, then
    # normalised by scipy -> KL = log((1 + 1e-5) / 1e-5).  (q's maximum sits on the top edge of
    # the range and is not counted: np.digitize, as in data-unlearning-bench.)
    p, q = np.zeros(8), np.array([10.0] * 7 + [10.5])
    assert metrics.binned_kl(p, q) == pytest.approx(math.log((1 + 1e-5) / 1e-5), rel=1e-9)
    # the quirk itself: if every q sample is the maximum, none is counted and q falls back to eps
    assert metrics.binned_kl(np.zeros(8), np.full(8, 10.0)) == pytest.approx(0.0, abs=1e-12)


def test_binned_kl_matches_hand_histogram():
    # range [0, 4], 4 bins of width 1; np.digitize drops the sample equal to the top edge (4.0),
    # exactly like data-unlearning-bench
    p = np.array([0.5, 0.5, 1.5, 3.5])
    q = np.array([0.5, 1.5, 2.5, 4.0])
    got = metrics.binned_kl(p, q, bin_count=4)
    pp = np.array([2, 1, 0, 1]) / 4
    qq = np.array([1, 1, 1, 0]) / 3
    qs = np.where(pp > 0, np.maximum(qq, 1e-5), qq)
    qs = qs / qs.sum()
    want = sum(pi * math.log(pi / qi) for pi, qi in zip(pp, qs) if pi > 0)
    assert got == pytest.approx(want, rel=1e-12)


def test_klom_vectorised_is_bit_identical_to_the_per_point_binned_kl():
    """klom computes every point at once (binned_kl_columns); each value must equal binned_kl of
    that point's two columns exactly — ties on bin edges, clipping, constant and identical
    columns, small-integer margins, one sample, chunk boundaries included."""
    rng = np.random.default_rng(7)
    cases = []
    for t in range(60):
        nu, no, n = int(rng.integers(1, 20)), int(rng.integers(1, 40)), int(rng.integers(1, 30))
        u = rng.normal(rng.normal(0, 5), rng.uniform(0.01, 10), (nu, n))
        o = rng.normal(rng.normal(0, 5), rng.uniform(0.01, 10), (no, n))
        kind = t % 6
        if kind == 1:
            u, o = np.round(u), np.round(o)  # samples on bin edges
        elif kind == 2:
            u, o = u * 50, o * 80  # clipped at +-100
        elif kind == 3:
            u[:], o[:] = 3.0, 3.0  # start >= end
        elif kind == 4:
            o = np.repeat(u[:1], no, 0)
        elif kind == 5:
            u = rng.integers(-3, 4, (nu, n)).astype(float)
            o = rng.integers(-3, 4, (no, n)).astype(float)
        cases.append((u, o))
    checked = 0
    for u, o in cases:
        want = np.array([metrics.binned_kl(u[:, i], o[:, i]) for i in range(u.shape[1])])
        np.testing.assert_array_equal(metrics.klom(u, o), want)
        checked += u.shape[1]
    # several chunks: the chunked path must give the same values as one chunk
    u, o = rng.normal(size=(9, 50)), rng.normal(0.5, 2.0, size=(13, 50))
    np.testing.assert_array_equal(metrics.binned_kl_columns(u, o, chunk_elems=1),
                                  [metrics.binned_kl(u[:, i], o[:, i]) for i in range(50)])
    assert checked > 500
    with pytest.raises(ValueError, match="NaN"):
        metrics.klom(np.array([[np.nan]]), np.array([[0.0]]))
    with pytest.raises(ValueError, match="n_points"):
        metrics.klom(np.zeros((2, 3)), np.zeros((2, 4)))


def test_klom_clips_at_100():
    u = np.array([[1e6], [2e6]])
    o = np.array([[100.0], [100.0]])
    assert metrics.klom(u, o)[0] == pytest.approx(0.0, abs=1e-12)  # both clipped to 100


def test_gaussian_klom_closed_form():
    rng = np.random.default_rng(0)
    u = rng.normal(1.0, 2.0, size=(200000, 1))
    o = rng.normal(0.0, 1.0, size=(200000, 1))
    want = math.log(1 / 2) + (4 + 1) / 2 - 0.5  # KL(N(1, 2^2) || N(0, 1))
    assert metrics.gaussian_klom(u, o)[0] == pytest.approx(want, rel=2e-2)
    same = rng.normal(0, 1, size=(50, 3))
    assert np.allclose(metrics.gaussian_klom(same, same), 0.0)
    # std floor: constant samples do not divide by zero
    assert np.isfinite(metrics.gaussian_klom(np.zeros((4, 2)), np.ones((4, 2)))).all()


def test_ks_forget_quality():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=400), rng.normal(size=400)
    assert metrics.ks_forget_quality(a, b) > 0.05
    assert metrics.ks_forget_quality(a, b + 1.0) < 1e-6
    assert metrics.ks_forget_quality([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)


def test_auc_known_values():
    assert metrics.auc([3, 4, 5], [0, 1, 2]) == 1.0
    assert metrics.auc([0, 1], [2, 3]) == 0.0
    assert metrics.auc([1, 1], [1, 1]) == 0.5
    assert metrics.auc([2, 0], [1]) == 0.5


def test_harmonic_mean():
    assert metrics.harmonic_mean([1, 1, 1]) == 1.0
    assert metrics.harmonic_mean([0.5, 1.0]) == pytest.approx(2 / 3)
    assert metrics.harmonic_mean([0.0, 1.0]) == 0.0


def test_margins_and_accuracy_on_fixed_logits():
    class Fixed(nn.Module):
        def forward(self, x):
            return torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 1.0]])[: x.shape[0]]

    x, y = torch.zeros(2, 1), torch.tensor([0, 2])
    m = metrics.margins(Fixed(), (x, y))
    torch.testing.assert_close(m, torch.tensor([2 - math.log(2), 1 - math.log(math.e ** 0 + math.e ** 1)]))
    assert metrics.accuracy(Fixed(), (x, y)) == 0.5  # argmax of row 2 is the first maximum, class 1
    torch.testing.assert_close(metrics.example_accuracy(Fixed(), (x, y)), torch.tensor([1.0, 0.0]))


def test_mia_threshold_on_separable_losses():
    """Members have loss ~0, non-members high: a forget set that looks like non-members is called
    non-member entirely."""

    class ByInput(nn.Module):
        def forward(self, x):  # x[:, 0] = confidence in the true class 0
            return torch.stack([x[:, 0], torch.zeros_like(x[:, 0])], 1)

    y = lambda n: torch.zeros(n, dtype=torch.long)
    retain = (torch.full((50, 1), 8.0), y(50))
    test = (torch.full((50, 1), -2.0), y(50))
    forget_like_test = (torch.full((10, 1), -2.0), y(10))
    forget_like_retain = (torch.full((10, 1), 8.0), y(10))
    m = ByInput()
    assert metrics.mia_loss_threshold(m, forget_like_test, retain, test) == 1.0
    assert metrics.mia_loss_threshold(m, forget_like_retain, retain, test) == 0.0
    assert metrics.mia_svc(m, forget_like_test, retain, test) == 1.0
    assert metrics.mia_svc(m, forget_like_retain, retain, test) == 0.0
    # every Unlearn-Sparse feature separates these two populations the same way
    # (correctness: retain is all correct, test all wrong)
    a = metrics.mia_svc_all(m, forget_like_test, retain, test)
    b = metrics.mia_svc_all(m, forget_like_retain, retain, test)
    assert set(a) == set(metrics.SVC_FEATURES)
    assert all(v == 1.0 for v in a.values()) and all(v == 0.0 for v in b.values()), (a, b)


def test_confidence_features_hand_computed():
    """Song & Mittal's features for p = (0.8, 0.2), true class 0: confidence 0.8, entropy
    -(0.8 ln 0.8 + 0.2 ln 0.2) = 0.5004, modified entropy -(1 - 0.8) ln 0.8 - 0.2 ln(1 - 0.2)
    = 0.0893, correctness 1; and the probability vector itself."""

    class Fixed(nn.Module):
        def forward(self, x):
            return torch.log(torch.tensor([[0.8, 0.2]])).expand(len(x), 2)

    f = metrics.confidence_features(Fixed(), (torch.zeros(3, 1), torch.zeros(3, dtype=torch.long)))
    torch.testing.assert_close(f["confidence"], torch.full((3,), 0.8))
    torch.testing.assert_close(f["entropy"], torch.full((3,), -(0.8 * math.log(0.8) + 0.2 * math.log(0.2))))
    torch.testing.assert_close(f["m_entropy"], torch.full((3,), -0.2 * math.log(0.8) - 0.2 * math.log(0.8)))
    torch.testing.assert_close(f["correctness"], torch.ones(3))
    torch.testing.assert_close(f["prob"], torch.tensor([[0.8, 0.2]] * 3))


def test_quantize_rtn_known_values():
    lin = nn.Linear(2, 1, bias=True)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.1, 0.9]]))
        lin.bias.fill_(0.123)
    q8 = probes.quantize_rtn(lin, 8)
    s8 = 0.9 / 127
    torch.testing.assert_close(q8.weight, torch.tensor([[round(0.1 / s8) * s8, 0.9]]))
    q4 = probes.quantize_rtn(lin, 4)
    s4 = 0.9 / 7
    torch.testing.assert_close(q4.weight, torch.tensor([[1 * s4, 0.9]]))
    assert q4.bias.item() == pytest.approx(0.123)  # biases stay in full precision
    assert lin.weight[0, 0].item() == pytest.approx(0.1)  # the original is untouched


def test_quantization_recovers_a_small_unlearning_update():
    """An 'unlearning' edit smaller than half an int4 bin disappears after quantisation — the
    failure mode the probe exists to expose (arXiv 2410.16454).  The edit leaves every row's
    absmax alone, so both round to *exactly* the same weights; an identity 'quantiser' (or one
    too fine to matter) fails this test."""
    orig = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        orig.weight.copy_(torch.tensor([[0.7, -0.7, 0.31, 0.0], [0.21, 0.7, -0.29, 0.1]]))
    unlearned = copy.deepcopy(orig)
    with torch.no_grad():  # +-0.01 edits on the non-extreme entries; the int4 bin width is 0.1
        unlearned.weight[0, 2] += 0.01
        unlearned.weight[1, 0] += 0.01
        unlearned.weight[1, 3] -= 0.01
    qo, qu = probes.quantize_rtn(orig, 4), probes.quantize_rtn(unlearned, 4)
    assert (orig.weight - unlearned.weight).abs().max() > 0.009
    assert torch.equal(qo.weight, qu.weight)
    # and the same edit survives int8 (bin 0.0055): the probe separates the two bit widths
    assert not torch.equal(probes.quantize_rtn(orig, 8).weight, probes.quantize_rtn(unlearned, 8).weight)


def test_relearn_curve_shape_and_direction():
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    x = torch.randn(40, 2)
    y = (x[:, 0] > 0).long()
    curve = probes.relearn(model, (x, y), lambda m, d: metrics.example_losses(m, d).mean().item(),
                           fraction=0.5, steps=20, lr=0.5)
    assert len(curve) == 21 and curve[-1] < 0.8 * curve[0]


def test_relearn_scores_only_the_held_out_forget_points():
    """The relearning steps use 10% of the forget set; the curve is measured on the other 90%,
    disjoint from them (v1 scored the relearned points themselves)."""
    x = torch.arange(50.0)[:, None]
    y = torch.zeros(50, dtype=torch.long)
    seen = []

    def evaluate(m, d):
        seen.append(set(d[0][:, 0].tolist()))
        return 0.0

    trained = []

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(1, 2)

        def forward(self, inp):
            trained.append(set(inp[:, 0].tolist()))
            return self.lin(inp)

    probes.relearn(Spy(), (x, y), evaluate, fraction=0.1, steps=3, lr=0.1)
    relearned = set().union(*trained[:1])  # the first forward is the first relearning batch
    assert len(relearned) == 5 and all(s == seen[0] for s in seen) and len(seen[0]) == 45
    assert not (seen[0] & relearned)
    both = []
    probes.relearn(nn.Linear(1, 2), (x, y), lambda m, d: both.append(len(d[0])) or 0.0, fraction=0.1, steps=1,
                   score_on="all")
    assert both == [50, 50]
    with pytest.raises(ValueError, match="score_on"):
        probes.relearn(nn.Linear(1, 2), (x, y), evaluate, score_on="relearned")


def test_truth_ratio_is_tofus_geometric_mean():
    """Hand-computed from TOFU's definition: perturbed answers with per-token probabilities 0.1
    and 0.4, correct answer 0.5 -> R = sqrt(0.1 * 0.4) / 0.5 = 0.4 (the arithmetic mean of the
    probabilities would give 0.5)."""
    import math

    pert = torch.tensor([[math.log(0.1), math.log(0.4)]], dtype=torch.float64)
    base = torch.tensor([math.log(0.5)], dtype=torch.float64)
    assert metrics.truth_ratio(pert, base)[0] == pytest.approx(0.4, rel=1e-12)
    assert metrics.truth_ratio(pert, base, mean="arithmetic")[0] == pytest.approx(0.5, rel=1e-12)
    with pytest.raises(ValueError, match="geometric"):
        metrics.truth_ratio(pert, base, mean="median")
    with pytest.raises(ValueError, match=r"\(n, k\)"):
        metrics.truth_ratio(pert[0], base)


def test_klom_direction_is_kl_unlearned_to_oracle():
    """data-unlearning-bench: compute_binned_KL_div(unlearned, oracle) = D_KL(unlearned || oracle).
    Unlearned margins concentrated in one bin, oracles spread over two: KL(u || o) = log(1 / q)
    with q the oracles' mass in that bin (here 1/2 -> log 2), while the reverse direction hits
    the eps floor for half of the mass (0.5 log 0.5 + 0.5 log(0.5 / 1e-5) ~ 5.1).  (The oracle
    at the top edge, 10, is not counted — np.digitize, as upstream.)"""
    import math

    u = np.array([[0.0], [0.0], [0.0], [0.0]])
    o = np.array([[0.0], [0.0], [5.0], [5.0], [10.0]])
    assert metrics.klom(u, o)[0] == pytest.approx(math.log(2), rel=1e-9)
    z = 1 + 1e-5  # scipy.stats.entropy renormalises qk = [1, eps]
    assert metrics.binned_kl(o[:, 0], u[:, 0]) == pytest.approx(0.5 * math.log(0.5 * z) + 0.5 * math.log(0.5 * z / 1e-5))


def test_option_normalised_probability_is_tofus_probability_w_options():
    """Hand-computed: length-normalised probabilities 0.5 (correct) and 0.25, 0.125, 0.125
    (wrong options) give 0.5 / (0.5 + 0.5) = 0.5; a single option equal to the answer gives 0.5;
    raw probability (0.5) would differ from the normalised value once the options change."""
    import math

    c = [math.log(0.5), math.log(0.2)]
    o = [[math.log(0.25), math.log(0.125), math.log(0.125)], [math.log(0.2), math.log(0.6), math.log(1e-9)]]
    got = metrics.option_normalised_probability(c, o)
    assert got[0] == pytest.approx(0.5, rel=1e-12)
    assert got[1] == pytest.approx(0.2 / (0.2 + 0.2 + 0.6 + 1e-9), rel=1e-9)
    with pytest.raises(ValueError, match=r"\(n, k\)"):
        metrics.option_normalised_probability(c, [0.1, 0.2])
