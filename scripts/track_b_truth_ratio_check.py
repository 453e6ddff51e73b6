"""One original against one oracle on Track B forget05 split 1: what the forget truth ratio (TOFU's
answer paraphrase and v1's question paraphrase) can tell apart, how well the models fit their
training data, and what one model costs to train.  The cheap check behind docs/UNLEARNING.md's
"Truth ratio on a paraphrased answer"; the full protocol run is `python -m structops.unlearn.bench
--track B ...`.

    .venv/bin/python scripts/track_b_truth_ratio_check.py --json docs/results/F.json

The two models train in parallel, one process and one thread each (as the protocol's workers).
"""

import argparse
import json
import multiprocessing as mp
import subprocess
import time

import numpy as np
import torch

SCENARIO, SPLIT = "forget05", 1
ORIGINAL_SEED, ORACLE_SEED = 0, 20000


def _train(kind: str):
    torch.set_num_threads(1)
    from structops.unlearn import metrics
    from structops.unlearn.tracks.track_b import TrackB

    track = TrackB()
    setup = track.setup(SCENARIO, SPLIT)
    data, seed = (setup.train, ORIGINAL_SEED) if kind == "original" else (setup.retain, ORACLE_SEED)
    epochs = [0]
    accuracy = metrics.accuracy

    def counting_accuracy(*a, **k):  # train() checks every 5 epochs
        epochs[0] += 5
        return accuracy(*a, **k)

    metrics.accuracy = counting_accuracy
    t0 = time.perf_counter()
    model = track.train(data, seed)
    seconds = time.perf_counter() - t0
    metrics.accuracy = accuracy
    fd = track.facts
    fit = {name: accuracy(model, d, track.objective) for name, d in (
        ("train_set", data), ("world_A", fd.world_q["A"]), ("additions_trained", fd.add_train),
        ("answer_wording_trained", fd.general_para))}
    ev = track.evaluate(model, setup)
    keep = ("acc_forget", "acc_retain", "acc_world", "acc_add_test", "truth_ratio_forget",
            "truth_ratio_forget_qpara", "model_utility")
    return {"kind": kind, "seed": seed, "train_seconds": seconds, "epochs_run": min(epochs[0], track.max_epochs),
            "fit": fit, **{k: float(ev[k]) for k in keep},
            "tr_values_forget": ev["tr_values_forget"].tolist(),
            "tr_values_forget_qpara": ev["tr_values_forget_qpara"].tolist()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from structops.unlearn import metrics

    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(2) as pool:
        original, oracle = pool.map(_train, ["original", "oracle"])
    out = {"scenario": SCENARIO, "split": SPLIT, "original": original, "oracle": oracle,
           "wall_seconds": time.perf_counter() - t0,
           "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
           "torch": torch.__version__}
    for suffix in ("", "_qpara"):
        a, b = np.array(original["tr_values_forget" + suffix]), np.array(oracle["tr_values_forget" + suffix])
        out["median_R" + suffix] = {"original": float(np.median(a)), "oracle": float(np.median(b))}
        out["ks_p" + suffix] = metrics.ks_forget_quality(a, b)
    for m in (original, oracle):
        print(f"{m['kind']:9s} seed {m['seed']}: {m['train_seconds']:.0f} s, {m['epochs_run']} epochs; fit "
              + ", ".join(f"{k} {v:.4f}" for k, v in m["fit"].items())
              + f"; accF {m['acc_forget']:.3f} accR {m['acc_retain']:.3f} world {m['acc_world']:.3f} "
              f"add_test {m['acc_add_test']:.3f} util {m['model_utility']:.3f} "
              f"TR F {m['truth_ratio_forget']:.3f} (qpara {m['truth_ratio_forget_qpara']:.3f})")
    for suffix, name in (("", "answer paraphrase (TOFU)"), ("_qpara", "question paraphrase (v1)")):
        med = out["median_R" + suffix]
        print(f"{name}: median R original {med['original']:.3g}, oracle {med['oracle']:.3g}; "
              f"KS p original vs oracle {out['ks_p' + suffix]:.3g}")
    print(f"wall {out['wall_seconds']:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
