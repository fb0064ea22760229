"""Training-step benchmark of a 1B+ model on one GPU (never part of `make test`).

    python bench/large_model.py [--preset llama-1b] [--tokenizer DIR] [--dtype bfloat16]
                                [--batch-size 32] [--max-length 256] [--steps 5] [--warmup 2]
                                [--methods ga,graddiff,npo,npo-naive,...] [--json FILE]
                                [--train '{"optimizer_in_backward": true, ...}']

The model is the shape of Llama-3.2-1B (16 layers, hidden 2048, MLP 8192, 32 query and 8 key/value
heads, tied embeddings) with the bundled tokenizer's 49,152-token vocabulary: 1.07B parameters,
randomly initialised on the GPU (no weights are downloaded; step time and memory do not depend on
what the weights hold). The forget set is the package's encyclopedic text sample, the retain set its
general text sample (about 120 tokens each, cut at ``--max-length``), so a step moves thousands of
tokens instead of the built-in tasks' nine-token facts.

Every method runs in its own subprocess through the one training loop (excise.train.train), with
its naive form for npo and rmu (bench/train_step.py says what those are), and reports:
- step time (median of the measured steps, each ended by a device synchronisation),
- tokens/s (non-pad tokens of the step's forget + retain batches),
- peak GPU memory (torch.cuda.max_memory_allocated over the run, the model's own weights included;
  on a CPU the process's resident peak) and the weights' size,
- achieved TFLOP/s = 6 * parameters * tokens / step time and its fraction of the bf16 matmul rate
  measured in this run (8192^3 products), for methods that run the whole model forward and backward
  once per example.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step import PAIRS, PARTIAL, timed_method, worker_result  # noqa: E402

PRESETS = {
    # Llama-3.2-1B's body; the vocabulary is the tokenizer's
    "llama-1b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "tie_word_embeddings": True,
        "rope_theta": 500000.0,
    },
    # Llama-3.1-8B's body (8.0B parameters with its 128k vocabulary; 7.5B with the bundled
    # tokenizer's 49k): full-parameter training on one 80 GB GPU needs the memory options, e.g.
    # --train '{"optimizer_in_backward": true, "gradient_checkpointing": true}'
    "llama-8b": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "tie_word_embeddings": False,
        "rope_theta": 500000.0,
    },
    # activation memory on a CPU: a 49k-vocabulary head on a small body
    "small": {
        "hidden_size": 256,
        "intermediate_size": 1024,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "tie_word_embeddings": True,
    },
    # for trying the script on a CPU
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "tie_word_embeddings": True,
    },
}
METHODS = ("ga", "graddiff", "npo", "npo-naive", "simnpo", "rmu", "rmu-naive", "rr")


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_tflops(dtype: torch.dtype, size: int = 8192, repeats: int = 10) -> float:
    """Mean rate of ``repeats`` size^3 products on random data after three warm-ups."""
    a = torch.randn(size, size, device=device(), dtype=dtype)
    b = torch.randn(size, size, device=device(), dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def build_model(preset: str, tokenizer, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **PRESETS[preset],
    )
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in dtype: an 8B model never exists in float32
    try:
        with device():
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.to(dtype).eval()


def load_tokenizer(path: str | None):
    from transformers import AutoTokenizer

    if path is None:
        from excise.models import resolve

        path = resolve("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def text_sets(tokenizer, max_length: int):
    from importlib.resources import files

    from excise.data.encode import encode_records
    from excise.data.records import load_records

    root = files("excise.data") / "builtin" / "text_sample"
    forget = load_records(str(root / "encyclopedic.jsonl"), name="forget")
    retain = load_records(str(root / "sample.jsonl"), name="retain")
    return (
        forget,
        encode_records(tokenizer, forget, "raw", max_length),
        encode_records(tokenizer, retain, "raw", max_length),
    )


def worker(name: str, args) -> dict:
    import excise.train.launch
    import excise.train.loop
    from excise.train import TrainConfig, train

    if args.any_attention:  # PyTorch's own choice of attention kernel (cuDNN first on Hopper)
        excise.train.loop.ATTENTION = None
    if args.one_backward:  # one backward of the whole loss, both batches' activations alive
        excise.train.launch.EARLY_BACKWARD = False

    dtype = getattr(torch, args.dtype)
    tokenizer = load_tokenizer(args.tokenizer)
    model = build_model(args.preset, tokenizer, dtype)
    params = sum(p.numel() for p in model.parameters())
    weights_gib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
    forget_records, forget, retain = text_sets(tokenizer, args.max_length)
    spec, method_config, method = timed_method(name)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    stamps: list[float] = []
    profiler = None
    if args.profile and torch.cuda.is_available():
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        profiler = torch.profiler.profile(activities=activities)

    def on_step(step, terms) -> None:
        synchronize()
        stamps.append(time.perf_counter())
        if profiler is not None and len(stamps) == args.warmup:
            profiler.start()  # the measured steps only

    train(
        model,
        tokenizer,
        method,
        method_config,
        forget=forget,
        retain=retain,
        forget_records=forget_records,
        template="raw",
        config=TrainConfig(
            steps=args.warmup + args.steps,
            batch_size=args.batch_size,
            progress=False,
            # memory options (TrainConfig fields), lr
            **{"lr": spec.train_defaults.get("lr", 1e-5), **json.loads(args.train)},
        ),
        uses_retain=spec.uses_retain,
        on_step=on_step,
    )
    steps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)][args.warmup - 1 :]
    busy = None
    if profiler is not None:
        profiler.stop()
        averages = profiler.key_averages()
        print(averages.table(sort_by="self_device_time_total", row_limit=18), flush=True)
        try:  # kernels' own rows (device type CUDA): time with a kernel running
            cuda = torch.autograd.DeviceType.CUDA
            kernels = sum(e.self_device_time_total for e in averages if e.device_type == cuda)
            busy = kernels / 1e6 / sum(steps)
            print(f"GPU busy {busy:.2f} of the measured steps' wall time", flush=True)
        except (AttributeError, IndexError) as error:
            print(f"GPU busy: n/a ({error})", flush=True)
    per_step = len(method.batches) // (args.warmup + args.steps)
    measured = method.batches[args.warmup * per_step :]
    tokens = sum(b["tokens"] for b in measured) / args.steps
    padded = sum(b["padded"] for b in measured) / args.steps
    step_s = statistics.median(steps)
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:  # the process's resident peak (its own process: the model, libraries and all)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {
        "method": name,
        "params": params,
        "weights_gib": weights_gib,
        "prepare_s": method.prepare_s,
        "step_s": step_s,
        "steps_s": steps,
        "tokens": tokens,
        "padded": padded,
        "tokens_per_s": tokens / step_s,
        "tflops": 6 * params * tokens / step_s / 1e12,
        "peak_gib": peak,
        "gpu_busy": busy,
    }


def run_worker(name: str, args) -> dict | None:
    command = [sys.executable, __file__, "--worker", name, "--preset", args.preset]
    command += ["--dtype", args.dtype, "--batch-size", str(args.batch_size)]
    command += ["--max-length", str(args.max_length), "--steps", str(args.steps)]
    command += ["--warmup", str(args.warmup), "--train", args.train]
    command += ["--tokenizer", args.tokenizer] if args.tokenizer else []
    command += ["--profile"] if args.profile else []
    command += ["--any-attention"] if args.any_attention else []
    command += ["--one-backward"] if args.one_backward else []
    return worker_result(command, name, echo=args.profile)


def machine_line() -> str:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    import transformers

    return (
        f"{gpu}, {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, python {platform.python_version()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="llama-1b")
    parser.add_argument("--tokenizer", default=None, help="folder (default: the bundled model's)")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="print each method's top GPU kernels (torch.profiler)",
    )
    parser.add_argument(
        "--any-attention",
        action="store_true",
        help="let PyTorch pick any attention kernel (cuDNN too) instead of the loop's choice",
    )
    parser.add_argument(
        "--one-backward",
        action="store_true",
        help="one backward of the whole loss instead of the forget part first (Context.release)",
    )
    parser.add_argument(
        "--train",
        default="{}",
        help='TrainConfig overrides as JSON, e.g. {"optimizer_in_backward": true}',
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be >= 1 (the first step's start is not stamped)")
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args)), flush=True)
        return

    torch.backends.cuda.matmul.allow_tf32 = True
    dtype = getattr(torch, args.dtype)
    print(
        f"machine: {machine_line()}\nmodel: {args.preset} ({args.dtype}, random weights), batch "
        f"{args.batch_size} forget + {args.batch_size} retain texts of <= {args.max_length} "
        f"tokens, {args.warmup} warm-up + {args.steps} measured steps"
        + (", any attention kernel" if args.any_attention else ", the loop's attention kernels")
        + (", one backward" if args.one_backward else ", backward in parts"),
        flush=True,
    )
    peak_before = matmul_tflops(dtype) if torch.cuda.is_available() else None
    rows = []
    for name in args.methods.split(","):
        start = time.perf_counter()
        row = run_worker(name, args)
        if row is not None:
            rows.append(row)
            print(f"  {name}: step {row['step_s']:.3f} s ({time.perf_counter() - start:.0f} s)")
    peak_after = matmul_tflops(dtype) if torch.cuda.is_available() else None
    peak = max(peak_before, peak_after) if peak_before else None
    if peak:
        print(f"matmul 8192^3 {args.dtype}: {peak_before:.0f} / {peak_after:.0f} TFLOP/s")
    if rows:
        print(
            f"parameters {rows[0]['params'] / 1e9:.3f}B, weights {rows[0]['weights_gib']:.2f} GiB"
        )
    print(
        f"{'method':12} {'step s':>7} {'tok/s':>8} {'TFLOP/s':>8} {'of peak':>7} "
        f"{'peak GiB':>8} {'prep s':>7} {'pad':>5}"
    )
    by_name = {}
    for row in rows:
        full = row["method"] not in PARTIAL
        row["fraction_of_peak"] = row["tflops"] / peak if full and peak else None
        by_name[row["method"]] = row
        fraction = f"{row['fraction_of_peak']:7.2f}" if row["fraction_of_peak"] else f"{'-':>7}"
        tflops = f"{row['tflops']:8.1f}" if full else f"{'-':>8}"
        memory = f"{row['peak_gib']:8.2f}" if row["peak_gib"] is not None else f"{'-':>8}"
        print(
            f"{row['method']:12} {row['step_s']:7.3f} {row['tokens_per_s']:8.0f} {tflops} "
            f"{fraction} {memory} {row['prepare_s']:7.1f} {1 - row['tokens'] / row['padded']:5.2f}"
        )
    ratios = {}
    for fast, slow in PAIRS:
        if fast in by_name and slow in by_name:
            a, b = by_name[fast], by_name[slow]
            ratios[f"{fast}/{slow}"] = {"step": a["step_s"] / b["step_s"]}
            if a["peak_gib"] is not None:
                ratios[f"{fast}/{slow}"]["peak"] = a["peak_gib"] / b["peak_gib"]
            print(
                f"ratio {fast}/{slow}: "
                + ", ".join(f"{k} {v:.2f}" for k, v in ratios[f"{fast}/{slow}"].items())
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "machine": machine_line(),
                    "args": vars(args),
                    "matmul_tflops": peak,
                    "rows": rows,
                    "ratios": ratios,
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
