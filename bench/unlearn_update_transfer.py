"""K-FADE update transfer (issue 12): is the stored update Δ = kfade(θ).kfade_update still an
unlearning update after the model trains further?

Track A mislabel (one forget set), N originals θ and 2N oracles retrained without F.  For each
original: Δ from K-FADE at θ; then k SGD steps on the retain set (θ_k); then θ_k + Δ.  Reported per
k: forget accuracy (w.r.t. the corrupted labels; oracles ≈ 0), median Gaussian KLoM of the forget
margins against the oracles, test accuracy — for θ_k alone, θ_k + Δ, and K-FADE recomputed at θ_k
(what re-running the method would give).

    python bench/unlearn_update_transfer.py [--originals 8] [--steps 0,10,50,200] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time

import numpy as np
import torch

from structops import unlearn
from structops.unlearn import metrics
from structops.unlearn.data import batches
from structops.unlearn.tracks.track_a import TrackA

KFADE = dict(curvature="ekfac", steps=3, kl_budget=0.02, damping=1e-5)


def further_train(model, retain, steps, seed, lr=0.05):
    m = copy.deepcopy(model)
    if steps == 0:
        return m
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9)
    done = 0
    while done < steps:
        for x, y in batches(retain, 128, shuffle=True, generator=gen):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
            done += 1
            if done == steps:
                break
    return m


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--originals", type=int, default=8)
    ap.add_argument("--steps", default="0,10,50,200")
    ap.add_argument("--split", type=int, default=1)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    ks = [int(s) for s in a.steps.split(",")]
    tr = TrackA()
    st = tr.setup("mislabel", a.split)
    t0 = time.time()
    originals = [tr.train(st.train, s) for s in range(a.originals)]
    oracles = [tr.train(st.retain, 1000 + s) for s in range(2 * a.originals)]
    om = np.stack([metrics.margins(o, st.forget).numpy() for o in oracles])
    print(f"# {a.originals} originals, {2 * a.originals} oracles trained in {time.time() - t0:.0f} s", file=sys.stderr)

    def score(m):
        g = metrics.gaussian_klom(metrics.margins(m, st.forget).numpy()[None], om)
        return dict(acc_forget=metrics.accuracy(m, st.forget), gklom_forget_p50=float(np.median(g)),
                    acc_test=metrics.accuracy(m, st.test))

    rows = []
    deltas = [unlearn.kfade(o, st.forget, st.retain, seed=i, **KFADE).kfade_update for i, o in enumerate(originals)]
    for k in ks:
        per = {"further": [], "further+delta": [], "kfade at further": []}
        for i, (o, d) in enumerate(zip(originals, deltas)):
            f = further_train(o, st.retain, k, seed=i)
            per["further"].append(score(f))
            per["further+delta"].append(score(unlearn.apply_update(f, d)))
            per["kfade at further"].append(score(unlearn.kfade(f, st.forget, st.retain, seed=i, **KFADE)))
        for arm, vals in per.items():
            row = {"steps": k, "arm": arm, **{key: float(np.mean([v[key] for v in vals])) for key in vals[0]}}
            rows.append(row)
            print(f"k={k:<4} {arm:<18} accF {row['acc_forget']:.3f}  gKLoM F {row['gklom_forget_p50']:8.1f}  "
                  f"accT {row['acc_test']:.3f}")
            sys.stdout.flush()
    oracle = [score(o) for o in oracles[: a.originals]]
    orig = [score(o) for o in originals]
    print(f"original: accF {np.mean([s['acc_forget'] for s in orig]):.3f} gKLoM {np.mean([s['gklom_forget_p50'] for s in orig]):.1f}; "
          f"oracle: accF {np.mean([s['acc_forget'] for s in oracle]):.3f} gKLoM {np.mean([s['gklom_forget_p50'] for s in oracle]):.2f}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"config": dict(kfade=KFADE, originals=a.originals, split=a.split, steps=ks, lr=0.05,
                                      optimizer="SGD momentum 0.9, batch 128"),
                       "rows": rows, "original": orig, "oracle_self": oracle}, fh, indent=2)


if __name__ == "__main__":
    main()
