"""``excise audit`` and ``excise evaluate``: parse into an
:class:`~excise.jobs.audit.AuditJob` / :class:`~excise.jobs.evaluate.EvaluateJob`, run it, print
the scorecard or the metrics."""

from __future__ import annotations

import argparse
import json

from excise.cli import helptext
from excise.cli.common import add_benchmark, add_common, attack_names, echo, job_from
from excise.cli.show import print_scorecard


def add_parsers(commands: argparse._SubParsersAction) -> None:
    audit = commands.add_parser(
        "audit", help="attack a changed model and write a worst-case scorecard"
    )
    add_common(audit)
    add_benchmark(audit, gold=False)
    audit.add_argument("--original", required=True, help="the model before the change")
    audit.add_argument(
        "--attacks", default="all", help="all, or a comma list (see `excise attacks`)"
    )
    audit.add_argument(
        "--out",
        required=True,
        help=helptext.out_help("report.json, report.html, recipe.yaml, manifest.json"),
    )
    audit.add_argument("--overwrite", action="store_true", help=helptext.OVERWRITE)
    audit.add_argument("--quiet", action="store_true", help="no progress bars")
    audit.add_argument(
        "--expect-hash",
        metavar="SHA256",
        help="refuse to audit unless the model's weights have this sha256 (model_sha256 in reports)",
    )
    audit.set_defaults(handler=run_audit)

    evaluate = commands.add_parser("evaluate", help="score a model on a task")
    add_common(evaluate)
    add_benchmark(evaluate)
    evaluate.add_argument("--original", help="filter the task's items by what this model knows")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")
    evaluate.set_defaults(handler=run_evaluate)


def run_audit(args: argparse.Namespace) -> int:
    from excise.jobs.audit import AuditJob, run  # lazy: torch and transformers

    job = job_from(args, AuditJob, attacks=attack_names(args.attacks))
    report = run(job, echo=echo).report
    print_scorecard(report["audit"])
    print(f"audited weights sha256 {report['model_sha256']}")
    print(f"wrote {args.out}/report.json, {args.out}/report.html")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from excise.jobs.evaluate import EvaluateJob, run  # lazy: torch and transformers

    job = job_from(args, EvaluateJob)
    metrics = run(job).metrics
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        for key, value in metrics.items():
            print(f"{key:<22}{value:>10.3f}")
    return 0
