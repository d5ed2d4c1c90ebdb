"""Timing benchmarks (run by hand: `make bench`); results go to benchmarks/results/<host>-<date>.json.

Measures, on this machine's CPU: loading and verifying a MedMNIST file, training throughput per
architecture (forward + backward + Adam step, batch 128), and inference latency at batch 1 and 64.
Timings are medians of repeated runs; they belong here, not in tests.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from xaiprune import data, models


def median_seconds(fn, repeat: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_data(flag: str, size: int) -> dict:
    load = median_seconds(lambda: [data.load_split(flag, s, size) for s in data.SPLITS], repeat=3)
    return {"load_all_splits_s": load}


def bench_arch(arch: str, channels: int, size: int, n_classes: int, repeat: int) -> dict:
    torch.manual_seed(0)
    model = models.build(arch, channels, n_classes)
    opt = torch.optim.Adam(model.parameters())
    x, y = torch.randn(128, channels, size, size), torch.randint(0, n_classes, (128,))

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    model.train()
    train_s = median_seconds(step, repeat)
    model.eval()
    out = {"params_M": sum(p.numel() for p in model.parameters()) / 1e6,
           "train_images_per_s": 128 / train_s}
    with torch.no_grad():
        for batch in (1, 64):
            xb = torch.randn(batch, channels, size, size)
            out[f"latency_batch{batch}_ms"] = 1e3 * median_seconds(lambda: model(xb), repeat * 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--flag", default="pneumoniamnist")
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    info = data.check_flag_size(args.flag, args.size)
    results = {"machine": f"{platform.node()} {platform.machine()}", "threads": torch.get_num_threads(),
               "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "flag": args.flag, "size": args.size, "data": bench_data(args.flag, args.size), "archs": {}}
    for arch in models.ARCHS:
        results["archs"][arch] = bench_arch(arch, info["n_channels"], args.size, len(info["label"]), args.repeat)
        n_train = info["n_samples"]["train"]
        results["archs"][arch]["epoch_estimate_s"] = n_train / results["archs"][arch]["train_images_per_s"]
        print(arch, json.dumps({k: round(v, 2) for k, v in results["archs"][arch].items()}), flush=True)
    out = Path(__file__).parent / "results" / f"{platform.node()}-{dt.date.today()}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"data: {results['data']}\nwritten: {out}")


if __name__ == "__main__":
    main()
