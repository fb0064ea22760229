"""What the commands share: progress lines on stderr, ``--set key=value``, and the option groups
several commands take (model and data, loading, trackers, benchmarks). Imports stay light."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

import yaml

from excise.cli import helptext
from excise.errors import ConfigError


def echo(message: str) -> None:
    """A progress line, on stderr (stdout holds the results)."""
    print(message, file=sys.stderr, flush=True)


def parse_set(pairs: list[str] | None) -> dict[str, Any]:
    """``--set key=value`` pairs; values are read as YAML scalars (numbers, true/false, lists)."""
    options: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--set takes key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        try:
            options[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            raise ConfigError(f"--set {key}: cannot read value {raw!r}") from error
    return options


def job_from(args: argparse.Namespace, job: type, **given: Any) -> Any:
    """``job`` built from the parsed options named like its fields, and ``given`` (values the
    command line spells differently, e.g. ``options=parse_set(args.set)``)."""
    names = [f.name for f in dataclasses.fields(job) if f.name not in given]
    return job(**{name: getattr(args, name) for name in names if hasattr(args, name)}, **given)


def attack_names(value: str) -> str | list[str]:
    """``--audit`` / ``--attacks``: ``all`` or a comma list."""
    return "all" if value == "all" else [a.strip() for a in value.split(",") if a.strip()]


def add_common(parser: argparse.ArgumentParser) -> None:
    """The model, the data (a task or the user's files), the template, dtype and loading."""
    parser.add_argument(
        "--model",
        default="smollm2-135m",
        help="the model: smollm2-135m (bundled), a local HF folder, a .gguf file or a hub id",
    )
    parser.add_argument(
        "--task",
        help="a built-in task (chem-symbols, fictitious, biomed, toxicity, bias) or a benchmark "
        "(tofu:forget10, muse:news, wmdp:bio, ...); `excise tasks` lists them with their sizes",
    )
    parser.add_argument(
        "--forget",
        help="instead of --task: what to remove, a records file (.jsonl/.json/.csv/.parquet), "
        "a datasets folder or a hub dataset id",
    )
    parser.add_argument("--retain", help="with --forget: what to keep, in the same formats")
    parser.add_argument(
        "--template", default="auto", choices=("auto", "raw", "chat"), help=helptext.TEMPLATE
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16", "float16"),
        help=helptext.DTYPE,
    )
    parser.add_argument(
        "--filter-known",
        action="store_true",
        help="keep only items the model answers correctly (built-in tasks always do)",
    )
    add_loading(parser)


def add_loading(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="load .bin (pickle) weights when a folder has no safetensors, with the restricted "
        "unpickler torch.load(weights_only=True)",
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the model's own Python code (auto_map) if it needs it; only for authors you trust",
    )


def add_tracking(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--report-to",
        metavar="TRACKERS",
        help="log the training losses per step, the metrics before and after and the audit's "
        "curves to experiment trackers (accelerate's): tensorboard, wandb, mlflow, comet_ml, "
        "aim, clearml, dvclive, swanlab, trackio, all (every one installed); a comma list for "
        "several (default: none)",
    )
    parser.add_argument(
        "--logging-dir",
        metavar="DIR",
        help="where trackers write local logs (TensorBoard's event files) "
        "(default: OUT.runs, beside --out)",
    )


def add_benchmark(parser: argparse.ArgumentParser, *, gold: bool = True) -> None:
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="for a benchmark --task: a folder with its files (TOFU, MUSE, WMDP as their authors "
        "publish them); without it they are read from the hub",
    )
    if gold:
        parser.add_argument(
            "--utility",
            metavar="lm-eval:TASKS",
            help="also score lm-evaluation-harness tasks (names, task .yaml files or folders; "
            "needs excise[lmeval])",
        )
        parser.add_argument(
            "--gold",
            metavar="MODEL",
            help="benchmarks: a model never trained on the forget set (TOFU retain model, MUSE "
            "retrain model) for TOFU forget quality and MUSE PrivLeak",
        )
