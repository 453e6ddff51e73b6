"""Benchmark tracks and the protocol: data, caching, determinism, the CLI."""

import json
import os
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
    assert n_train == 1203 and s.test[0].shape[0] == 594
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
    extra = t.aggregate_extra([e], [e])
    assert extra["forget_quality"] == pytest.approx(1.0) and extra["privleak"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="small models only"):
        t.grid("newton_step")


def test_protocol_track_a_small(tmp_path):
    """Track A end to end with 2 seeds (the CI-sized run): the oracle arm sits on the reference
    oracles, the original is far from them, a second run reuses the cached models and gives
    identical numbers."""
    cfg = protocol.ProtocolConfig(seeds=2, tune_seeds=1, methods=("finetune", "ssd", "newton_step"), workers=1,
                                  cache_dir=str(tmp_path), probes=True, progress=False)
    r1 = protocol.run_protocol(TrackA(), "mislabel", cfg)
    rep = r1["report"]["1"]
    # with 2 models per arm the Gaussian fits are noisy, but the separation is two orders
    assert 50 * rep["oracle"]["gklom_forget_p50"] < rep["original"]["gklom_forget_p50"]
    assert rep["original"]["acc_forget"] > 0.9 and rep["oracle"]["acc_forget"] < 0.2
    assert set(r1["chosen"]) == {"finetune", "ssd", "newton_step"}
    for m in ("finetune", "ssd", "newton_step"):
        for k in ("acc_forget", "retain_kl", "gklom_forget_p50", "int4_acc_forget", "relearn_gap", "seconds", "mia_svc"):
            assert k in rep[m]
    n_models = len([f for f in os.listdir(tmp_path / "trackA") if f.endswith(".pt")])
    assert n_models == 1 + 1 + 2 + 4  # tuning: 1 original + 1 oracle; report: 2 originals + 4 oracles
    r2 = protocol.run_protocol(TrackA(), "mislabel", cfg)
    assert r2["timing"]["models_s"] < 0.5 * r1["timing"]["models_s"] + 1
    for arm, s in r1["report"]["1"].items():  # deterministic given the seeds (timings aside)
        if arm.startswith("_"):
            continue
        for k, v in s.items():
            if not k.startswith("seconds"):
                assert np.allclose(v, r2["report"]["1"][arm][k]), (arm, k)


def test_bench_cli_smoke(tmp_path, capsys):
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    rc = bench.main(["--track", "A", "--scenario", "class", "--seeds", "2", "--tune-seeds", "1", "--methods",
                     "finetune,iau", "--workers", "1", "--cache", str(tmp_path / "c"), "--json", str(out_json),
                     "--png", str(out_png), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "oracle" in text and "original" in text and "gKLoM F" in text and "chosen configurations" in text
    data = json.loads(out_json.read_text())
    assert data["scenario"] == "class" and data["seeds"] == 2
    assert out_png.exists() and out_png.stat().st_size > 1000


def test_bench_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="--track must be A or B"):
        bench.main(["--track", "C", "--scenario", "x"])
    with pytest.raises(ValueError, match="scenarios"):
        bench.main(["--track", "A", "--scenario", "nope", "--cache", str(tmp_path)])
    with pytest.raises(ValueError, match="unknown method"):
        bench.main(["--track", "A", "--scenario", "class", "--methods", "magic", "--cache", str(tmp_path)])


@pytest.mark.slow
def test_track_a_mislabel_8_seeds_under_10_minutes(tmp_path):
    t0 = time.perf_counter()
    rc = bench.main(["--track", "A", "--scenario", "mislabel", "--seeds", "8", "--cache", str(tmp_path),
                     "--json", str(tmp_path / "a.json"), "--png", str(tmp_path / "a.png"), "--no-progress"])
    assert rc == 0 and time.perf_counter() - t0 < 600


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
