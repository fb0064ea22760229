"""CLI: ``excise bypass-check`` asks whether a changed model only bypasses a behaviour.

``excise bypass-check --model CHANGED --original ORIGINAL (--forget PAIRS | --task T | --forget F
--retain R) [--control MODEL] [--positive P --negative N] [--layer L] [--set key=value] [--out DIR]
[--json]``

With a pair file (``prompt``/``chosen``/``rejected``; ``builtin:preference`` for the shipped one)
the behaviour is the rejected continuations against the chosen ones; with a task or QA files it is
the forget answers against the retain items. ``--control`` is a model that never had the
behaviour (relearning is timed against it); without it the control is the original taught the
alternatives (pairs) or with the direction projected out of its weights (answers). ``--positive``/``--negative`` (records files, or
``builtin:harmful``/``builtin:harmless``) replace the texts the direction is found from. Prints
the verdict and its figures; ``--out`` writes ``report.json`` and ``report.html``. See
:mod:`excise.bypass` for the measures and thresholds (``--set`` sets any of them). Imports stay
light.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from excise.errors import ConfigError


def add_parser(commands, add_common) -> None:
    from excise import helptext

    p = commands.add_parser(
        "bypass-check",
        help="is a behaviour's direction still in a changed model, and does it bring it back?",
    )
    add_common(p)
    p.add_argument("--original", required=True, help="the model before the change")
    p.add_argument(
        "--control",
        help="a model that never had the behaviour, to time relearning against "
        "(default: the original taught the alternatives, or with the direction erased)",
    )
    p.add_argument("--positive", help="texts showing the behaviour (default: from the data)")
    p.add_argument("--negative", help="texts without it (default: from the data)")
    p.add_argument("--layer", type=int, help="layer of the direction (default: chosen)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="check option (repeatable)")
    p.add_argument(
        "--out",
        help="also write report.json, report.html, recipe.yaml and manifest.json into this "
        "folder, whole or not at all",
    )
    p.add_argument("--overwrite", action="store_true", help=helptext.OVERWRITE)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=run)


def _texts(source: str, name: str) -> list[str]:
    from excise.data.records import QA, Text, load_records
    from excise.data.tasks import BUILTIN

    if source.startswith("builtin:"):
        shipped = BUILTIN / "contrast" / f"{source.removeprefix('builtin:')}.jsonl"
        if not shipped.is_file():
            raise ConfigError(f"no built-in text set {source!r}: builtin:harmful, builtin:harmless")
        source = str(shipped)
    texts = [
        r.prompt + r.completion if isinstance(r, QA) else r.text
        for r in load_records(source, name=name)
        if isinstance(r, QA | Text)
    ]
    if not texts:
        raise ConfigError(f"{source}: the {name} set has no text or prompt records")
    return texts


def run(args: argparse.Namespace) -> int:
    from excise.bypass import BypassConfig
    from excise.cli import _options
    from excise.fsutil import check_output
    from excise.methods import make_config

    options = _options(args.set)
    if args.layer is not None:
        options["layer"] = args.layer
    config = make_config(BypassConfig, options)  # unknown options fail before any loading
    if (args.positive is None) != (args.negative is None):
        raise ConfigError("--positive and --negative go together")
    if args.out:
        inputs = {"--model": args.model, "--original": args.original, "--forget": args.forget}
        inputs |= {"--positive": args.positive, "--negative": args.negative}
        check_output(Path(args.out), overwrite=args.overwrite, inputs=inputs)
    from excise.data.preference import resolve

    positive = _texts(args.positive, "positive") if args.positive else None
    negative = _texts(args.negative, "negative") if args.negative else None
    forget = resolve(args.forget) if args.forget else None

    from excise.bypass import behaviour_from_task, bypass_check
    from excise.models import load_model
    from excise.pipeline import resolve_task

    started = time.perf_counter()
    loading = {
        "dtype": args.dtype,
        "allow_pickle": getattr(args, "allow_pickle", False),
        "trust_remote_code": getattr(args, "trust_remote_code", False),
    }
    original, tokenizer = load_model(args.original, **loading)
    modified, _ = load_model(args.model, **loading)
    control = load_model(args.control, **loading)[0] if args.control else None
    task = resolve_task(
        original,
        tokenizer,
        task=args.task,
        forget=forget,
        retain=args.retain,
        template=args.template,
        filter_items=True if args.filter_known else None,
    )
    behaviour = behaviour_from_task(task)
    if positive is not None:
        behaviour.positive, behaviour.negative = positive, negative
        behaviour.__post_init__()
    result = bypass_check(
        original,
        modified,
        tokenizer,
        behaviour,
        template=task.template,
        config=config,
        control=control,
    ).to_dict()
    seconds = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_result(result)
    if args.out:
        write(args, task, result, seconds)
        print(f"wrote {args.out}/report.json, {args.out}/report.html ({seconds:.0f} s)")
    return 0


def print_result(result: dict) -> None:
    present, causal, behaviour = result["present"], result["causal"], result["behaviour"]
    print(f"verdict: {result['verdict']} (layer {result['layer']})")
    print(
        f"behaviour ({behaviour['kind']}): original {behaviour['original']:.3f}, "
        f"modified {behaviour['modified']:.3f}"
    )
    preference = behaviour.get("preference") or {}
    if preference.get("original") is not None:
        print(
            f"preference for the behaviour: original {preference['original']:.2f}, "
            f"modified {preference['modified']:.2f}"
        )
    print(
        f"in the weights: direction cosine {present['direction_cosine']:.3f}, writer alignment "
        f"{present['writer_alignment']:.3f}, probe accuracy "
        f"{present['probe_accuracy']['original']:.3f} -> {present['probe_accuracy']['modified']:.3f}"
    )
    steer, steps = causal["steering_restoration"], causal["relearn_steps_to_restore"]
    last = causal["relearn"][-1]["step"] if causal["relearn"] else 0
    restore = result["thresholds"]["restore"]
    print(
        "causal: steering restores "
        + ("n/a" if steer is None else f"{steer:.2f}")
        + f" of the drop; relearning restores {restore:.0%} of it "
        + (f"in {steps} steps" if steps is not None else f"not within {last} steps")
    )
    control = causal.get("control") or {}
    if "relearn" in control:
        ctl = control["steps_to_target"]
        moves = "falls to" if control.get("direction") == "fall" else "rises to"
        if causal.get("relearn_speedup") is not None:
            speed = f"; relearning is {causal['relearn_speedup']:.1f}x faster"
        else:
            speed = "" if causal.get("relearn_judged") else "; the control cannot time it"
        print(
            f"control ({control['model']}): starts at {control['start']:.3f}, {moves} "
            f"{control['target']:.3f} "
            + (f"in {ctl} steps" if ctl is not None else f"not within {last} steps")
            + speed
            + (" (fast)" if causal.get("relearn_fast") else " (not fast)")
        )


def write(args: argparse.Namespace, task, result: dict, seconds: float) -> None:
    from excise.fsutil import atomic_dir, write_manifest
    from excise.report import _header, write_report

    report = {
        **_header("bypass", args.model, task),
        "original": args.original,
        "bypass": result,
        "timings_s": {"bypass check": seconds},
    }
    with atomic_dir(Path(args.out), overwrite=args.overwrite) as tmp:
        write_report(report, tmp)
        write_manifest(tmp)
