"""Training-step benchmark on the bundled model (never part of `make test`).

    python bench/train_step.py [--threads 1] [--steps 3] [--warmup 1] [--repeat 1]
                               [--methods ga,npo,...] [--lora R] [--unfused-adamw] [--optimizer]

For every gradient-based method in the registry (plus the naive forms of npo and rmu) a fresh
subprocess loads smollm2-135m, trains ``warmup + steps`` optimizer steps on chem-symbols through
the one training loop (excise.train.train) and reports:
- step time (median of the measured steps; the warm-up steps allocate optimizer state),
- tokens/s: non-pad tokens of the step's forget + retain batches per second,
- peak resident memory: ru_maxrss of the process, and its rise over the resident size right
  after the model was loaded and its weights read in (safetensors are mapped lazily; each method
  has its own process, so peaks are separate),
- GFLOP/s = 6 * parameters * non-pad tokens / step time (the usual fwd+bwd estimate), as a
  fraction of the fp32 matmul peak measured in this run with the same thread count (best burst at
  the start and end of the run) and of the rate a sustained matmul gets in the method's own
  process right after its steps (same load); left out for methods that do not run the whole
  model forward and backward once per example (rmu, rr, tar's inner loop),
- where the time goes: forward (the method's loss), optimizer step (AdamW.step), the rest
  (backward, clipping, batching), padding waste of the sorted batches vs random ones, and the
  share of the FLOPs in the 49k-vocabulary head.

Naive forms, for the ratios: ``npo-naive`` holds a reference copy of the model and runs it on
every forget batch (instead of log-probabilities cached once); ``rmu-naive`` runs the full
forward (all blocks and the head, a hook reads layer L) and a frozen copy of the model on every
retain batch (instead of stopping after layer L with frozen activations cached once);
``rmu-fullforward`` keeps the cache but runs the full forward, which separates the two savings.
tar and distill run with ``init_method=None``: their warm start is a whole npo run, not a step.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

TASK = "chem-symbols"
NAIVE = ("npo-naive", "rmu-naive", "rmu-fullforward")
NO_WARM_START = ("tar", "distill")  # their warm start is a whole unlearning run
# not one forward + backward of the whole model per example: 6 * params * tokens does not apply
PARTIAL = ("rmu", "rr", "tar", "rmu-naive", "rmu-fullforward")
PAIRS = (("npo", "npo-naive"), ("rmu", "rmu-naive"), ("rmu", "rmu-fullforward"))


def matmul_peak(threads: int, repeats: int = 5) -> dict[str, float]:
    """Best-of-``repeats`` fp32 GFLOP/s of torch.matmul at the bundled model's shapes
    (128 tokens x hidden 576, MLP 1536, vocabulary 49152) and at a large square size."""
    torch.set_num_threads(threads)
    shapes = {
        "attn 128x576x576": (128, 576, 576),
        "mlp_up 128x576x1536": (128, 576, 1536),
        "mlp_down 128x1536x576": (128, 1536, 576),
        "head 128x576x49152": (128, 576, 49152),
        "square 1024": (1024, 1024, 1024),
    }
    rates = {}
    for name, (m, k, n) in shapes.items():
        a, b = torch.randn(m, k), torch.randn(k, n)
        torch.matmul(a, b)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            torch.matmul(a, b)
            best = min(best, time.perf_counter() - start)
        rates[name] = 2 * m * k * n / best / 1e9
    return rates


def sustained_matmul(threads: int, seconds: float = 1.5) -> float:
    """fp32 GFLOP/s of back-to-back MLP-shaped matmuls (128x576 @ 576x1536) over ``seconds``:
    the rate this process gets under the machine's current load, right after its steps."""
    torch.set_num_threads(threads)
    a, b = torch.randn(128, 576), torch.randn(576, 1536)
    torch.matmul(a, b)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.matmul(a, b)
        count += 1
    return 2 * 128 * 576 * 1536 * count / (time.perf_counter() - start) / 1e9


def _resident_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Timed:
    """Wraps a method: times prepare and loss, and records the shapes of every batch."""

    def __init__(self, prepare, loss, finish=None) -> None:
        self._prepare, self._loss, self.finish = prepare, loss, finish
        self.prepare_s = 0.0
        self.batches: list[dict[str, int]] = []

    def prepare(self, ctx) -> None:
        start = time.perf_counter()
        self._prepare(ctx)
        self.prepare_s = time.perf_counter() - start

    def loss(self, ctx, batch):
        shape = {"tokens": 0, "padded": 0, "targets": 0}
        for part in (batch["forget"], batch.get("retain")):
            if part is not None:
                shape["tokens"] += int(part["attention_mask"].sum())
                shape["padded"] += part["attention_mask"].numel()
                shape["targets"] += int((part["labels"] != -100).sum())
        start = time.perf_counter()
        result = self._loss(ctx, batch)
        shape["forward_s"] = time.perf_counter() - start
        self.batches.append(shape)
        return result


def npo_naive(spec):
    """NPO with the reference model held in memory and run on every forget batch."""
    from excise.methods.npo import npo_loss
    from excise.scoring import forward_stats, with_retain_nll

    def prepare(ctx) -> None:
        reference = copy.deepcopy(ctx.unwrapped).eval()
        for param in reference.parameters():
            param.requires_grad_(False)
        ctx.state["reference_model"] = reference

    def loss(ctx, batch):
        forget = batch["forget"]
        stats = forward_stats(ctx.model, forget)
        with torch.no_grad():
            reference = forward_stats(ctx.state["reference_model"], forget).logprob
        forget_loss = npo_loss(stats.logprob, reference, ctx.config.beta)
        terms = {"npo": float(forget_loss.detach())}
        return with_retain_nll(ctx, batch, forget_loss, terms, ctx.config.retain_weight)

    return prepare, loss


def rmu_naive(spec, *, frozen_model: bool):
    """RMU through the full forward; with ``frozen_model`` a frozen copy runs on every retain
    batch (the WMDP reference code), else the frozen activations are excise's cache."""
    from excise.arch import decoder_layers
    from excise.methods.rmu import masked_mse, padded

    def full_forward_hidden(model, layer, batch):
        captured: list[torch.Tensor] = []

        def grab(module, inputs, output):
            captured.append(output[0] if isinstance(output, tuple) else output)

        handle = decoder_layers(model)[layer].register_forward_hook(grab)
        try:
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        finally:
            handle.remove()
        return captured[0]

    def prepare(ctx) -> None:
        spec.prepare(ctx)  # layer, target, trainable MLPs (and the cache, unused when frozen)
        if frozen_model:
            frozen = copy.deepcopy(ctx.unwrapped).eval()
            for param in frozen.parameters():
                param.requires_grad_(False)
            ctx.state["frozen_model"] = frozen
            ctx.state["retain_frozen"] = {}

    def loss(ctx, batch):
        layer, target = ctx.state["layer"], ctx.state["target"]
        forget, retain = batch["forget"], batch["retain"]
        forget_hidden = full_forward_hidden(ctx.model, layer, forget)
        forget_loss = masked_mse(
            forget_hidden, target.expand_as(forget_hidden), forget["attention_mask"]
        )
        retain_hidden = full_forward_hidden(ctx.model, layer, retain)
        if frozen_model:
            with torch.no_grad():
                frozen = full_forward_hidden(ctx.state["frozen_model"], layer, retain)
        else:
            rows = retain["index"].tolist()
            frozen = padded(ctx.state["retain_frozen"], rows, retain_hidden.shape[1])
        retain_loss = masked_mse(retain_hidden, frozen, retain["attention_mask"])
        total = forget_loss + ctx.config.alpha * retain_loss
        return total, {"forget_mse": float(forget_loss.detach())}

    return prepare, loss


def timed_method(name: str):
    """The registry's spec, its default config and the timed method for a benchmark row name
    (a method, or ``npo-naive`` / ``rmu-naive`` / ``rmu-fullforward``)."""
    from excise.methods import get_method, make_config

    base = name.split("-")[0]
    spec = get_method(base)
    options = {"init_method": None} if base in NO_WARM_START else {}
    method_config = make_config(spec.config_cls, options)
    if name == "npo-naive":
        prepare, loss = npo_naive(spec)
    elif name in ("rmu-naive", "rmu-fullforward"):
        prepare, loss = rmu_naive(spec, frozen_model=name == "rmu-naive")
    else:
        prepare, loss = spec.prepare, spec.loss
    return spec, method_config, Timed(prepare, loss, spec.finish)


def optimizer_worker(args) -> dict:
    """Seconds per AdamW step over every weight of the model: the loop's default (single-tensor
    on CPU) vs foreach vs fused kernels, same gradients."""
    torch.set_num_threads(args.threads)
    from excise.models import load_model

    model, _ = load_model("smollm2-135m")
    params = list(model.parameters())
    for param in params:
        param.grad = torch.randn_like(param) * 1e-3
    seconds = {}
    for label, options in (
        ("default", {}),
        ("foreach", {"foreach": True}),
        ("fused", {"fused": True}),
    ):
        optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0, **options)
        optimizer.step()  # allocates the moments
        times = []
        for _ in range(3):
            start = time.perf_counter()
            optimizer.step()
            times.append(time.perf_counter() - start)
        seconds[label] = statistics.median(times)
        del optimizer
    return {"method": "optimizer", "adamw_step_s": seconds}


def worker(name: str, args) -> dict:
    torch.set_num_threads(args.threads)
    optimizer_s: list[float] = []
    adamw_step = torch.optim.AdamW.step

    def timed_step(self, *a, **k):  # patched before the loop builds its optimizer
        start = time.perf_counter()
        result = adamw_step(self, *a, **k)
        optimizer_s.append(time.perf_counter() - start)
        return result

    torch.optim.AdamW.step = timed_step
    if args.unfused_adamw:  # the loop's optimizer before it was fused (single-tensor kernels)
        adamw_init = torch.optim.AdamW.__init__

        def unfused_init(self, params, *a, **k):
            adamw_init(self, params, *a, **{**k, "fused": False})

        torch.optim.AdamW.__init__ = unfused_init
    from excise.data.encode import encode_records
    from excise.data.tasks import load_task
    from excise.models import load_model
    from excise.train import TrainConfig, train
    from excise.train.lora import LoraSettings

    model, tokenizer = load_model("smollm2-135m")
    with torch.no_grad():  # weights are mapped lazily: read every page in before the baseline
        for param in model.parameters():
            param.sum()
    loaded_mib = _resident_mib()
    params = sum(p.numel() for p in model.parameters())
    spec, method_config, method = timed_method(name)
    task = load_task(TASK)
    stamps: list[float] = []
    lr = spec.train_defaults.get("lr", 1e-5)
    train(
        model,
        tokenizer,
        method,
        method_config,
        forget=encode_records(tokenizer, task.forget, task.template),
        retain=encode_records(tokenizer, task.retain, task.template),
        forget_records=task.forget,
        template=task.template,
        config=TrainConfig(
            steps=args.warmup + args.steps,
            batch_size=args.batch_size,
            progress=False,
            **{"lr": lr, **json.loads(args.train)},  # memory options (train_memory.py), lr
        ),
        uses_retain=spec.uses_retain,
        on_step=lambda step, terms: stamps.append(time.perf_counter()),
        lora=LoraSettings(args.lora) if args.lora else None,
    )
    steps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)][args.warmup - 1 :]
    per_step = len(method.batches) // (args.warmup + args.steps)  # grad_accum micro-batches
    measured = method.batches[args.warmup * per_step :]
    tokens = sum(b["tokens"] for b in measured) / args.steps
    padded_positions = sum(b["padded"] for b in measured) / args.steps
    targets = sum(b["targets"] for b in measured) / args.steps
    step_s = statistics.median(steps)
    return {
        "method": name,
        "params": params,
        "prepare_s": method.prepare_s,
        "step_s": step_s,
        "steps_s": steps,
        "forward_s": sum(b["forward_s"] for b in measured) / args.steps,
        "optimizer_s": statistics.median(optimizer_s[args.warmup :]) if optimizer_s else 0.0,
        "tokens": tokens,
        "padded": padded_positions,
        "targets": targets,
        "tokens_per_s": tokens / step_s,
        "gflops": 6 * params * tokens / step_s / 1e9,
        "loaded_mib": loaded_mib,
        "matmul_sustained_gflops": sustained_matmul(args.threads),
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def random_padding_waste(batch_size: int, draws: int) -> dict[str, float]:
    """Padding share of the same draws with random (unsorted) and length-sorted batches."""
    from transformers import AutoTokenizer

    from excise.data.encode import encode_records
    from excise.data.tasks import load_task
    from excise.models import resolve
    from excise.train import batch_indices

    tokenizer = AutoTokenizer.from_pretrained(resolve("smollm2-135m"))
    task = load_task(TASK)
    out = {}
    for part, seed in (("forget", 0), ("retain", 1)):
        lengths = [len(e.input_ids) for e in encode_records(tokenizer, getattr(task, part), "raw")]
        for label, given in (("random", None), ("sorted", lengths)):
            padded = real = 0
            for draw in range(draws):
                rows = batch_indices(len(lengths), batch_size, draw, seed, given)
                padded += max(lengths[i] for i in rows) * len(rows)
                real += sum(lengths[i] for i in rows)
            out[f"{part}_{label}"] = 1 - real / padded
    return out


def run_worker(name: str, args) -> dict | None:
    command = [sys.executable, __file__, "--worker", name]
    command += ["--threads", str(args.threads), "--steps", str(args.steps)]
    command += ["--warmup", str(args.warmup), "--batch-size", str(args.batch_size)]
    command += ["--lora", str(args.lora)] + (["--unfused-adamw"] if args.unfused_adamw else [])
    command += ["--train", args.train]
    return worker_result(command, name)


def worker_result(command: list[str], name: str, echo: bool = False) -> dict | None:
    """Run a worker subprocess and return the row it prints after ``RESULT `` (None, with its
    error's tail printed, when it fails); ``echo`` prints its other output lines."""
    done = subprocess.run(command, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
        if echo:
            print(line)
    print(f"{name}: failed (exit {done.returncode})\n{done.stderr[-3000:]}", flush=True)
    return None


def machine_line(threads: int) -> str:
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{threads} thread(s), python {platform.python_version()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--methods", default=None, help="comma list (default: all + naive forms)")
    parser.add_argument("--optimizer", action="store_true", help="also time AdamW variants")
    parser.add_argument(
        "--unfused-adamw", action="store_true", help="AdamW unfused (the loop fuses it)"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds; each method keeps its fastest"
    )
    parser.add_argument("--lora", type=int, default=0, help="train LoRA adapters of this rank")
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument(
        "--train", default="{}", help='TrainConfig overrides as JSON, e.g. {"lr": 1e-5}'
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be >= 1 (the first step's start is not stamped)")
    if args.worker:
        run = optimizer_worker(args) if args.worker == "optimizer" else worker(args.worker, args)
        print("RESULT " + json.dumps(run), flush=True)
        return

    from excise.methods import all_methods

    names = args.methods.split(",") if args.methods else [*sorted(all_methods()), *NAIVE]
    print(
        f"machine: {machine_line(args.threads)}; task {TASK}, batch {args.batch_size} forget "
        f"(+ {args.batch_size} retain), {args.warmup} warm-up + {args.steps} measured steps"
        + (f", LoRA rank {args.lora}" if args.lora else ", all weights trained")
        + (", unfused AdamW" if args.unfused_adamw else ", fused AdamW (as the loop builds it)")
        + f", fastest of {args.repeat} round(s)"
    )
    peak_before = matmul_peak(args.threads)
    best: dict[str, dict] = {}
    for _ in range(args.repeat):  # round robin: contention from other jobs hits every method
        for name in names:
            row = run_worker(name, args)
            if row is not None:
                print(f"  {name}: step {row['step_s']:.2f} s", flush=True)
            if row is not None and (name not in best or row["step_s"] < best[name]["step_s"]):
                best[name] = row
    rows = [best[name] for name in names if name in best]
    peak_after = matmul_peak(args.threads)
    peaks = {k: max(peak_before[k], peak_after[k]) for k in peak_before}
    peak = max(peaks.values())
    print(
        "matmul GFLOP/s (best of start/end of run): "
        + ", ".join(f"{k} {v:.1f}" for k, v in peaks.items())
    )
    header = (
        f"{'method':16} {'step s':>7} {'tok/s':>7} {'GFLOP/s':>8} {'of peak':>7} {'of sust':>7} "
        f"{'peak MiB':>9} {'+MiB':>6} {'prep s':>7} {'fwd':>5} {'optim':>5} {'pad':>5}"
    )
    print(header)
    by_name = {}
    for row in rows:
        full = row["method"] not in PARTIAL
        row["fraction_of_peak"] = row["gflops"] / peak if full else None
        row["fraction_of_sustained"] = (
            row["gflops"] / row["matmul_sustained_gflops"] if full else None
        )
        row["rise_mib"] = row["peak_mib"] - row["loaded_mib"]
        by_name[row["method"]] = row
        fractions = (
            f"{row['fraction_of_peak']:7.2f} {row['fraction_of_sustained']:7.2f}"
            if full
            else f"{'-':>7} {'-':>7}"
        )
        print(
            f"{row['method']:16} {row['step_s']:7.2f} {row['tokens_per_s']:7.1f} "
            f"{row['gflops']:8.1f} {fractions} {row['peak_mib']:9.0f} "
            f"{row['rise_mib']:6.0f} {row['prepare_s']:7.1f} "
            f"{row['forward_s'] / row['step_s']:5.2f} {row['optimizer_s'] / row['step_s']:5.2f} "
            f"{1 - row['tokens'] / row['padded']:5.2f}",
            flush=True,
        )
    ratios = {}
    for fast, slow in PAIRS:
        if fast in by_name and slow in by_name:
            a, b = by_name[fast], by_name[slow]
            ratios[f"{fast}/{slow}"] = {
                "step": a["step_s"] / b["step_s"],
                "peak": a["peak_mib"] / b["peak_mib"],
                "rise": a["rise_mib"] / b["rise_mib"],
            }
            r = ratios[f"{fast}/{slow}"]
            print(
                f"ratio {fast}/{slow}: step {r['step']:.2f}, peak memory {r['peak']:.2f} "
                f"(rise over the loaded model {r['rise']:.2f})"
            )
    waste = random_padding_waste(args.batch_size, 100)
    print(
        "padding share of batch positions, same draws: "
        + ", ".join(f"{k} {v:.2f}" for k, v in waste.items())
    )
    if rows:
        hidden, vocab = 576, 49152
        params = rows[0]["params"]
        head = vocab * hidden
        body = params - head  # tied embeddings: the head's matrix is counted once in params
        full = by_name.get("graddiff") or rows[0]
        tokens, targets = full["tokens"], full["targets"]
        everywhere = head / (head + body)
        at_targets = head * targets / (head * targets + body * tokens)
        print(
            f"49k-vocab head share of the forward FLOPs: {everywhere:.2f} when every position "
            f"is projected (plain HF forward), {at_targets:.2f} as excise projects only the "
            f"{targets / tokens:.0%} of positions that are answer tokens ({full['method']})"
        )
    optimizer = run_worker("optimizer", args) if args.optimizer else None
    if optimizer:
        opt = optimizer["adamw_step_s"]
        print(
            "AdamW step over all 134.5M weights: "
            + ", ".join(f"{k} {v:.2f} s" for k, v in opt.items())
            + f" (fused/default {opt['fused'] / opt['default']:.2f})"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "machine": machine_line(args.threads),
                    "matmul_gflops": peaks,
                    "rows": rows,
                    "ratios": ratios,
                    "optimizer": optimizer,
                    "padding": waste,
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
