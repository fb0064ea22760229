"""``excise bypass-check``: parse into a :class:`~excise.jobs.bypass.BypassJob`, run it, print the
verdict and its figures (or JSON).

``excise bypass-check --model CHANGED --original ORIGINAL (--forget PAIRS | --task T | --forget F
--retain R) [--control MODEL] [--positive P --negative N] [--layer L] [--set key=value] [--out DIR]
[--json]``; :mod:`excise.jobs.bypass` says what each input means.
"""

from __future__ import annotations

import argparse
import json

from excise.cli import helptext
from excise.cli.common import add_common, job_from, parse_set


def add_parser(commands: argparse._SubParsersAction) -> None:
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
    p.set_defaults(handler=run_bypass)


def run_bypass(args: argparse.Namespace) -> int:
    from excise.jobs.bypass import BypassJob, run  # lazy: torch and transformers

    job = job_from(args, BypassJob, options=parse_set(args.set))
    result = run(job)
    if args.json:
        print(json.dumps(result.check, indent=2))
    else:
        print_result(result.check)
    if args.out:
        print(f"wrote {args.out}/report.json, {args.out}/report.html ({result.seconds:.0f} s)")
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
