"""Unlearning benchmark: every method scored against models retrained without the forget set.

    python -m structops.unlearn.bench --track A --scenario mislabel --seeds 8
    python -m structops.unlearn.bench --track B --scenario forget05 --seeds 8 --methods finetune,npo,simnpo

    python -m structops.unlearn.bench --render results.json [...] [--png-dir DIR]  # tables (and plots) of saved runs

Prints a table per fresh forget set, writes JSON (``--json``, default
``bench/results/unlearn_<track>_<scenario>.json``) and a PNG of the forget-vs-retain trade-off
(``--png``).  Originals and oracles are cached (``--cache``, default ``$STRUCTOPS_CACHE`` or
``~/.cache/structops``), so re-running an evaluation does not retrain them.  See
:mod:`structops.unlearn.protocol` for the protocol and docs/UNLEARNING.md for results.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import sys

import numpy as np

from .methods import METHODS
from .protocol import ORACLE_FREE_SUFFIX, ProtocolConfig, default_cache_dir, keep_heap_mapped, run_protocol


def track_has_grid(track, method: str) -> bool:
    try:
        track.grid(method)
    except ValueError:
        return False
    return True


def make_track(name: str):
    if name.upper() == "A":
        from .tracks.track_a import TrackA

        return TrackA()
    if name.upper() == "B":
        from .tracks.track_b import TrackB

        return TrackB()
    raise ValueError(f"--track must be A or B, got {name!r}")


# columns: (header, key, format)
COLUMNS_A = [
    ("accF", "acc_forget", "{:.3f}"),
    ("accR", "acc_retain", "{:.3f}"),
    ("accT", "acc_test", "{:.3f}"),
    ("gKLoM F", "gklom_forget_p50", "{:.2f}"),
    ("gKLoM F95", "gklom_forget_p95", "{:.1f}"),
    ("gKLoM T", "gklom_test_p50", "{:.2f}"),
    ("KLoM F", "klom_forget_p50", "{:.2f}"),
    ("KLoM T95", "klom_test_p95", "{:.2f}"),
    ("MIA", "mia_loss", "{:.2f}"),
    ("MIAsvc", "mia_svc", "{:.2f}"),
    ("rKL", "retain_kl", "{:.3f}"),
    ("int4 accF", "int4_acc_forget", "{:.3f}"),
    ("int4 gKF", "gklom_int4_forget_p50", "{:.2f}"),
    ("fp4 accF", "bnb4_acc_forget", "{:.3f}"),
    ("int8mx accF", "bnb8_acc_forget", "{:.3f}"),
    ("relearn", "relearn_gap", "{:.3f}"),
    ("ms", "seconds", "{:.0f}"),
]
COLUMNS_B = [
    ("accF", "acc_forget", "{:.3f}"),
    ("accR", "acc_retain", "{:.3f}"),
    ("util", "model_utility", "{:.3f}"),
    ("FQ", "forget_quality", "{:.2g}"),
    ("TR F", "truth_ratio_forget", "{:.3f}"),
    ("ES F", "extraction_strength_forget", "{:.3f}"),
    ("EM F", "exact_memorization_forget", "{:.3f}"),
    ("MinK AUC", "mink_auc", "{:.2f}"),
    ("privleak", "privleak", "{:.1f}"),
    ("MIA", "mia_loss", "{:.2f}"),
    ("gKLoM F", "gklom_forget_p50", "{:.2f}"),
    ("rKL", "retain_kl", "{:.3f}"),
    ("int4 accF", "int4_acc_forget", "{:.3f}"),
    ("fp4 accF", "bnb4_acc_forget", "{:.3f}"),
    ("relearn", "relearn_gap", "{:.3f}"),
    ("s", "seconds", "{:.1f}"),
]


# The docs' protocol-v2 tables (docs/UNLEARNING.md): pooled over the fresh forget sets, 95% CIs
# where the protocol computes them.  (header, key, how): "ci" = pooled mean [CI]; "mean" = mean
# over the forget sets of the per-set value; "stability" = share of oracle resamples choosing
# the same configuration.
POOLED_COLUMNS_A = [
    ("accF", "acc_forget", "ci"), ("accR", "acc_retain", "ci"), ("accT", "acc_test", "ci"),
    ("gKLoM F p50", "gklom_forget_p50", "ci"), ("gKLoM F p95", "gklom_forget_p95", "ci"),
    ("gKLoM T p50", "gklom_test_p50", "ci"), ("MIA", "mia_loss", "ci"),
    ("RTN int4 accF", "int4_acc_forget", "mean"), ("bnb FP4 accF", "bnb4_acc_forget", "mean"),
    ("LLM.int8 accF", "bnb8_acc_forget", "mean"), ("relearn accF@10", "relearn_acc_k", "mean"),
    ("SVC-MIA corr/conf/ent/m-ent/prob", "mia_svc_", "svc"),
    ("stability", None, "stability"),
]
POOLED_COLUMNS_B = [
    ("accF", "acc_forget", "ci"), ("accR", "acc_retain", "ci"), ("util", "model_utility", "ci"),
    ("TR F", "truth_ratio_forget", "ci"), ("gKLoM F p50", "gklom_forget_p50", "ci"),
    ("gKLoM F p95", "gklom_forget_p95", "ci"), ("MIA", "mia_loss", "ci"),
    ("bnb FP4 accF", "bnb4_acc_forget", "mean"), ("relearn accF@10", "relearn_acc_k", "mean"),
    ("stability", None, "stability"),
]


def render_pooled(res: dict) -> str:
    """The docs' v2 table of one results JSON (heading line + markdown table), deterministic."""
    splits = res["report_splits"] if "report_splits" in res else res["forget_sets"]["report_splits"]
    sizes = res["report"][str(splits[0])].get("_sizes")
    prov, timing = res.get("provenance", {}), res.get("timing", {})
    head = (f"#### Track {res['track']} / {res['scenario']} — v2, pooled over forget sets {list(splits)} "
            f"({res['seeds']} originals, {2 * res['seeds']} oracles each; tuning {res['tune_seeds']} × "
            f"{res['tune_oracles']}; sizes {sizes}; commit {prov.get('commit')}, {timing.get('total_s', 0):.0f} s)")
    cols = POOLED_COLUMNS_A if res["track"] == "A" else POOLED_COLUMNS_B
    pooled = res["report_pooled"]
    arms = ["oracle", "original"] + [a for a in pooled if a not in ("oracle", "original")]
    lines = ["| arm | " + " | ".join(h for h, _, _ in cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for arm in arms:
        row = [arm]
        for _, key, how in cols:
            if how == "ci":
                v = pooled[arm].get(key)
                ci = pooled[arm].get("ci", {}).get(key)
                row.append("-" if v is None else (f"{v:.3g} [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else f"{v:.3g}"))
            elif how == "mean":
                vals = [res["report"][str(sp)][arm].get(key) for sp in splits]
                row.append("-" if any(v is None for v in vals) else f"{float(np.mean(vals)):.3g}")
            elif how == "svc":  # every SVC-MIA feature, mean over the forget sets
                parts = []
                for f in ("correctness", "confidence", "entropy", "m_entropy", "prob"):
                    vals = [res["report"][str(sp)][arm].get(key + f) for sp in splits]
                    parts.append("-" if any(v is None for v in vals) else f"{float(np.mean(vals)):.2f}")
                row.append("/".join(parts))
            else:
                method = arm.replace(ORACLE_FREE_SUFFIX, "")
                st = res.get("stability", {}).get(method)
                row.append(f"{st['chosen_share']:.2f}" if st and arm == method else "—")
        lines.append("| " + " | ".join(row) + " |")
    return head + "\n\n" + "\n".join(lines) + _render_vs_sparse(res, splits)


def _render_vs_sparse(res: dict, splits) -> str:
    """For runs with sparse originals: those arms scored against sparse oracles (Unlearn-Sparse's
    comparison), mean over the forget sets; empty otherwise."""
    first = res["report"][str(splits[0])]
    arms = [a for a in first if not a.startswith("_") and "vs_sparse_oracles" in first[a]]
    if not arms:
        return ""
    cols = [("accF", "acc_forget"), ("accR", "acc_retain"), ("accT", "acc_test"), ("gKLoM F p50", "gklom_forget_p50"),
            ("gKLoM T p50", "gklom_test_p50")]
    lines = ["| arm (vs sparse oracles) | " + " | ".join(h for h, _ in cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for arm in arms:
        row = [arm]
        for _, key in cols:
            vals = [res["report"][str(sp)][arm]["vs_sparse_oracles"].get(key) for sp in splits]
            row.append("-" if any(v is None for v in vals) else f"{float(np.mean(vals)):.3g}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n\n" + "\n".join(lines)


def check_docs(doc_path: str, result_paths: list) -> int:
    """Re-render every results JSON's v2 table and check it stands verbatim in the doc; prints a
    diff for each table that does not.  Returns the number of stale tables."""
    import difflib

    with open(doc_path) as f:
        doc = f.read()
    stale = 0
    for path in result_paths:
        with open(path) as f:
            table = render_pooled(json.load(f))
        if table in doc:
            print(f"ok    {path}: its table in {doc_path} is current")
            continue
        stale += 1
        head = table.split("\n", 1)[0]
        start = doc.find(head.split(" — ")[0])
        old = doc[start:start + len(table) + 200].split("\n\n\n")[0] if start >= 0 else ""
        print(f"STALE {path}: {doc_path} does not contain its table" + ("" if start >= 0 else " (no such section)"))
        sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), table.splitlines(True), doc_path, path))
        print()
    return stale


def _rows(report: dict, columns) -> list[list[str]]:
    arms = [a for a in report if not a.startswith("_")]
    order = ["oracle", "original"] + [a for a in arms if a not in ("oracle", "original")]
    rows = [["method"] + [h for h, _, _ in columns]]
    for a in order:
        s = report[a]
        row = [a]
        for h, k, fmt in columns:
            v = s.get(k)
            if h == "ms" and v is not None:
                v = v * 1e3
            row.append("-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v))
        rows.append(row)
    return rows


def format_markdown(report: dict, columns) -> str:
    rows = _rows(report, columns)
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(out)


def format_table(report: dict, columns) -> str:
    rows = _rows(report, columns)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def plot_tradeoff(results: dict, path: str) -> None:
    """One scatter per fresh forget set: x = median Gaussian KLoM to the oracles on the forget set,
    y = retain KL(original || unlearned).  The oracle-vs-oracle distance is drawn as a vertical line
    (the best reachable x); the original sits at x = its own distance, y = 0 (drawn at the floor)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = "osD^vP*Xhp<>"
    for split, report in results["report"].items():
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        methods = [a for a in report if not a.startswith("_") and a not in ("oracle", "original")]
        ys = [report[a].get("retain_kl", np.nan) for a in methods]
        floor = 10 ** math.floor(math.log10(max(min([y for y in ys if y and y > 0] or [1e-3]), 1e-6))) / 2
        if "oracle" in report:
            ax.axvline(report["oracle"].get("gklom_forget_p50", np.nan), color="k", ls="--", lw=1,
                       label="oracle vs oracle")
        if "original" in report:
            ax.scatter([report["original"].get("gklom_forget_p50", np.nan)], [floor], marker="x", s=60,
                       color="k", label="original (rKL = 0)")
        for i, (arm, y) in enumerate(zip(methods, ys)):
            ax.scatter([report[arm].get("gklom_forget_p50", np.nan)], [max(y, floor)], s=45,
                       marker=markers[i % len(markers)], label=arm)
        ax.set_xscale("symlog", linthresh=0.1)
        ax.set_yscale("log")
        ax.set_xlabel("forget: median Gaussian KLoM to the oracles (lower = closer to retraining)")
        ax.set_ylabel("retain KL(original || unlearned)\n(lower = less collateral)")
        ax.set_title(f"Track {results['track']} / {results['scenario']} / fresh forget set {split}, "
                     f"{results['seeds']} seeds")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.tight_layout()
        out = path if len(results["report"]) == 1 else path.replace(".png", f"_split{split}.png")
        fig.savefig(out, dpi=110)
        plt.close(fig)


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "--render-pooled":  # the docs' v2 tables of saved results
        for path in argv[1:]:
            with open(path) as f:
                print(render_pooled(json.load(f)) + "\n")
        return 0
    if argv and argv[0] == "--check-docs":  # --check-docs DOC.md RESULT.json...: are the tables current?
        if len(argv) < 3:
            print("usage: --check-docs DOC.md RESULTS.json [...]", file=sys.stderr)
            return 2
        return 1 if check_docs(argv[1], argv[2:]) else 0
    if argv and argv[0] == "--render":  # markdown tables of saved results, no rerun
        paths, png_dir = list(argv[1:]), None
        if "--png-dir" in paths:  # also redraw the trade-off plots from the saved results
            i = paths.index("--png-dir")
            png_dir = paths[i + 1]
            del paths[i:i + 2]
        for path in paths:
            with open(path) as f:
                res = json.load(f)
            if png_dir:
                name = os.path.splitext(os.path.basename(path))[0] + ".png"
                plot_tradeoff(res, os.path.join(png_dir, name))
            cols = COLUMNS_A if res["track"] == "A" else COLUMNS_B
            for split, report in res["report"].items():
                print(f"\n### Track {res['track']} / {res['scenario']} (fresh forget set {split}, {res['seeds']} seeds, "
                      f"sizes {report.get('_sizes')})\n")
                print(format_markdown(report, cols))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--track", required=True, help="A (digits MLP) or B (tiny transformer on synthetic facts)")
    ap.add_argument("--scenario", required=True, help="A: random | class | mislabel; B: forget01 | forget05 | forget10")
    ap.add_argument("--methods", default="all", help=f"comma-separated subset of {','.join(METHODS)} (default: all)")
    ap.add_argument("--seeds", type=int, default=8, help="originals per forget set (oracles: 2x)")
    ap.add_argument("--tune-seeds", type=int, default=8, help="originals used when tuning (independent of --seeds)")
    ap.add_argument("--tune-oracles", type=int, default=16, help="oracles used when tuning (independent of --seeds)")
    ap.add_argument("--fresh", type=int, default=3, help="number of fresh (disjoint) forget sets to report on")
    ap.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CIs (0: none)")
    ap.add_argument("--stability", type=int, default=200,
                    help="oracle resamples for the stability of each tuning choice (0: none)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--cache", default=default_cache_dir())
    ap.add_argument("--json", default=None)
    ap.add_argument("--png", default=None)
    ap.add_argument("--no-probes", action="store_true", help="skip the quantisation and relearning probes")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    track = make_track(args.track)
    methods = tuple(METHODS) if args.methods == "all" else tuple(m.strip() for m in args.methods.split(",") if m.strip())
    if args.methods == "all":  # every method the track has a tuning grid for (Track B: no newton_step)
        methods = tuple(m for m in methods if track_has_grid(track, m))
    cfg = ProtocolConfig(seeds=args.seeds, tune_seeds=args.tune_seeds, tune_oracles=args.tune_oracles,
                         fresh_splits=tuple(range(1, 1 + args.fresh)), bootstrap=args.bootstrap,
                         stability_resamples=args.stability, methods=methods, workers=args.workers,
                         cache_dir=args.cache, probes=not args.no_probes, progress=not args.no_progress)
    keep_heap_mapped()  # this process is ours: with --workers 1 it runs every job (see protocol)
    results = run_protocol(track, args.scenario, cfg)
    results["date"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    columns = COLUMNS_A if track.name == "A" else COLUMNS_B
    for split, report in results["report"].items():
        sizes = report.get("_sizes", {})
        print(f"\nTrack {track.name} / {args.scenario} / fresh forget set {split}: {args.seeds} originals, "
              f"{2 * args.seeds} oracles (half reference, half the 'oracle' arm); sizes {sizes}")
        print(format_table(report, columns))
    pooled = results.get("report_pooled", {})
    if pooled and len(results["report"]) > 1:
        print(f"\npooled over the {len(results['report'])} fresh forget sets (mean, 95% CI over models: bootstrap; "
              "jackknife for gKLoM):")
        for arm, v in pooled.items():
            ci = v.get("ci", {})
            parts = [f"{k} {v[k]:.3g} [{ci[k][0]:.3g}, {ci[k][1]:.3g}]" for k in
                     ("acc_forget", "acc_test", "gklom_forget_p50", "gklom_test_p50") if k in v and k in ci]
            print(f"  {arm:26s} " + "  ".join(parts))
    print("\nchosen configurations (tuned on forget set 0 with its own originals and oracles; share of oracle "
          "resamples choosing the same):")
    for m, c in results["chosen"].items():
        st = results.get("stability", {}).get(m)
        print(f"  {m}: {c}" + (f"  (stability {st['chosen_share']:.2f})" if st else ""))
    t = results["timing"]
    print(f"\ntime: models {t['models_s']:.0f} s, tuning {t['tuning_s']:.0f} s, report {t['report_s']:.0f} s, "
          f"total {t['total_s']:.0f} s")
    base = os.path.join("bench", "results", f"unlearn_{track.name}_{args.scenario}")
    json_path = args.json or base + ".json"
    png_path = args.png or base + ".png"
    for out_path in (json_path, png_path):  # a fresh checkout has no bench/results/
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(results, f, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    try:
        plot_tradeoff(results, png_path)
        print(f"wrote {json_path} and {png_path}")
    except ImportError:
        print(f"wrote {json_path} (matplotlib not installed: no plot)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
