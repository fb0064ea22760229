"""``excise edit``, ``excise apply-delta``, ``excise revert-delta`` and ``excise stats``: parse into
an :class:`~excise.jobs.edit.EditJob`, :class:`~excise.jobs.delta.DeltaJob` or
:class:`~excise.jobs.delta.StatsJob`, run it, print the result."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from excise.cli import helptext
from excise.cli.common import echo, job_from, parse_set
from excise.errors import ConfigError
from excise.report.fmt import number


def add_parsers(commands: argparse._SubParsersAction) -> None:
    from excise.editing.stats import DEFAULT_TOKENS  # lazy: torch (for --tokens' default)

    edit = commands.add_parser(
        "edit", help="change facts (rome, memit, alphaedit, ft, memory) and write model + deltas"
    )
    edit.add_argument(
        "--model",
        default="smollm2-135m",
        help="the model: smollm2-135m (bundled), a local HF folder, a .gguf file or a hub id",
    )
    source = edit.add_mutually_exclusive_group(required=True)
    source.add_argument("--requests", help="edit requests: excise jsonl, CounterFact or zsRE json")
    source.add_argument("--task", help="built-in requests: counterfact-mini (`excise tasks`)")
    edit.add_argument("--method", default="memit", help="rome, memit, alphaedit, ft or memory")
    edit.add_argument("--limit", type=int, help="use the first N requests")
    edit.add_argument(
        "--sequential", type=int, metavar="N", help="apply in sequential batches of N requests"
    )
    edit.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="method option (repeatable)"
    )
    edit.add_argument(
        "--stats", help="key statistics file from `excise stats` (else cached/computed)"
    )
    edit.add_argument("--stats-corpus", help="text for key statistics (.jsonl with 'text' or .txt)")
    edit.add_argument(
        "--preserve",
        metavar="SOURCE",
        help="memit/alphaedit: what the edit must keep, every token's key: 'facts' (built-in "
        "world facts; alphaedit's default), 'none', or a records file (QA, text or MC; "
        ".jsonl/.json/.csv/.parquet); per-key weight --set preserve_weight=W (default 1, "
        "shared out when the set has more than 2 x key-width keys)",
    )
    edit.add_argument(
        "--min-retain",
        type=float,
        help="sequential: stop (or warn) when retain accuracy falls below this",
    )
    edit.add_argument(
        "--on-drop",
        default="stop",
        choices=("stop", "warn"),
        help="what --min-retain does when retain accuracy falls below it",
    )
    edit.add_argument(
        "--ripple",
        nargs="?",
        const="builtin",
        metavar="RELATIONS",
        help="also edit the facts each request implies (the model's own answers about the new "
        "object, e.g. the new country's capital and language), in the same batch; RELATIONS: a "
        "relation-templates JSON file (default: the shipped one)",
    )
    edit.add_argument(
        "--guard",
        action="store_true",
        help="memit/alphaedit, for --sequential: drift guard (stop each target once it is the "
        "most probable answer, pull the weights toward the starting ones: --set norm_anchor=A, "
        "cap each update: --set max_update=R)",
    )
    edit.add_argument("--no-generation", action="store_true", help="teacher-forced metrics only")
    edit.add_argument(
        "--template",
        default="auto",
        choices=("auto", "raw", "chat"),
        help="prompt format: raw (plain text) or chat (the tokenizer's chat template); auto: raw, "
        "as edit prompts are cloze prompts",
    )
    edit.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16", "float16"),
        help=helptext.DTYPE,
    )
    edit.add_argument(
        "--out",
        required=True,
        help=helptext.out_help(
            "model/ (a Hugging Face checkpoint with its model card), delta.safetensors (the exact "
            "weight changes), report.json, report.html, manifest.json"
        ),
    )
    edit.add_argument("--overwrite", action="store_true", help=helptext.OVERWRITE)
    edit.add_argument("--quiet", action="store_true", help="no progress bar")
    edit.set_defaults(handler=run_edit)

    for name, sign, verb in (("apply-delta", 1.0, "apply"), ("revert-delta", -1.0, "undo")):
        sub = commands.add_parser(name, help=f"{verb} an edit's weight deltas on a model, exactly")
        sub.add_argument("--model", required=True, help="the model to change")
        sub.add_argument(
            "--delta", required=True, help="delta.safetensors written by `excise edit`"
        )
        sub.add_argument(
            "--out", required=True, help=helptext.out_help("the changed model, manifest.json")
        )
        sub.add_argument("--overwrite", action="store_true", help=helptext.OVERWRITE)
        sub.add_argument(
            "--dtype",
            default="float32",
            choices=("float32", "bfloat16", "float16"),
            help=helptext.DTYPE,
        )
        sub.set_defaults(handler=run_delta, sign=sign)

    stats = commands.add_parser(
        "stats", help="compute (or take from cache) and export key statistics"
    )
    stats.add_argument(
        "--model",
        default="smollm2-135m",
        help="the model: smollm2-135m (bundled), a local HF folder, a .gguf file or a hub id",
    )
    stats.add_argument("--method", default="memit", help="whose default layers to use")
    stats.add_argument("--layers", help="comma list of layers (default: the method's)")
    stats.add_argument(
        "--tokens", type=int, help=f"tokens of text to read (default: {DEFAULT_TOKENS})"
    )
    stats.add_argument(
        "--corpus",
        help="text file (.jsonl with 'text' or .txt; default: the shipped general and "
        "encyclopedic samples)",
    )
    stats.add_argument("--out", required=True, help="the .safetensors file to write")
    stats.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a statistics file that excise wrote earlier; anything else is refused",
    )
    stats.set_defaults(handler=run_stats)


def run_edit(args: argparse.Namespace) -> int:
    from excise.jobs.edit import EditJob, run  # lazy: torch and transformers

    job = job_from(
        args,
        EditJob,
        options=parse_set(args.set),
        generation=not args.no_generation,
        progress=not args.quiet,
    )
    started = time.perf_counter()
    report = run(job, echo=echo).report
    print_edit_table(report)
    print(f"wrote {args.out}/model, {args.out}/delta.safetensors, {args.out}/report.json")
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


def print_edit_table(report: dict[str, Any]) -> None:
    before, after = report["before"]["edit"], report["after"]["edit"]
    context = report.get("in_context", {})
    print(f"{'metric':<30}{'before':>9}{'edited':>9}{'in-ctx':>9}")
    for key in sorted(after):
        print(
            f"{key:<30}{before.get(key, float('nan')):>9.3f}{after[key]:>9.3f}"
            f"{context.get(key, float('nan')):>9.3f}"
        )
    for key, value in report["after"].get("utility", {}).items():
        # a part of the MC set no question falls in is n/a; question counts are whole numbers
        was = report["before"]["utility"].get(key)
        print(f"{key:<30}{number(was):>9}{number(value):>9}")
    if report.get("stopped"):
        print(f"stopped early: {report['stopped']}")
    if report.get("refused"):
        print(f"refused edits: {len(report['refused'])} (see report.json)")


def run_delta(args: argparse.Namespace) -> int:
    from excise.jobs.delta import DeltaJob, run_delta  # lazy: torch and transformers

    job = job_from(args, DeltaJob)  # no --allow-pickle here: the job's defaults (off)
    done = run_delta(job)
    verb = "applied" if args.sign > 0 else "reverted"
    print(f"{verb} {done['tensors']} tensor deltas ({done['method']}); wrote {args.out}")
    return 0


def parse_layers(text: str) -> list[int]:
    """``--layers``: a comma list of integers."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as error:
        raise ConfigError(f"--layers takes a comma list of integers, got {text!r}") from error


def run_stats(args: argparse.Namespace) -> int:
    from excise.jobs.delta import StatsJob, run_stats  # lazy: torch and transformers

    job = job_from(args, StatsJob, layers=parse_layers(args.layers) if args.layers else None)
    print(json.dumps(run_stats(job)))
    return 0
