"""CLI: ``excise erase`` bounds a concept in closed form and writes model + report.

``excise erase --model M --method leace|ablate|clamp (--task T | --forget F --retain R |
--positive P --negative N) --out DIR [--layer L] [--set key=value] [--overwrite]`` writes
``DIR/model`` (safetensors; plain ``from_pretrained`` loads it; runtime-hook forms add
``excise_hooks.*`` and a note on attaching them), ``DIR/erasure.safetensors`` (directions,
erasers), ``DIR/report.json`` and ``DIR/manifest.json``. With a task (built-in or forget/retain
files) positives are the forget prompts (with paraphrases), negatives the retain prompts, and the
report gives forget/retain/multiple-choice accuracy and perplexity before and after (a use case
with a contrast set of its own, ``bias``, is fitted on that: :func:`excise.data.benchmarks.benchmark_contrast`); the layer of
``ablate``/``clamp`` is then chosen by held-out retain minus forget accuracy. Imports stay light.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from excise.errors import ConfigError

METHODS = ("leace", "ablate", "clamp")  # excise.erasure.ERASERS; a test keeps them equal


def add_parser(commands, add_common) -> None:
    from excise import helptext

    p = commands.add_parser(
        "erase", help="bound a concept in closed form: leace, ablate or clamp (folded into weights)"
    )
    add_common(p)
    p.add_argument("--method", required=True, choices=METHODS, help="how to bound the concept")
    p.add_argument(
        "--positive",
        help="instead of a task: prompts where the concept is present (records file, "
        "builtin:harmful)",
    )
    p.add_argument("--negative", help="prompts where it is absent (records file, builtin:harmless)")
    p.add_argument("--layer", type=int, help="layer to fit at (default: chosen / a quarter depth)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="method option (repeatable)")
    p.add_argument(
        "--out",
        required=True,
        help=helptext.out_help(
            "model/ (a Hugging Face checkpoint with its model card), erasure.safetensors, "
            "report.json, manifest.json"
        ),
    )
    p.add_argument("--overwrite", action="store_true", help=helptext.OVERWRITE)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=run)


def _prompts(path: str, name: str) -> list[list[str]]:
    """Prompt groups of a records file; ``builtin:harmful`` / ``builtin:harmless`` name the
    shipped contrast sets (excise/data/builtin/contrast)."""
    from excise.data.records import QA, Text, load_records
    from excise.data.tasks import BUILTIN

    if path.startswith("builtin:"):
        shipped = BUILTIN / "contrast" / f"{path.removeprefix('builtin:')}.jsonl"
        if not shipped.is_file():
            raise ConfigError(
                f"no built-in contrast set {path!r}: builtin:harmful, builtin:harmless"
            )
        path = str(shipped)
    items = []
    for record in load_records(path, name=name):
        if isinstance(record, QA):
            items.append([record.prompt, *record.paraphrases])
        elif isinstance(record, Text):
            items.append([record.text])
    if not items:
        raise ConfigError(f"{path}: the {name} set has no prompt or text records")
    return items


def _task_scores(model, tokenizer, task) -> dict[str, float]:
    from excise.attacks.base import utility_metrics
    from excise.data.benchmarks import benchmark_metrics
    from excise.metrics import perplexity

    scores = utility_metrics(model, tokenizer, task)
    scores["perplexity"] = perplexity(model, tokenizer, [t.text for t in task.fluency])
    scores.update(benchmark_metrics(model, tokenizer, task))  # a use case's own (bias: stereotype)
    return scores


def run(args: argparse.Namespace) -> int:
    from excise.cli import _options
    from excise.fsutil import atomic_dir, check_output, write_manifest

    out = Path(args.out)
    options = _options(args.set)
    if args.layer is not None:
        options["layer"] = args.layer
    has_task = args.task is not None or args.forget is not None
    if has_task == (args.positive is not None or args.negative is not None):
        raise ConfigError("give --task (or --forget/--retain), or --positive and --negative")
    if not has_task and (args.positive is None or args.negative is None):
        raise ConfigError("--positive and --negative go together")
    inputs = {"--model": args.model, "--forget": args.forget, "--retain": args.retain}
    inputs |= {"--positive": args.positive, "--negative": args.negative}
    check_output(out, overwrite=args.overwrite, inputs=inputs)
    positive = negative = None
    if not has_task:  # read the files before loading a model: errors come fast
        positive = _prompts(args.positive, "positive")
        negative = _prompts(args.negative, "negative")

    import torch

    from excise.data.records import QA
    from excise.erasure import adapter
    from excise.erasure.core import erase
    from excise.metrics.generate import answer_sets
    from excise.models import load_model, save_model
    from excise.pipeline import resolve_task
    from excise.report import examples

    started = time.perf_counter()
    model, tokenizer = load_model(
        args.model,
        dtype=args.dtype,
        allow_pickle=getattr(args, "allow_pickle", False),
        trust_remote_code=getattr(args, "trust_remote_code", False),
    )
    template = args.template
    scorer, task, before = None, None, {}
    if has_task:
        task = resolve_task(
            model,
            tokenizer,
            task=args.task,
            forget=args.forget,
            retain=args.retain,
            template=template,
            filter_items=True if args.filter_known else None,
            data_dir=getattr(args, "data_dir", None),
        )
        template = task.template
        positive = [[q.prompt, *q.paraphrases] for q in task.forget_eval]
        negative = [[r.prompt, *r.paraphrases] for r in task.retain if isinstance(r, QA)]
        negative = negative or [[q.prompt, *q.paraphrases] for q in task.retain_eval]
        from excise.data.benchmarks import benchmark_contrast

        own = benchmark_contrast(task)  # a task with a contrast set of its own (bias)
        if own is not None:
            positive, negative = own
        scorer = _scorer(tokenizer, task)
        before = _task_scores(model, tokenizer, task)
    elif template == "auto":
        template = "chat" if getattr(tokenizer, "chat_template", None) else "raw"
    texts = [t.text for t in task.fluency] if task is not None else None
    shown = _example_prompts(task, positive, negative)
    shown_before = answer_sets(model, tokenizer, shown, template)  # before it changes
    model, result = erase(
        model, tokenizer, args.method, positive, negative,
        template=template, texts=texts, scorer=scorer, **options,
    )  # fmt: skip
    hooks = []  # a runtime form is scored with its hooks on, as it is meant to be used
    for hook in (result.adapter or {}).get("hooks", []):
        hooks += adapter.register(model, hook, result.tensors)
    after = _task_scores(model, tokenizer, task) if task is not None else {}
    shown_after = answer_sets(model, tokenizer, shown, template)
    for handle in hooks:
        handle.remove()
    report = {
        "schema_version": 1,
        "kind": "erase",
        "model": args.model,
        "method": {"name": args.method, "options": options},
        "task": task.name if task is not None else None,
        "inputs": {"positive": args.positive, "negative": args.negative, "template": template},
        "layer": result.layer,
        "folded": result.folded,
        "erasure": result.metrics,
        "details": result.details,
        "notes": result.notes,
        "before": before,
        "after": after,
        "examples": examples.combine(shown, shown_before, shown_after),
        "seconds": round(time.perf_counter() - started, 1),
    }
    from safetensors.torch import save_file

    with atomic_dir(out, overwrite=args.overwrite) as tmp:
        save_model(model, tokenizer, tmp / "model")
        tensors = {k: v.detach().float().cpu().clone() for k, v in result.tensors.items()}
        if result.adapter is not None:
            adapter.save(tmp / "model", result.adapter["hooks"], tensors)
        save_file(tensors or {"empty": torch.zeros(0)}, tmp / "erasure.safetensors")
        (tmp / "model" / "README.md").write_text(_card(report))
        (tmp / "report.json").write_text(json.dumps(_clean(report), indent=2) + "\n")
        write_manifest(tmp)
    _print(report)
    print(f"wrote {out}/model, {out}/report.json ({report['seconds']:.0f} s)")
    return 0


def _scorer(tokenizer, task):
    """Held-out retain minus forget accuracy under a candidate change (chooses the layer)."""
    from excise.attacks.base import accuracy

    def score(model, held_out_positive: list[int]) -> float:
        forget = [task.forget_eval[i] for i in held_out_positive]
        forget_accuracy = accuracy(model, tokenizer, forget, task.template)
        return accuracy(model, tokenizer, task.retain_eval, task.template) - forget_accuracy

    return score


def _clean(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _print(report: dict[str, Any]) -> None:
    for key, value in report["erasure"].items():
        print(f"{key:<32}{value:>12.4g}")
    if report["after"]:
        print(f"{'metric':<22}{'before':>10}{'after':>10}")
        for key, value in report["after"].items():
            print(f"{key:<22}{report['before'].get(key, float('nan')):>10.3f}{value:>10.3f}")


EXAMPLE_HEADINGS = {
    "forget": "Prompts of the bounded concept",
    "paraphrase": "Rephrased prompts of the concept",
    "retain": "Prompts to keep",
    "positive": "Prompts with the concept (--positive)",
    "negative": "Prompts without it (--negative)",
}


def _example_prompts(task, positive, negative, count: int = 5) -> dict[str, list[tuple[str, str]]]:
    """The report's example prompts: a task's sets with their answers, else the first
    ``--positive`` and ``--negative`` prompts (no expected answer)."""
    from excise.report import examples

    if task is not None:
        return examples.pick(task, count)
    sets = {"positive": positive or [], "negative": negative or []}
    return {k: [(group[0], "") for group in v[:count]] for k, v in sets.items() if v}


def _card(report: dict[str, Any]) -> str:
    """``model/README.md``: Hub front matter (:mod:`excise.report.card`), the erasure's figures,
    the task's before and after, and what its prompts now produce."""
    import yaml

    from excise.report.card import base_model, card_metadata
    from excise.report.examples import card_lines
    from excise.report.fmt import number

    spec, method = str(report["model"]), report["method"]["name"]
    meta = card_metadata(spec, kind="erase", method=method, task=report.get("task"))
    hub_id, _, origin = base_model(spec)
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False).rstrip(),
        "---",
        f"# {hub_id or Path(spec).name}: concept-erasure with excise ({method})",
        "",
        f"- base model: {f'`{hub_id}`, ' if hub_id else ''}{origin}",
        f"- method: `{method}` with options `{json.dumps(report['method']['options'])}`, "
        f"at layer {number(report.get('layer'))}",
    ]
    if report.get("task"):
        lines.append(f"- fitted on the task `{report['task']}`")
    lines += [f"- {note}" for note in report.get("notes") or []]
    if not report.get("folded"):
        lines.append("- the bound is a runtime hook, not part of the weights: see EXCISE_HOOKS.md")
    lines.append("")
    if report.get("erasure"):
        lines += ["## Erasure", "", "| measure | value |", "|---|---|"]
        lines += [f"| {k} | {number(v, '.4g')} |" for k, v in report["erasure"].items()]
        lines.append("")
    after, before = report.get("after") or {}, report.get("before") or {}
    if after:
        lines += [
            "## Before and after",
            "",
            "Measured on the task's evaluation sets (n/a: not measured, or not a finite number).",
            "",
            "| metric | before | after |",
            "|---|---|---|",
            *[f"| {k} | {number(before.get(k))} | {number(v)} |" for k, v in after.items()],
            "",
        ]
    lines += card_lines(
        report.get("examples"),
        heading="What the concept's prompts now produce",
        headings=EXAMPLE_HEADINGS,
    )
    lines += [
        "## Use",
        "",
        "A standard checkpoint: `AutoModelForCausalLM.from_pretrained(this_folder)` loads it.",
        "",
    ]
    return "\n".join(lines)
