"""Reports: ``report.json`` (versioned schema), ``report.html`` (self-contained) and a model card.

Schema (``schema_version`` 1): ``kind`` ("unlearn" | "audit"), ``created``, ``excise_version``,
``model``, ``task`` {name, template, sizes, metadata}, ``method`` {name, options, train},
``before`` / ``after`` {metric: value}, ``loss_log`` [{step, loss, ...}], ``timings_s``
{stage: seconds}, and for audits ``audit`` (see :mod:`excise.attacks`). Every metric is explained
in ``metric_help``. ``unlearn`` reports also hold ``examples`` {set: [{prompt, expected, before,
after, before_match, after_match}]} (:mod:`excise.report.examples`) and, with ``--report-to``,
``tracking`` {report_to, logging_dir, run} (:mod:`excise.train.tracking`).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import yaml

from excise.data.tasks import Task
from excise.metrics import Evaluation
from excise.report.card import model_card
from excise.report.html import render_html

SCHEMA_VERSION = 1

METRIC_HELP = {
    "forget_accuracy": "share of forget answers the model still gives greedily (lower is better)",
    "paraphrase_accuracy": "the same on rephrased forget questions (lower is better)",
    "retain_accuracy": "share of held-out retain answers the model gives greedily (keep high)",
    "forget_prob": "mean per-token probability of the forget answers",
    "retain_prob": "mean per-token probability of the retain answers",
    "paraphrase_prob": "mean per-token probability of forget answers under rephrasing",
    "forget_truth": "how much more likely the true forget answer is than wrong ones (0 = not at all)",
    "retain_truth": "the same on retain items (keep high)",
    "forget_rouge": "ROUGE-L recall of generated forget answers",
    "retain_rouge": "ROUGE-L recall of generated retain answers",
    "mc_accuracy": "general multiple-choice accuracy (utility)",
    "perplexity": "perplexity on generic prose (fluency; lower is better)",
    "model_utility": "harmonic mean of retain prob, retain ROUGE, retain truth and mc accuracy",
    "forget_quality": "KS-test p-value against a model never trained on the forget set (1 = same)",
}


def _version() -> str:
    from excise.models import package_version

    return package_version("excise")


def task_summary(task: Task) -> dict[str, Any]:
    return {
        "name": task.name,
        "template": task.template,
        "sizes": {
            "forget": len(task.forget),
            "retain": len(task.retain),
            "forget_eval": len(task.forget_eval),
            "paraphrases": len(task.paraphrases),
            "retain_eval": len(task.retain_eval),
            "utility": len(task.utility),
            "fluency": len(task.fluency),
        },
        "metadata": task.metadata,
    }


def header(kind: str, model_spec: str, task: Task | dict[str, Any]) -> dict[str, Any]:
    """The fields every report starts with (``task``: a Task, or a summary of other inputs)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "excise_version": _version(),
        "model": model_spec,
        "task": task if isinstance(task, dict) else task_summary(task),
    }


def build_report(
    *,
    model_spec: str,
    task: Task,
    method: str,
    method_options: dict[str, Any],
    train: dict[str, Any],
    before: Evaluation,
    after: Evaluation,
    log: list[dict[str, float]],
    timings: dict[str, float],
) -> dict[str, Any]:
    return {
        **header("unlearn", model_spec, task),
        "method": {"name": method, "options": method_options, "train": train},
        "before": before.metrics,
        "after": after.metrics,
        "loss_log": log,
        "timings_s": timings,
        "metric_help": METRIC_HELP,
    }


def audit_report(
    *,
    model_spec: str,
    original_spec: str,
    task: Task,
    audit: dict[str, Any],
    timings: dict[str, float],
) -> dict[str, Any]:
    return {
        **header("audit", model_spec, task),
        "original": original_spec,
        "audit": audit,
        "timings_s": timings,
        "metric_help": METRIC_HELP,
    }


def clean(value: Any) -> Any:
    """JSON has no NaN: write null instead."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def write_report(report: dict[str, Any], folder: Path) -> None:
    report = clean(report)
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    sections = []
    if report.get("audit"):
        from excise.report.audit_html import audit_sections

        sections = audit_sections(report)
    if report.get("bypass"):  # excise.attacks.bypass: the "removed" / "bypassed" verdict
        from excise.report.bypass_html import bypass_section

        sections.append(bypass_section(report["bypass"]))
    (folder / "report.html").write_text(render_html(report, sections))
    recipe = {k: report[k] for k in ("model", "method") if k in report}
    recipe["task"] = report.get("task", {}).get("name")
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    if (folder / "model").is_dir():
        (folder / "model" / "README.md").write_text(model_card(report))
