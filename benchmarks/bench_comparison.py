"""Time the work of notebook 04 (pruning comparison) on the real checkpoint, part by part; results go to
benchmarks/results/<host>-<date>-comparison-<path>.json, with the sweep table beside it as CSV.

Parts, with the default profile's parameters of ``04_pruning_comparison`` (override with the options):

1. ``sweep``: every criterion at every ratio on every reference draw (section 1);
2. ``sensitivity``: one segment pruned at a time (section 3);
3. ``study``: reference-set sizes and the class-biased draw (section 4);
4. ``variant``: BatchNorm re-estimation, draw 0 (section 6);
5. ``bootstrap``: ACC and AUC of every stored model on the test resamples (new path only).

``--path new`` runs the library (:mod:`xaiprune.pruning.comparison`: score once per draw, prune with fixed scores,
each distinct model evaluated once, in one batch, from the first changed segment). ``--path legacy`` runs
the loops notebook 04 ran before (kept here, verbatim in effect, as the reference): ``prune.prune`` with
rescoring at every ratio, ``train.evaluate`` in batches of 64, identical models found by a weight
fingerprint. ``--against sweep.csv`` compares the sweep with another run's (e.g. the notebook's
``sweep_<arch>.csv`` or the legacy path's CSV) and prints the largest differences. ``--cprofile`` adds
the 25 functions with the largest cumulative time. Another process using the CPU disturbs the timings:
the load average before and after is recorded, and each part's CPU time (this process, all threads)
beside its wall time.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import io
import json
import os
import platform
import pstats
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench_pruning import load_model
from xaiprune import data, stats, train
from xaiprune.pruning import comparison, prune, repairs

CRITERIA = ["lrp", "lrp_epsilon", "deeplift", "ig", "gradxact", "taylor", "l1", "random"]
RATIOS = [round(0.1 * i, 1) for i in range(10)]
PARTS = ("sweep", "sensitivity", "study", "variant", "bootstrap")


# ----- the path notebook 04 took before (reference for timings and agreement) -----

def _legacy_fingerprint(model: torch.nn.Module) -> tuple:
    return tuple((n, tuple(t.shape), float(t.double().sum())) for n, t in model.state_dict().items())


def _legacy_precompute(model, criterion, reference, **options) -> dict:
    make = prune.CRITERIA[criterion]
    if not hasattr(make, "xai_method"):
        return dict(options)
    method, defaults = make.xai_method
    from xaiprune.pruning import xai
    return {"scores": xai.filter_scores(model, reference, method, **{**defaults, **options})}


def legacy_sweep(model, test, criteria, ratios, references, scope="global", **options) -> pd.DataFrame:
    base_eval = train.evaluate(model, test)
    evaluated, rows = {}, []
    for criterion in criteria:
        for draw, ref in enumerate(comparison._draws(criterion, references)):
            kwargs = _legacy_precompute(model, criterion, ref, **options)
            for ratio in ratios:
                pruned, rep = prune.prune(model, criterion, ratio, scope=scope, reference=ref, seed=draw,
                                          input_shape=tuple(test.x.shape[1:]), **kwargs)
                key = _legacy_fingerprint(pruned)  # identical models (e.g. LRP and GradxAct) evaluated once
                if ratio > 0 and key not in evaluated:
                    evaluated[key] = train.evaluate(pruned, test)
                ev = base_eval if ratio == 0 else evaluated[key]
                rows.append({"criterion": criterion, "draw": draw, "ratio": ratio, **ev, "macs": rep.macs,
                             "params": rep.params, "weight_bytes": rep.weight_bytes,
                             "out_bytes": sum(list(rep.segment_out_bytes.values())[:-1])})
    return pd.DataFrame(rows)


def legacy_sensitivity(model, test, levels, references, criterion="lrp") -> pd.DataFrame:
    base_eval, rows = train.evaluate(model, test), []
    for draw, ref in enumerate(comparison._draws(criterion, references)):
        kwargs = _legacy_precompute(model, criterion, ref)
        for segment in model.segments:
            for level in levels:
                pruned, rep = prune.prune_segment(model, segment, level, criterion, reference=ref, seed=draw,
                                                  input_shape=tuple(test.x.shape[1:]), **kwargs)
                ev = base_eval if level == 0 else train.evaluate(pruned, test)
                rows.append({"segment": segment, "level": level, "draw": draw, **ev,
                             "macs": rep.segment_macs[segment], "out_bytes": rep.segment_out_bytes[segment]})
    return pd.DataFrame(rows)


# ----- the parts -----

def run_parts(path: str, model, val, test, args) -> tuple[dict, dict]:
    refs = [data.reference_set(val, n_per_class=args.n_per_class, seed=k) for k in range(args.draws)]
    options = {"steps": args.ig_steps}
    timings, cpu_times, out = {}, {}, {}
    ev = comparison.Evaluator(model, test, batch_size=args.batch_size) if path == "new" else None

    def sweep(criteria, ratios, references):
        if path == "new":
            return comparison.sweep(model, test, criteria, ratios, references, progress=False, evaluator=ev, **options)
        return legacy_sweep(model, test, criteria, ratios, references, **options)

    def timed(name, fn):
        if name not in args.parts:
            return None
        start, cpu = time.perf_counter(), time.process_time()
        result = fn()
        timings[name] = time.perf_counter() - start
        cpu_times[name] = time.process_time() - cpu
        print(f"{name}: {timings[name]:.1f} s wall, {cpu_times[name]:.1f} s CPU"
              + (f" ({len(ev.scores)} distinct models so far)" if ev else ""), flush=True)
        return result

    out["sweep"] = timed("sweep", lambda: sweep(args.criteria, args.ratios, refs))
    out["sensitivity"] = timed("sensitivity", lambda: comparison.segment_sensitivity(
        model, test, args.ratios, refs[:2], "lrp", progress=False, evaluator=ev) if path == "new"
        else legacy_sensitivity(model, test, args.ratios, refs[:2], "lrp"))

    def study():
        frames = [sweep(["lrp", "taylor"], [0.1, 0.2, 0.3, 0.5],
                        [data.reference_set(val, n_per_class=n, seed=k) for k in range(3)]) for n in (1, 5, 10, 50)]
        bias = data.skewed_fractions(len(data.class_names(val.flag)), 0.9)
        frames.append(sweep(["lrp", "taylor"], [0.1, 0.2, 0.3, 0.5],
                            [data.reference_set(val, n_per_class=args.n_per_class, seed=k, bias=bias) for k in range(3)]))
        return frames
    timed("study", study)

    def variant():
        rows = []
        for c in ("lrp", "taylor"):
            ranked = ev.ranking(c, refs[0], seed=0, **options) if ev else None
            kwargs = {} if ev else _legacy_precompute(model, c, refs[0], **options)
            for r in args.ratios:
                pruned = ranked.prune(r)[0] if ev else prune.prune(model, c, r, reference=refs[0], seed=0, **kwargs)[0]
                plain = ev.measure(ranked, r) if ev else train.evaluate(pruned, test)
                recal = repairs.reestimate_batchnorm(pruned, refs[0].x)
                rows.append((c, r, plain["acc"], (ev.evaluate(recal) if ev else train.evaluate(recal, test))["acc"]))
        return rows
    timed("variant", variant)
    if path == "new":
        def bootstrap():  # resampled metrics of every stored model, and the verdicts that use them
            res = stats.resampled_metrics(ev.scores, ev.y, ev.task, stats.resample_weights(len(test), seed=0))
            if out.get("sweep") is not None:
                return [stats.xai_against_baselines(out["sweep"], m, res) for m in ("auc", "acc")]
            return res
        timed("bootstrap", bootstrap)
        out["distinct_models"] = len(ev.scores)
        out["batch_size"] = ev.batch_size
    out["cpu_seconds"] = cpu_times
    return timings, out


def compare(sweep: pd.DataFrame, other_csv: Path) -> dict:
    """Largest differences between two sweep tables, row by row (criterion, draw, ratio)."""
    other = pd.read_csv(other_csv)
    keys = ["criterion", "draw", "ratio"]
    merged = sweep.merge(other, on=keys, suffixes=("", "_other"), how="outer", indicator=True)
    out = {"rows": len(merged), "unmatched": int((merged["_merge"] != "both").sum())}
    both = merged[merged["_merge"] == "both"]
    for col in ("acc", "auc", "macs", "params", "weight_bytes", "out_bytes"):
        diff = (both[col] - both[f"{col}_other"]).abs()
        out[col] = {"max_abs_diff": float(diff.max()), "rows_different": int((diff > 0).sum())}
        if col in ("acc", "auc") and diff.max() > 0:
            worst = both.loc[diff.idxmax()]
            out[col]["worst"] = {k: (worst[k].item() if hasattr(worst[k], "item") else worst[k])
                                 for k in (*keys, col, f"{col}_other")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", choices=("new", "legacy"), default="new")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--arch", default="vgg16_bn")
    parser.add_argument("--flag", default="pneumoniamnist")
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--checkpoint", default=None, help="default: the one listed by 02_train, else the cache")
    parser.add_argument("--criteria", nargs="+", default=CRITERIA)
    parser.add_argument("--ratios", type=float, nargs="+", default=RATIOS)
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--n-per-class", type=int, default=10)
    parser.add_argument("--ig-steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=comparison.EVAL_BATCH, help="new path: images per forward pass")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads; 1 makes CPU time a steady measure of work on a busy machine")
    parser.add_argument("--against", type=Path, default=None, help="a sweep CSV to compare the sweep with")
    parser.add_argument("--cprofile", action="store_true", help="also print the top functions by cumulative time")
    args = parser.parse_args()
    if "bootstrap" in args.parts and args.path == "legacy":
        args.parts.remove("bootstrap")

    if args.threads:
        torch.set_num_threads(args.threads)
    model, weights = load_model(args.arch, args.flag, args.size, args.checkpoint)
    if weights == "untrained":
        sys.exit("no trained checkpoint found: pass --checkpoint (the timings and the agreement need the real model)")
    val = data.load_split(args.flag, "val", args.size)
    test = data.load_split(args.flag, "test", args.size)
    load_before = os.getloadavg()
    print(f"{args.arch} ({weights}) on {args.flag}: {args.path} path, parts {args.parts}; "
          f"{torch.get_num_threads()} threads; load average {load_before[0]:.2f}", flush=True)
    profiler = cProfile.Profile() if args.cprofile else None
    wall = time.perf_counter()
    if profiler:
        profiler.enable()
    timings, out = run_parts(args.path, model, val, test, args)
    if profiler:
        profiler.disable()
    total = time.perf_counter() - wall

    stamp = f"{platform.node()}-{dt.date.today()}-comparison-{args.path}"
    folder = Path(__file__).parent / "results"
    folder.mkdir(exist_ok=True)
    results = {"machine": f"{platform.node()} {platform.machine()}", "cpu_count": os.cpu_count(),
               "threads": torch.get_num_threads(), "torch": torch.__version__,
               "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "load_average_before": load_before, "load_average_after": os.getloadavg(),
               "weights": weights, "path": args.path, "parameters": {k: v for k, v in vars(args).items()
                                                                     if k not in ("against", "cprofile")},
               "seconds": timings, "total_s": total,
               **{k: out[k] for k in ("cpu_seconds", "distinct_models", "batch_size") if k in out}}
    if out.get("sweep") is not None:
        sweep = out["sweep"].drop(columns="model", errors="ignore")
        sweep.to_csv(folder / f"{stamp}-sweep.csv", index=False)
        if args.against:
            results["agreement"] = {"against": str(args.against), **compare(sweep, args.against)}
    if profiler:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(25)
        results["cprofile_top"] = text.getvalue()
        print(text.getvalue())
    (folder / f"{stamp}.json").write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps({k: results[k] for k in ("seconds", "cpu_seconds", "total_s")}, indent=1))
    if "agreement" in results:
        print("agreement:", json.dumps(results["agreement"], indent=1, default=str))
    print(f"written: {folder / stamp}.json")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
