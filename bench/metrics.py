"""Scoring benchmark on the bundled model (never part of `make test`).

    python bench/metrics.py [--threads 1] [--tasks chem-symbols,fictitious] [--limit 100] [--budget 12]
    python bench/metrics.py --evaluation [--threads 2] [--json bench/results/evaluation.json]

``--evaluation``: excise.metrics.evaluate on the demo's task (chem-symbols after the knowledge
filter) against the per-set form it replaced (each set scored by its own score_pairs calls in
batches of 32, ROUGE generated per set in batches of 16: kept here as ``per_set_evaluate``) and the
naive per-item form (one forward pass per scored pair, on a sample, extrapolated); every metric
compared; tokens/s (tokens of every scored sequence, as the per-item form runs them) and the
fraction of the fp32 matmul peak measured in the same run (2 x parameters x tokens / s).

On the same items (each task's forget and retain evaluation sets), compares
- batched teacher-forced scoring (excise.scoring.score_pairs: length-sorted batches of 32, one
  forward pass each, an item is right when every answer token is the argmax), with
- per-item greedy generation (model.generate, one item at a time), twice: with as many new
  tokens as the answer has (the least any generation needs) and with up to ``--budget`` (12) new
  tokens, stopping at end of text, as evaluation harnesses run it; an item is right when the
  first generated tokens are the answer's tokens.
Tasks that teach their facts first (fictitious) use the cached taught model when there is one
(else the bundled model, which knows none of them). The two definitions agree by construction (greedy decoding that stays on the answer sees exactly
the teacher-forced prefixes), so their accuracies must match; the bench checks it item by item and
reports items/s of both and the speedup, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch


def per_item_generation(model, tokenizer, examples, budget: int | None = None) -> list[bool]:
    """Greedy generation, one item at a time, of the answer's length (``budget`` None) or of up to
    ``budget`` new tokens (stopping at end of text), as evaluation harnesses do; right when the
    first generated tokens are the answer's."""
    from excise.data.encode import IGNORE

    right = []
    model.eval()
    with torch.no_grad():
        for example in examples:
            cut = sum(1 for label in example.labels if label == IGNORE)
            context, answer = list(example.input_ids[:cut]), list(example.input_ids[cut:])
            output = model.generate(
                input_ids=torch.tensor([context]),
                attention_mask=torch.ones(1, len(context), dtype=torch.long),
                max_new_tokens=budget or len(answer),
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            right.append(output[0, len(context) : len(context) + len(answer)].tolist() == answer)
    return right


class _WouldTeach(Exception):
    pass


def taught_model(task):
    """The cached model taught the task's facts (excise.jobs.fictitious), or None when teaching would
    have to run first (minutes): the bench never trains."""
    from excise.jobs.fictitious import taught_models
    from excise.models import load_model

    def refuse(message: str) -> None:
        raise _WouldTeach(message)

    try:
        full, _ = taught_models("smollm2-135m", task, echo=refuse)
    except _WouldTeach:
        return None
    return load_model(str(full))[0]


def bench_task(model, tokenizer, name: str, limit: int, budget: int) -> dict:
    from excise.data.encode import encode_pair
    from excise.data.tasks import load_task
    from excise.scoring import stats_for_examples

    task = load_task(name)
    which = "bundled"
    if task.metadata.get("needs_teaching"):
        taught = taught_model(task)
        if taught is not None:
            model, which = taught, "taught (cached)"
    items = list(task.forget_eval) + list(task.retain_eval)
    if limit and len(items) > limit:  # evenly spread, so forget and retain items both come
        items = [items[round(i * len(items) / limit)] for i in range(limit)]
    examples = [
        encode_pair(tokenizer, q.prompt, q.completion, task.template, i)
        for i, q in enumerate(items)
    ]
    warm = examples[:4]  # one-time costs (first calls, allocations) out of both timings
    stats_for_examples(model, warm, tokenizer.pad_token_id)
    per_item_generation(model, tokenizer, warm)

    start = time.perf_counter()
    scored = stats_for_examples(model, examples, tokenizer.pad_token_id, batch_size=32)
    scoring_s = time.perf_counter() - start
    teacher = scored.correct.tolist()
    row = {
        "task": name,
        "model": which,
        "items": len(examples),
        "scoring_s": scoring_s,
        "scoring_items_per_s": len(examples) / scoring_s,
        "scoring_accuracy": sum(teacher) / len(teacher),
    }
    for label, tokens in (("answer_length", None), (f"max{budget}", budget)):
        start = time.perf_counter()
        generated = per_item_generation(model, tokenizer, examples, tokens)
        seconds = time.perf_counter() - start
        row[label] = {
            "generation_s": seconds,
            "items_per_s": len(examples) / seconds,
            "speedup": seconds / scoring_s,
            "accuracy": sum(generated) / len(generated),
            "item_agreement": sum(a == b for a, b in zip(teacher, generated, strict=True))
            / len(examples),
        }
    return row


def per_set_evaluate(model, tokenizer, task, generate: int = 16) -> dict:
    """excise.metrics.evaluate as it was before the one-pass form (the reference)."""
    import math

    import numpy as np

    from excise.data.encode import encode_text
    from excise.metrics.generate import generate_answers
    from excise.metrics.quality import harmonic_mean, truth_ratios, truth_score
    from excise.metrics.rouge import rouge_l_recall
    from excise.scoring import score_pairs, stats_for_examples

    def qa(items, prefix, truth):
        stats = score_pairs(
            model,
            tokenizer,
            [(q.prompt, q.completion) for q in items],
            task.template,
            batch_size=32,
        )
        norm = stats.logprob / stats.tokens.clamp(min=1)
        out = {
            f"{prefix}_accuracy": float(stats.correct.float().mean()),
            f"{prefix}_prob": float(torch.exp(norm).mean()),
        }
        with_wrong = [i for i, q in enumerate(items) if q.perturbed]
        if truth and with_wrong:
            pairs = [(items[i].prompt, w) for i in with_wrong for w in items[i].perturbed]
            wrong = score_pairs(model, tokenizer, pairs, task.template, batch_size=32)
            wrong_norm = wrong.logprob / wrong.tokens.clamp(min=1)
            groups, start = [], 0
            for i in with_wrong:
                groups.append(wrong_norm[start : start + len(items[i].perturbed)])
                start += len(items[i].perturbed)
            out[f"{prefix}_truth"] = truth_score(truth_ratios(norm[with_wrong], groups))
        return out

    def mc(questions):
        pairs = [
            (f"Question: {q.question}\nAnswer:", f" {c}") for q in questions for c in q.choices
        ]
        stats = score_pairs(model, tokenizer, pairs, "raw", batch_size=32)
        right, start = 0, 0
        for q in questions:
            right += int(int(stats.logprob[start : start + len(q.choices)].argmax()) == q.answer)
            start += len(q.choices)
        return right / len(questions)

    metrics = {}
    for prefix, items, truth in (
        ("forget", task.forget_eval, True),
        ("paraphrase", task.paraphrases, False),
        ("retain", task.retain_eval, True),
        ("near_retain", task.near_retain_eval, False),
    ):
        if not items:
            continue
        metrics.update(qa(items, prefix, truth))
        if generate and prefix in ("forget", "retain"):
            chosen = items[:: max(1, len(items) // generate)][:generate]
            answers = generate_answers(model, tokenizer, [q.prompt for q in chosen], task.template)
            metrics[f"{prefix}_rouge"] = float(
                np.mean(
                    [rouge_l_recall(q.completion, a) for q, a in zip(chosen, answers, strict=True)]
                )
            )
    if task.utility:
        metrics["mc_accuracy"] = mc(task.utility)
    if task.forget_mc:
        metrics["forget_mc_accuracy"] = mc(task.forget_mc)
    if task.fluency:
        examples = [encode_text(tokenizer, t.text, i) for i, t in enumerate(task.fluency)]
        stats = stats_for_examples(model, examples, tokenizer.pad_token_id, batch_size=16)
        metrics["perplexity"] = math.exp(
            -float(stats.logprob.sum()) / max(1, int(stats.tokens.sum()))
        )
    parts = ("retain_prob", "retain_rouge", "retain_truth", "mc_accuracy")
    metrics["model_utility"] = harmonic_mean([metrics.get(k, float("nan")) for k in parts])
    return metrics


def matmul_peak(threads: int) -> float:
    """Best fp32 GFLOP/s of a few matrix products of the model's shapes."""
    best = 0.0
    for m, k, n in ((512, 576, 1536), (512, 1536, 576), (512, 576, 576), (1024, 1024, 1024)):
        a, b = torch.randn(m, k), torch.randn(k, n)
        for _ in range(3):
            a @ b
        start, repeat = time.perf_counter(), 30
        for _ in range(repeat):
            a @ b
        best = max(best, 2 * m * k * n * repeat / (time.perf_counter() - start) / 1e9)
    return best


def bench_evaluation(args) -> None:
    """One-pass evaluate vs the per-set form vs the naive per-item form, on the demo's task."""
    from excise.jobs.common import resolve_task
    from excise.metrics import evaluate, scored_examples
    from excise.models import load_model
    from excise.scoring import stats_for_examples

    model, tokenizer = load_model("smollm2-135m")
    task = resolve_task(model, tokenizer, task="chem-symbols")  # the knowledge filter (cached)
    examples = scored_examples(tokenizer, task)
    tokens = sum(len(e.input_ids) for e in examples)
    params = sum(p.numel() for p in model.parameters())
    peak = matmul_peak(args.threads)
    evaluate(model, tokenizer, task, generate=2)  # warm-up (first calls, allocations)
    rows = {}
    for label, run in (
        ("per-set (before)", lambda: per_set_evaluate(model, tokenizer, task)),
        ("one pass (now)", lambda: evaluate(model, tokenizer, task).metrics),
        ("one pass (now), again", lambda: evaluate(model, tokenizer, task).metrics),
    ):
        start = time.perf_counter()
        metrics = run()
        rows[label] = {"seconds": time.perf_counter() - start, "metrics": metrics}
    sample = examples[:: max(1, len(examples) // args.naive_items)]
    start = time.perf_counter()
    for example in sample:
        stats_for_examples(model, [example], tokenizer.pad_token_id)
    per_item = (time.perf_counter() - start) * len(examples) / len(sample)
    rows["per item (naive, extrapolated)"] = {"seconds": per_item, "metrics": {}}
    old, new = rows["per-set (before)"]["metrics"], rows["one pass (now)"]["metrics"]
    differences = {k: abs(old[k] - new[k]) for k in old}
    exact = all(old[k] == new[k] for k in old if k.endswith(("_accuracy", "_rouge")))
    print(
        f"task chem-symbols (filtered): {len(examples)} scored sequences, {tokens} tokens,"
        f" {params / 1e6:.1f}M parameters; fp32 matmul peak {peak:.0f} GFLOP/s"
    )
    print(f"{'form':32} {'seconds':>8} {'tokens/s':>9} {'GFLOP/s':>8} {'of peak':>8}")
    for label, row in rows.items():
        rate = tokens / row["seconds"]
        row |= {
            "tokens_per_s": rate,
            "gflops": 2 * params * rate / 1e9,
            "of_peak": 2 * params * rate / 1e9 / peak,
        }
        print(
            f"{label:32} {row['seconds']:8.1f} {rate:9.0f} {row['gflops']:8.1f} {row['of_peak']:8.2f}"
        )
    best_old = rows["per-set (before)"]["seconds"]
    best_new = min(rows["one pass (now)"]["seconds"], rows["one pass (now), again"]["seconds"])
    print(
        f"speedup (one pass: best of two): {best_old / best_new:.1f}x over per-set, "
        f"{per_item / best_new:.1f}x over per-item"
    )
    print(
        f"identical: accuracies and ROUGE exactly equal: {exact}; largest difference of any "
        f"metric: {max(differences.values()):.2e} ({max(differences, key=differences.get)})"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "peak_gflops": peak,
                    "tokens": tokens,
                    "sequences": len(examples),
                    "rows": rows,
                    "differences": differences,
                    "exact": exact,
                    "speedup": best_old / best_new,
                    "threads": args.threads,
                },
                f,
                indent=1,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tasks", default="chem-symbols,fictitious")
    parser.add_argument("--limit", type=int, default=100, help="N items per task (0: all)")
    parser.add_argument(
        "--budget", type=int, default=12, help="new tokens of the harness-style run"
    )
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--evaluation", action="store_true", help="time excise.metrics.evaluate")
    parser.add_argument("--naive-items", type=int, default=200, help="per-item sample size")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.evaluation:
        bench_evaluation(args)
        return
    from excise.models import load_model

    model, tokenizer = load_model("smollm2-135m")
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{args.threads} thread(s), python {platform.python_version()}"
    )
    print(f"machine: {machine}")
    print(
        f"{'task':14} {'items':>5} {'generation':>14} {'score it/s':>10} {'gen it/s':>9} "
        f"{'speedup':>8} {'acc score':>9} {'acc gen':>8} {'agree':>6}"
    )
    rows = []
    for name in args.tasks.split(","):
        row = bench_task(model, tokenizer, name, args.limit, args.budget)
        rows.append(row)
        print(f"{name}: {row['model']} model", flush=True)
        for label in ("answer_length", f"max{args.budget}"):
            gen = row[label]
            print(
                f"{name:14} {row['items']:5d} {label:>14} {row['scoring_items_per_s']:10.1f} "
                f"{gen['items_per_s']:9.2f} {gen['speedup']:8.1f} "
                f"{row['scoring_accuracy']:9.3f} {gen['accuracy']:8.3f} "
                f"{gen['item_agreement']:6.3f}",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
