"""``excise erase``: parse into an :class:`~excise.jobs.erase.EraseJob`, run it, print the
erasure's figures.

``excise erase --model M --method leace|ablate|clamp (--task T | --forget F --retain R |
--positive P --negative N) --out DIR [--layer L] [--set key=value] [--overwrite]``
"""

from __future__ import annotations

import argparse

from excise.cli import helptext
from excise.cli.common import add_common, job_from, parse_set
from excise.cli.show import print_erase

METHODS = ("leace", "ablate", "clamp")  # excise.erasure.ERASERS; a test keeps them equal


def add_parser(commands: argparse._SubParsersAction) -> None:
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
    p.set_defaults(handler=run_erase)


def run_erase(args: argparse.Namespace) -> int:
    from excise.jobs.erase import EraseJob, run  # lazy: torch and transformers

    job = job_from(args, EraseJob, options=parse_set(args.set))
    print_erase(run(job).report, args.out)
    return 0
