"""Scoring benchmark on the bundled model (never part of `make test`).

    python bench/metrics.py [--threads 1] [--tasks chem-symbols,fictitious] [--limit 100] [--budget 12]

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tasks", default="chem-symbols,fictitious")
    parser.add_argument("--limit", type=int, default=100, help="N items per task (0: all)")
    parser.add_argument(
        "--budget", type=int, default=12, help="new tokens of the harness-style run"
    )
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
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
