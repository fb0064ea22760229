"""``excise methods``, ``excise attacks`` and ``excise tasks``: what the registries and the task
catalogue hold, with every option's real default."""

from __future__ import annotations

import argparse
import json
import textwrap

from excise.registry import defaults


def add_parsers(commands: argparse._SubParsersAction) -> None:
    methods = commands.add_parser("methods", help="list methods, their options and defaults")
    methods.set_defaults(handler=run_methods)
    attacks = commands.add_parser("attacks", help="list audit attacks and their default budgets")
    attacks.set_defaults(handler=run_attacks)
    tasks = commands.add_parser(
        "tasks", help="list the built-in tasks and benchmarks, their sizes and what they measure"
    )
    tasks.add_argument("--json", action="store_true", help="print the list as JSON")
    tasks.set_defaults(handler=run_tasks)


def options_line(cls: type) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in defaults(cls).items()) or "-"


def run_methods(args: argparse.Namespace) -> int:
    """Every removal method, editor and eraser with its options' real defaults."""
    # lazy: the registries import every method, and torch with them
    from excise.editing import EDITORS
    from excise.erasure import ERASERS
    from excise.methods import METHODS, UNLEARNING

    for name, spec in METHODS.all().items():
        role = "remove" if name in UNLEARNING else "helper"
        print(f"{name:<10} [{role}] {spec.summary}")
        print(f"{'':<10} options: {options_line(spec.config_cls)}")
        print(f"{'':<10} training defaults: {spec.train_defaults or '-'}")
    for kind, registry, command in (("edit", EDITORS, "edit"), ("erase", ERASERS, "erase")):
        for name, spec in registry.all().items():
            print(f"{name:<10} [{kind}] {spec.summary} (excise {command} --method {name})")
            print(f"{'':<10} options: {options_line(spec.config_cls)}")
    return 0


def run_attacks(args: argparse.Namespace) -> int:
    from excise.attacks import all_attacks  # lazy: the registry imports every attack

    for name, spec in all_attacks().items():
        print(f"{name:<14} {spec.summary}")
        print(f"{'':<14} budget: {options_line(spec.config_cls)}")
    return 0


def run_tasks(args: argparse.Namespace) -> int:
    """``excise tasks``: every task ``--task`` takes, its sizes and what it measures."""
    from excise.jobs.catalog import catalog  # lazy: the task loaders import torch

    entries = catalog()
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    headings = {
        "built-in task": "built-in tasks (sizes as shipped, before the knowledge filter)",
        "benchmark": "benchmarks (sizes as their authors publish them)",
        "edit requests": "edit requests, for `excise edit --task`",
    }
    wrap = textwrap.TextWrapper(96, subsequent_indent=" " * 20, break_on_hyphens=False)
    kind = None
    for entry in entries:
        if entry["kind"] != kind:
            kind = entry["kind"]
            print(("" if entry is entries[0] else "\n") + headings.get(kind, kind) + ":")
        sizes = ", ".join(f"{key} {value}" for key, value in entry["sizes"].items())
        print(wrap.fill(f"  {entry['name']:<18}{entry['measures']}"))
        print(wrap.fill(f"{' ' * 20}{sizes}; {entry['source']}"))
    return 0
