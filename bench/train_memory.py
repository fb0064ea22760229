"""Training memory on the bundled model: the loop's memory options, one fresh process each
(never part of `make test`).

    python bench/train_memory.py [--threads 2] [--method npo] [--steps 7] [--warmup 1]
                                 [--batch-size 8] [--lr 1e-5] [--repeat 1] [--json FILE]
                                 [--configs LABEL,...] [--optimizer-step]

Full-parameter training of smollm2-135m (float32) on chem-symbols, batch 8 forget + 8 retain,
through the one loop (excise.train.train), under each configuration of TrainConfig's memory
options: the ordinary loop (fused AdamW, fp32 states), the optimizer in the backward
(``optimizer_in_backward``), bf16 states, both, both with activation checkpointing, checkpointing
alone, and 8-bit states (bitsandbytes) where it is installed. Each row is a fresh process
(bench/train_step.py's worker): peak resident memory (ru_maxrss), its rise over the loaded model,
and the step time (median of the measured steps; with ``--repeat`` the fastest round, rounds
interleaved so that other jobs' load hits every configuration). Ratios are to the ordinary loop
measured in the same run. The in-backward rows do not clip gradients (the ordinary loop clips at
1.0), so their weights differ from the ordinary loop's by that.

``--optimizer-step``: also the seconds of one AdamW step over tensors of the bundled model's
shapes (random weights and gradients, no model loaded), torch's fused AdamW (fp32 states, the
ordinary loop's) against the bf16-state AdamW (excise.train.adamw_bf16), best of 5, in this
process.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step import machine_line, worker_result  # noqa: E402

CONFIGS = {
    "baseline": {},
    "in-backward": {"optimizer_in_backward": True},
    "bf16 states": {"optimizer_states": "bf16"},
    "in-backward + bf16": {"optimizer_in_backward": True, "optimizer_states": "bf16"},
    "in-backward + bf16 + ckpt": {
        "optimizer_in_backward": True,
        "optimizer_states": "bf16",
        "gradient_checkpointing": True,
    },
    "in-backward + ckpt": {"optimizer_in_backward": True, "gradient_checkpointing": True},
    "checkpointing": {"gradient_checkpointing": True},
    "8bit states": {"optimizer_states": "8bit"},
    "in-backward + 8bit + ckpt": {
        "optimizer_in_backward": True,
        "optimizer_states": "8bit",
        "gradient_checkpointing": True,
    },
}


def run(label: str, options: dict, args) -> dict | None:
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_step.py")
    command = [sys.executable, script, "--worker", args.method, "--threads", str(args.threads)]
    command += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    command += ["--batch-size", str(args.batch_size)]
    command += ["--train", json.dumps({"lr": args.lr, **options})]
    row = worker_result(command, label)
    if row is not None:
        row.update(label=label, options=options)
    return row


def bundled_shapes() -> list[tuple[int, ...]]:
    """smollm2-135m's trained tensors: the (tied) embedding, 30 blocks, the final norm."""
    block = [(576, 576), (192, 576), (192, 576), (576, 576)]  # q, k, v, o
    block += [(1536, 576), (1536, 576), (576, 1536), (576,), (576,)]  # gate, up, down, norms
    return [(49152, 576), *block * 30, (576,)]


def optimizer_step(threads: int, repeats: int = 5) -> dict[str, float]:
    """Best-of-``repeats`` seconds of one step of each AdamW over the bundled model's shapes."""
    import torch

    from excise.train.adamw_bf16 import AdamWBF16

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape) * 0.02) for shape in bundled_shapes()]
    for param in params:
        param.grad = torch.randn_like(param) * 1e-3
    seconds = {}
    for label, build in (
        ("torch AdamW fused, fp32 states", lambda: torch.optim.AdamW(params, lr=1e-5, fused=True)),
        ("AdamWBF16, bf16 states", lambda: AdamWBF16(params, lr=1e-5)),
    ):
        optimizer = build()
        optimizer.step()  # allocates the states
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            optimizer.step()
            times.append(time.perf_counter() - start)
        seconds[label] = min(times)
        del optimizer
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--method", default="npo")
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--configs", default=None, help="comma list of labels (default: all)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument(
        "--optimizer-step", action="store_true", help="also time one AdamW step (fp32 vs bf16)"
    )
    args = parser.parse_args()
    labels = args.configs.split(",") if args.configs else list(CONFIGS)
    if importlib.util.find_spec("bitsandbytes") is None:
        skipped = [label for label in labels if "8bit" in label]
        labels = [label for label in labels if "8bit" not in label]
        if skipped:
            print(f"bitsandbytes not installed: left out {', '.join(skipped)}")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(
        f"machine: {machine_line(args.threads)}; {args.method}, all weights, batch "
        f"{args.batch_size} + {args.batch_size}, lr {args.lr}, {args.warmup} warm-up + "
        f"{args.steps} measured steps, fastest of {args.repeat} round(s); started {started}",
        flush=True,
    )
    best: dict[str, dict] = {}
    for _ in range(args.repeat):
        for label in labels:
            row = run(label, CONFIGS[label], args)
            if row is None:
                continue
            print(
                f"  {label}: step {row['step_s']:.2f} s, peak {row['peak_mib']:.0f} MiB", flush=True
            )
            if label not in best or row["step_s"] < best[label]["step_s"]:
                best[label] = row
            if args.json:  # as it goes: a run cut short keeps its rows
                write(args, started, list(best.values()))
    base = best.get("baseline")
    print(
        f"{'configuration':28} {'step s':>7} {'x base':>6} {'peak MiB':>9} {'peak GB':>8} "
        f"{'x base':>6} {'+MiB':>6}"
    )
    rows = []
    for label in labels:
        if label not in best:
            continue
        row = best[label]
        row["rise_mib"] = row["peak_mib"] - row["loaded_mib"]
        row["step_ratio"] = row["step_s"] / base["step_s"] if base else None
        row["peak_ratio"] = row["peak_mib"] / base["peak_mib"] if base else None
        rows.append(row)
        ratios = (f"{row['step_ratio']:6.2f}", f"{row['peak_ratio']:6.2f}") if base else ("-", "-")
        print(
            f"{label:28} {row['step_s']:7.2f} {ratios[0]:>6} {row['peak_mib']:9.0f} "
            f"{row['peak_mib'] * 2**20 / 1e9:8.2f} {ratios[1]:>6} {row['rise_mib']:6.0f}",
            flush=True,
        )
    steps = optimizer_step(args.threads) if args.optimizer_step else None
    if steps:
        print(
            "one AdamW step over the bundled model's 134.5M weights: "
            + ", ".join(f"{label} {seconds:.3f} s" for label, seconds in steps.items())
        )
    if args.json:
        write(args, started, rows, steps)


def write(args, started: str, rows: list[dict], steps: dict | None = None) -> None:
    with open(args.json, "w") as f:
        document = {"machine": machine_line(args.threads), "started": started, "args": vars(args)}
        extra = {"optimizer_step_s": steps} if steps else {}
        json.dump({**document, "rows": rows, **extra}, f, indent=1)


if __name__ == "__main__":
    main()
