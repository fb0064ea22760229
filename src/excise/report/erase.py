"""The model card (``model/README.md``) of ``excise erase``: the erasure's figures, the task's
metrics before and after, and what the concept's prompts now produce."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from excise.report.card import base_model, card_metadata
from excise.report.examples import card_lines
from excise.report.fmt import number

EXAMPLE_HEADINGS = {
    "forget": "Prompts of the bounded concept",
    "paraphrase": "Rephrased prompts of the concept",
    "retain": "Prompts to keep",
    "positive": "Prompts with the concept (--positive)",
    "negative": "Prompts without it (--negative)",
}


def erase_card(report: dict[str, Any]) -> str:
    """``model/README.md``: Hub front matter (:mod:`excise.report.card`), the erasure's figures,
    the task's before and after, and what its prompts now produce."""
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
