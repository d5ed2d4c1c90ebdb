"""Timing benchmarks of XAI scoring and pruning (run by hand); results go to
benchmarks/results/<host>-<date>-pruning-<arch>[-quick].json.

Measures, on this machine's CPU, for one architecture (``--arch``, default VGG-16-BN) on ``--flag``:

1. scoring: the time to score every conv filter with each XAI method (LRP epsilon, LRP z+, DeepLIFT,
   IG, GradxAct) from ``--n-per-class`` reference images per class. Target: LRP in under 2 s.
2. pruning: the time of ``prune.prune(model, criterion, 0.5)`` for LRP (precomputed scores, and
   with scoring included), L1, Taylor and random. Target: one model at one ratio in under 1 s.
3. latency against FLOPs: pruned models at ratios 0, 0.1, ..., 0.9 with LRP (global scope) and L1
   (per-layer scope), at batch 1 and 64. For each ratio: ``flops_reduction = 1 - macs / macs_0``,
   ``ideal_speedup = macs_0 / macs``, ``speedup = latency_0 / latency``,
   ``achieved_over_ideal = speedup / ideal_speedup`` and
   ``efficiency = (1 - 1 / speedup) / flops_reduction`` (the fraction of the FLOPs reduction
   realised as latency reduction). Target: at ratio 0.5, batch-1 ``achieved_over_ideal >= 0.7``.

The model is the trained checkpoint listed in ``artifacts/default/02_train/checkpoints.json`` (the default
profile's last run of 02; else the cached checkpoint of the default ``TrainConfig``), else an untrained model:
timings do not depend on the weights, and the output says which. The reference set is drawn from the validation split
(``$MEDMNIST_ROOT`` or ``data/medmnist/``; no download unless ``--download``), else random tensors of
the same shape, and the output says so. Timings are medians of repeated runs. Another process using
the CPU makes latencies noisy (OpenMP threads then wait on each other): the load average is recorded,
and ``--threads 1`` gives steadier numbers on a busy machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from xaiprune import data, models, paths, train
from xaiprune.pruning import prune, xai

# (label, xai method, options): the scoring methods timed in part 1.
SCORING = (("lrp", "lrp", {}), ("lrp_epsilon", "lrp_epsilon", {}), ("deeplift", "deeplift", {}),
           ("ig", "ig", {}), ("gradxact", "gradxact", {}))
PRUNE_CRITERIA = ("lrp", "l1", "taylor", "random")
SWEEPS = (("lrp", "global"), ("l1", "per-layer"))  # (criterion, scope) of the latency sweeps
RATIOS = tuple(round(0.1 * i, 1) for i in range(10))
QUICK_RATIOS = (0.0, 0.5, 0.9)
BATCHES = (1, 64)
TARGET_SCORING_S = 2.0
TARGET_PRUNE_S = 1.0
TARGET_RATIO, TARGET_ACHIEVED_OVER_IDEAL = 0.5, 0.7


def timed_runs(fn, repeat: int, warmup: int = 1) -> tuple[float, list[float], object]:
    """Median seconds of ``repeat`` calls after ``warmup`` calls, every time, and the last result."""
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, result


def load_model(arch: str, flag: str, size: int, checkpoint: str | None) -> tuple[models.SegmentedModel, str]:
    """The trained model and its checkpoint path (relative to the project), else an untrained one."""
    info = data.check_flag_size(flag, size)
    candidates = [Path(checkpoint)] if checkpoint else []
    listing = paths.stage_dir("02_train", "default") / "checkpoints.json"  # the default profile's last 02 run
    if not checkpoint and listing.is_file():
        entry = json.loads(listing.read_text()).get(arch)
        if entry and entry.get("checkpoint"):
            candidates.append(paths.ROOT / entry["checkpoint"])
    if not checkpoint:
        candidates.append(train.checkpoint_path(train.TrainConfig(arch=arch, flag=flag, size=size)))
    for path in candidates:
        if not path.is_file():
            continue
        trained = train.load(path)
        cfg = trained.config
        if (cfg.arch, cfg.flag, cfg.size) != (arch, flag, size):
            print(f"note: {path} is {cfg.arch} on {cfg.flag} at {cfg.size}, not {arch} on {flag} at {size}; "
                  "skipped")
            continue
        try:
            shown = str(path.resolve().relative_to(paths.ROOT))
        except ValueError:
            shown = str(path)
        return trained.model.eval(), shown
    torch.manual_seed(0)
    model = models.build(arch, info["n_channels"], len(info["label"])).eval()
    return model, "untrained"


def load_reference(flag: str, size: int, n_per_class: int, download: bool) -> tuple[data.Split, str]:
    """The reference set from the val split, else random tensors shaped like it (and which one it is)."""
    info = data.check_flag_size(flag, size)
    try:
        path = data.resolve(flag, size, allow_download=download)
        val = data.load_split(flag, "val", size, data_root=path.parent)
        return data.reference_set(val, n_per_class), str(path)
    except data.DataError as exc:
        print(f"note: using random tensors as the reference set, because:\n{exc}", file=sys.stderr)
    n_classes = len(info["label"])
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n_per_class * n_classes, info["n_channels"], size, size, generator=gen) * 2 - 1
    y = torch.arange(n_classes).repeat_interleave(n_per_class)
    if train.is_multilabel(flag):
        y = torch.nn.functional.one_hot(y, n_classes)
    return data.Split(x=x, y=y, flag=flag, split="val", size=size), "random"


def bench_scoring(model, ref: data.Split, repeat: int, warmup: int) -> tuple[dict, xai.FilterScores]:
    out, lrp_scores = {}, None
    for label, method, options in tqdm(SCORING, desc="scoring", unit="method", file=sys.stderr):
        med, times, scores = timed_runs(lambda: xai.filter_scores(model, ref, method, **options), repeat, warmup)
        out[label] = {"method": method, "options": options, "median_s": med, "runs_s": times,
                      "n_images": scores.n_images, "n_layers": len(scores.layers),
                      "n_filters": sum(len(scores.total(n)) for n in scores.layers)}
        if label == "lrp":
            lrp_scores = scores
    for label in ("lrp", "lrp_epsilon"):
        out[label]["target_s"] = TARGET_SCORING_S
        out[label]["target_met"] = out[label]["median_s"] < TARGET_SCORING_S
    return out, lrp_scores


def bench_prune(model, ref: data.Split, lrp_scores: xai.FilterScores, repeat: int, warmup: int) -> dict:
    runs = [(c, {"scores": lrp_scores} if c == "lrp" else {}) for c in PRUNE_CRITERIA]
    runs.insert(1, ("lrp+scoring", {}))
    out = {}
    for label, options in tqdm(runs, desc="pruning", unit="criterion", file=sys.stderr):
        criterion = label.split("+")[0]
        med, times, (_, report) = timed_runs(
            lambda: prune.prune(model, criterion, TARGET_RATIO, reference=ref, **options), repeat, warmup)
        out[label] = {"criterion": criterion, "ratio": TARGET_RATIO, "scope": "global",
                      "precomputed_scores": "scores" in options,
                      "call_median_s": med, "call_runs_s": times,
                      "score_and_prune_s": report.seconds,  # the report's own time, without the cost report
                      "macs": report.macs, "params": report.params,
                      "target_s": TARGET_PRUNE_S, "target_met": med < TARGET_PRUNE_S}
    return out


def latencies(model, input_shape, repeat: int) -> dict[int, float]:
    return {b: prune.measure_latency(model, input_shape, b, repeat=repeat) for b in BATCHES}


def bench_sweep(model, ref: data.Split, criterion: str, scope: str, ratios, lrp_scores,
                latency_repeat: int, bar: tqdm) -> dict:
    input_shape = tuple(ref.x.shape[1:])
    base = prune.report_for(model, input_shape)
    base_filters = sum(base.filters.values())
    bar.set_postfix_str(f"{criterion}/{scope} unpruned")
    base_lat = latencies(model, input_shape, latency_repeat)
    options = {"scores": lrp_scores} if criterion in prune.XAI_CRITERIA else {}
    rows = []
    for ratio in ratios:
        bar.set_postfix_str(f"{criterion}/{scope} ratio {ratio}")
        if ratio == 0:
            report, lat = base, base_lat  # the unpruned model is its own ratio-0 point
        else:
            pruned, report = prune.prune(model, criterion, ratio, scope=scope, reference=ref, **options)
            lat = latencies(pruned, input_shape, latency_repeat)
            del pruned
        reduction = 1 - report.macs / base.macs
        row = {"ratio": ratio, "filters_removed": 1 - sum(report.filters.values()) / base_filters,
               "params": report.params, "macs": report.macs, "flops": report.flops,
               "flops_reduction": reduction, "ideal_speedup": base.macs / report.macs, "batches": {}}
        for b in BATCHES:
            speedup = base_lat[b] / lat[b]
            row["batches"][b] = {
                "latency_ms": lat[b], "speedup": speedup,
                "achieved_over_ideal": speedup / row["ideal_speedup"],
                "efficiency": (1 - 1 / speedup) / reduction if reduction > 0 else None}
        rows.append(row)
        bar.update()
    at_target = next((r for r in rows if abs(r["ratio"] - TARGET_RATIO) < 1e-9), None)
    target = {"ratio": TARGET_RATIO, "batch": 1, "threshold": TARGET_ACHIEVED_OVER_IDEAL,
              "achieved_over_ideal": None, "met": None}
    if at_target is not None:
        value = at_target["batches"][1]["achieved_over_ideal"]
        target.update(achieved_over_ideal=value, met=value >= TARGET_ACHIEVED_OVER_IDEAL)
    # Pruning never makes the model slower than unpruned nor faster than its MACs allow (by much):
    # either is a sign of interference from another process.
    suspect = any(r["batches"][b]["achieved_over_ideal"] > 1.2 or r["batches"][b]["speedup"] < 1 / 1.2
                  for r in rows for b in BATCHES)
    return {"criterion": criterion, "scope": scope, "macs_unpruned": base.macs, "params_unpruned": base.params,
            "latency_unpruned_ms": base_lat, "rows": rows, "target": target, "suspect": suspect}


def yes_no(met: bool | None) -> str:
    return "n/a" if met is None else ("MET" if met else "NOT MET")


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_tables(results: dict) -> None:
    print(f"\n== scoring every filter of {results['arch']} from {results['reference']['n_images']} "
          f"images ({results['reference']['n_per_class']} per class), median of {results['repeat']} ==")
    print(f"{'method':<10} {'median s':>9} {'filters':>8}  runs s  (target: LRP < {TARGET_SCORING_S:g} s)")
    for label, r in results["scoring"].items():
        verdict = f"  {yes_no(r['target_met'])}" if "target_met" in r else ""
        runs = ", ".join(f"{t:.2f}" for t in r["runs_s"])
        print(f"{label:<10} {r['median_s']:>9.3f} {r['n_filters']:>8}  [{runs}]{verdict}")

    print(f"\n== prune(model, criterion, {TARGET_RATIO}), global scope, median of {results['repeat']} "
          f"(target: < {TARGET_PRUNE_S:g} s per call) ==")
    print(f"{'criterion':<12} {'call s':>7} {'score+prune s':>14} {'MACs M':>8}  target")
    for label, r in results["pruning"].items():
        print(f"{label:<12} {r['call_median_s']:>7.3f} {r['score_and_prune_s']:>14.3f} "
              f"{r['macs'] / 1e6:>8.1f}  {yes_no(r['target_met'])}")
    print("  (call s: the whole prune() call incl. the MACs/params cost report; score+prune s: "
          "PruneReport.seconds of the last run)")

    for sweep in results["latency"]:
        lat0 = sweep["latency_unpruned_ms"]
        print(f"\n== latency vs FLOPs: {sweep['criterion']}, scope {sweep['scope']} (unpruned "
              f"{sweep['macs_unpruned'] / 1e6:.1f} M MACs, b1 {lat0[1]:.2f} ms, b64 {lat0[64]:.1f} ms; "
              f"median of {results['latency_repeat']}) ==")
        print(f"{'ratio':>5} {'filt.rm':>7} {'MACs M':>8} {'FLOPs red':>9} {'ideal x':>7} | "
              f"{'b1 ms':>7} {'b1 x':>5} {'b1 ach/id':>9} {'b1 eff':>6} | "
              f"{'b64 ms':>7} {'b64 x':>5} {'b64 ach/id':>10} {'b64 eff':>7}")
        for r in sweep["rows"]:
            b1, b64 = r["batches"][1], r["batches"][64]
            print(f"{r['ratio']:>5.1f} {r['filters_removed']:>7.2f} {r['macs'] / 1e6:>8.1f} "
                  f"{r['flops_reduction']:>9.3f} {r['ideal_speedup']:>7.2f} | "
                  f"{b1['latency_ms']:>7.2f} {b1['speedup']:>5.2f} {b1['achieved_over_ideal']:>9.2f} "
                  f"{fmt(b1['efficiency'], '6.2f'):>6} | "
                  f"{b64['latency_ms']:>7.1f} {b64['speedup']:>5.2f} {b64['achieved_over_ideal']:>10.2f} "
                  f"{fmt(b64['efficiency'], '7.2f'):>7}")
        t = sweep["target"]
        print(f"target at ratio {t['ratio']}: batch-1 speedup / ideal speedup = "
              f"{fmt(t['achieved_over_ideal'], '.2f')} (>= {t['threshold']}): {yes_no(t['met'])}")
        if sweep["suspect"]:
            print("note: a speedup above 1.2 x ideal or below 1/1.2 of the unpruned speed: the timings were "
                  "probably disturbed by other load on the CPU; rerun on an idle machine"
                  + ("" if results["threads"] == 1 else " or with --threads 1"))

    print("\n== targets ==")
    for label in ("lrp", "lrp_epsilon"):
        r = results["scoring"][label]
        print(f"scoring {label:<10} {r['median_s']:.3f} s < {TARGET_SCORING_S:g} s: {yes_no(r['target_met'])}")
    for label, r in results["pruning"].items():
        print(f"prune {label:<12} {r['call_median_s']:.3f} s < {TARGET_PRUNE_S:g} s: {yes_no(r['target_met'])}")
    for sweep in results["latency"]:
        t = sweep["target"]
        print(f"latency {sweep['criterion']}/{sweep['scope']:<10} ach/ideal at {t['ratio']} = "
              f"{fmt(t['achieved_over_ideal'], '.2f')} >= {t['threshold']}: {yes_no(t['met'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vgg16_bn", choices=sorted(models.ARCHS))
    parser.add_argument("--flag", default="pneumoniamnist")
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--n-per-class", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3, help="runs per scoring/pruning timing (median)")
    parser.add_argument("--latency-repeat", type=int, default=20, help="forward passes per latency (median)")
    parser.add_argument("--ratios", type=float, nargs="+", default=None, help="default 0, 0.1, ..., 0.9")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--checkpoint", default=None, help="a checkpoint to use instead of the listed one")
    parser.add_argument("--download", action="store_true", help="download the data file if it is missing")
    parser.add_argument("--quick", action="store_true",
                        help="smoke check: ratios 0, 0.5, 0.9, repeat 1, no per-method warm-up, latency repeat 5")
    args = parser.parse_args()
    data.check_flag_size(args.flag, args.size)
    if args.threads:
        torch.set_num_threads(args.threads)
    ratios = tuple(args.ratios) if args.ratios else (QUICK_RATIOS if args.quick else RATIOS)
    if any(not 0 <= r < 1 for r in ratios):
        parser.error(f"--ratios {ratios}: expected fractions in [0, 1)")
    repeat = 1 if args.quick else args.repeat
    warmup = 0 if args.quick else 1
    latency_repeat = 5 if args.quick else args.latency_repeat

    wall = time.perf_counter()
    load_before = os.getloadavg()
    cores = os.cpu_count() or 1
    model, weights = load_model(args.arch, args.flag, args.size, args.checkpoint)
    ref, ref_source = load_reference(args.flag, args.size, args.n_per_class, args.download)
    print(f"{args.arch} on {args.flag} at {args.size}: weights {weights}; reference set {len(ref)} images "
          f"from {ref_source}; {torch.get_num_threads()} threads; load average {load_before[0]:.2f} "
          f"on {cores} cores" + ("; QUICK smoke check" if args.quick else ""), flush=True)
    if weights == "untrained":
        print("note: no trained checkpoint found; timing an UNTRAINED model (timings do not depend on weights)")
    if load_before[0] > 0.5:
        print(f"warning: load average {load_before[0]:.2f} before starting: another process is using the CPU, "
              "latencies will be noisy" + ("" if torch.get_num_threads() == 1 else " (try --threads 1)"))

    # One untimed LRP scoring warms up Captum, autograd and the thread pool for every method.
    xai.filter_scores(model, ref, "lrp")
    scoring, lrp_scores = bench_scoring(model, ref, repeat, warmup)
    pruning = bench_prune(model, ref, lrp_scores, repeat, warmup)
    sweeps = []
    with tqdm(total=len(SWEEPS) * len(ratios), desc="latency", unit="model", file=sys.stderr) as bar:
        for criterion, scope in SWEEPS:
            sweeps.append(bench_sweep(model, ref, criterion, scope, ratios, lrp_scores, latency_repeat, bar))

    results = {
        "machine": f"{platform.node()} {platform.machine()}", "node": platform.node(),
        "processor": platform.processor(), "cpu_count": cores, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(),
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "arch": args.arch, "flag": args.flag, "size": args.size, "weights": weights,
        "reference": {"source": ref_source, "n_per_class": args.n_per_class, "n_images": len(ref)},
        "quick": args.quick, "repeat": repeat, "warmup": warmup, "latency_repeat": latency_repeat,
        "ratios": list(ratios), "batches": list(BATCHES),
        "targets": {"scoring_s": TARGET_SCORING_S, "prune_s": TARGET_PRUNE_S,
                    "latency": {"ratio": TARGET_RATIO, "batch": 1,
                                "achieved_over_ideal_at_least": TARGET_ACHIEVED_OVER_IDEAL}},
        "scoring": scoring, "pruning": pruning, "latency": sweeps,
    }
    results["total_s"] = time.perf_counter() - wall
    print_tables(results)
    name = f"pruning-{args.arch}" + ("-quick" if args.quick else "")
    out = Path(__file__).parent / "results" / f"{platform.node()}-{dt.date.today()}-{name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\ntotal {results['total_s']:.0f} s; load average after {results['load_average_after'][0]:.2f}\n"
          f"written: {out}")


if __name__ == "__main__":
    main()
