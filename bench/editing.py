"""Editing benchmarks on the bundled model (never part of `make test`).

    python bench/editing.py time      [--edits 10,100]      MEMIT wall time, cached vs uncached stats
    python bench/editing.py stats     [--sizes 1000,10000,100000] [--edits 30]
                                       edit quality vs the size of the key-statistics sample
    python bench/editing.py sequential [--edits 100] [--batch 10]
                                       AlphaEdit vs MEMIT under the same sequential schedule

Every figure is measured in the same run on the same machine; ratios are what to compare.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time

import torch


def _setup(threads: int):
    torch.set_num_threads(threads)
    from excise.editing.requests import builtin_requests
    from excise.models import load_model

    model, tokenizer = load_model("smollm2-135m")
    return model, tokenizer, builtin_requests()


def bench_time(args) -> None:
    import os

    from excise.editing import edit

    model, tokenizer, requests = _setup(args.threads)
    rows = []
    for n in [int(x) for x in args.edits.split(",")]:
        chosen = (requests * (n // len(requests) + 1))[:n]
        home = tempfile.mkdtemp()
        os.environ["EXCISE_HOME"] = home  # an empty cache: statistics computed in the run
        start = time.perf_counter()
        edit(model, tokenizer, chosen, "memit", progress=False, prefixes=args.prefixes)
        uncached = time.perf_counter() - start
        start = time.perf_counter()
        edit(model, tokenizer, chosen, "memit", progress=False, prefixes=args.prefixes)
        cached = time.perf_counter() - start
        shutil.rmtree(home, ignore_errors=True)
        rows.append(
            {"edits": n, "uncached_s": uncached, "cached_s": cached, "ratio": cached / uncached}
        )
        print(json.dumps(rows[-1]), flush=True)


def bench_stats(args) -> None:
    from excise.editing import edit
    from excise.editing.metrics import edit_metrics

    model, tokenizer, requests = _setup(args.threads)
    chosen = requests[: args.edits]
    for size in [int(x) for x in args.sizes.split(",")]:
        result = edit(
            model,
            tokenizer,
            chosen,
            "memit",
            progress=False,
            stats_tokens=size,
            prefixes=args.prefixes,
        )
        metrics = edit_metrics(result.model, tokenizer, chosen, generation=False)
        print(json.dumps({"stats_tokens": size, **metrics}), flush=True)


def bench_sequential(args) -> None:
    from excise.editing import edit
    from excise.editing.metrics import edit_metrics
    from excise.editing.pipeline import utility_probe

    model, tokenizer, requests = _setup(args.threads)
    chosen = requests[: args.edits]
    quick, full = utility_probe(model, tokenizer)
    print(json.dumps({"method": "original", **full(model)}), flush=True)
    for method in args.methods.split(","):
        start = time.perf_counter()
        result = edit(
            model,
            tokenizer,
            chosen,
            method,
            batch_size=args.batch,
            monitor=quick,
            progress=False,
            prefixes=args.prefixes,
        )
        last = chosen[-args.batch :]
        first = chosen[: args.batch]
        row = {
            "method": method,
            "seconds": time.perf_counter() - start,
            **full(result.model),
            "last_batch": edit_metrics(result.model, tokenizer, last, generation=False),
            "first_batch": edit_metrics(result.model, tokenizer, first, generation=False),
            "all": edit_metrics(result.model, tokenizer, chosen, generation=False),
            "trace": [b["monitor"]["retain_accuracy"] for b in result.batches],
        }
        print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=("time", "stats", "sequential"))
    parser.add_argument("--edits", default=None)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--methods", default="alphaedit,memit")
    parser.add_argument("--prefixes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.what == "time":
        args.edits = args.edits or "10,100"
        bench_time(args)
    elif args.what == "stats":
        args.edits = int(args.edits or 30)
        bench_stats(args)
    else:
        args.edits = int(args.edits or 100)
        bench_sequential(args)


if __name__ == "__main__":
    main()
