"""The report page (``report.html``) and model card (``model/README.md``) of ``excise edit``, and
the example prompts it shows: every edit metric before, edited and in context, unrelated
knowledge and utility, the sequential trace and refused edits."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

import yaml

from excise.report.card import base_model, card_metadata
from excise.report.examples import card_lines, html_section
from excise.report.fmt import number
from excise.report.html import STYLE
from excise.report.svg import line_chart


def edit_html(report: dict[str, Any]) -> str:
    """``report.html`` of an edit: a self-contained page (inline style and SVG)."""
    before, after = report["before"]["edit"], report["after"]["edit"]
    context = report.get("in_context", {})
    categories = sorted({k.rsplit("_", 1)[0] for k in after if k != "fluency"})

    def cell(values: dict, key: str) -> str:
        return f"<td>{escape(number(values.get(key)))}</td>"  # None, NaN, inf: n/a

    rows = "".join(
        f"<tr><td>{escape(c)}</td>"
        + "".join(
            cell(values, f"{c}_{kind}")
            for values in (before, after, context)
            for kind in ("tf", "gen", "score")
        )
        + "</tr>"
        for c in categories
    )
    head = "".join(
        f"<th>{who} {kind}</th>"
        for who in ("before", "edited", "in-context")
        for kind in ("teacher-forced", "generated", "new&gt;old")
    )
    utility = "".join(
        f"<tr><td>{escape(k)}</td><td>{number(report['before']['utility'].get(k))}</td>"
        f"<td>{number(v)}</td></tr>"
        for k, v in report["after"]["utility"].items()
    )
    trace = ""
    batches = [b for b in report.get("batches", []) if b.get("monitor")]
    if len(batches) > 1:
        series = {
            key: [(b["batch"] + 1, b["monitor"][key]) for b in batches]
            for key in batches[0]["monitor"]
        }
        trace = "<section>" + line_chart("after each batch", series, xlabel="batch") + "</section>"
    refused = "".join(
        f"<li>{escape(str(r['case_id']))}: {escape(r['reason'])}</li>" for r in report["refused"]
    )
    title = f"excise edit: {report.get('model')} · {report['method']['name']}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title><style>{
        STYLE
    }</style></head>
<body><h1>{escape(title)}</h1>
<p>{report["applied"]} of {report["requests"]} edits applied{
        f", sequential batches of {report['sequential']}" if report.get("sequential") else ""
    }; preservation set: {escape(preserve_line(report.get("preserve")).replace("`", ""))}.
Teacher-forced scores read the answer's probability; generated scores check what the model
actually writes. The in-context column is the unedited model told the new fact in its prompt.</p>
<section><h2>Edit metrics</h2><table><tr><th>category</th>{head}</tr>{rows}</table>
<p>fluency (n-gram entropy): before {number(before.get("fluency"))}, edited {
        number(after.get("fluency"))
    }</p></section>
<section><h2>Unrelated knowledge and utility</h2><p>retain: {
        report.get("retain_items", 0)
    } chem-symbols facts the model knew that name no edited subject</p><table><tr><th>metric</th><th>before</th><th>after</th></tr>{
        utility
    }</table></section>
{trace}
<section><h2>Refused edits</h2><ul>{refused or "<li>none</li>"}</ul></section>
{html_section(report.get("examples"), after="edited", headings=EXAMPLE_HEADINGS)}
</body></html>
"""


def preserve_line(preserve: dict[str, Any] | None) -> str:
    if not preserve or not preserve.get("texts"):
        return "none"
    return f"`{preserve['source']}` ({preserve['texts']} texts whose keys the edit kept)"


EXAMPLE_HEADINGS = {
    "efficacy": "Edited prompts (expected: the new answer)",
    "paraphrase": "Rephrased edited prompts (expected: the new answer)",
    "neighborhood": "Other subjects' prompts (expected: their own answer, unchanged)",
}


def edit_examples(requests: list, count: int = 5) -> dict[str, list[tuple[str, str]]]:
    """The report's example prompts: the first ``count`` edit prompts, paraphrases and
    neighbourhood prompts, with the answer each should get after the edit."""
    sets = {
        "efficacy": [(r.text(), r.target_new) for r in requests],
        "paraphrase": [(p, r.target_new) for r in requests for p in r.paraphrases],
        "neighborhood": [(n.prompt, n.target) for r in requests for n in r.neighborhood],
    }
    return {name: items[:count] for name, items in sets.items() if items}


def edit_card(report: dict[str, Any]) -> str:
    """``model/README.md`` of an edited model: Hub front matter (:mod:`excise.report.card`),
    the figures before and after, and what the edited prompts now produce."""
    spec = str(report.get("model"))
    method = report["method"]["name"]
    meta = card_metadata(spec, kind="edit", method=method)
    hub_id, _, origin = base_model(spec)
    after, before = report["after"]["edit"], report["before"]["edit"]
    context = report.get("in_context") or {}
    rows = [
        f"| {k} | {number(before.get(k))} | {number(v)} | {number(context.get(k))} |"
        for k, v in sorted(after.items())
    ]
    utility_before = report["before"].get("utility") or {}
    utility = [
        f"| {k} | {number(utility_before.get(k))} | {number(v)} |"
        for k, v in (report["after"].get("utility") or {}).items()
    ]
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False).rstrip(),
        "---",
        f"# {hub_id or Path(spec).name}: model-editing with excise",
        "",
        f"- base model: {f'`{hub_id}`, ' if hub_id else ''}{origin} "
        f"(weights fingerprint `{report.get('model_sha')}`)",
        f"- method: `{method}`, {report['applied']} of {report['requests']} edits applied"
        + (f", sequential batches of {report['sequential']}" if report.get("sequential") else ""),
        f"- preservation set: {preserve_line(report.get('preserve'))}",
        f"- excise {report.get('excise_version')}, {report.get('created')}",
    ]
    if report.get("stopped"):
        lines.append(f"- stopped early: {report['stopped']}")
    if report.get("refused"):
        lines.append(f"- refused edits: {len(report['refused'])} (see report.html)")
    memory = report.get("memory")
    if memory:
        where = [
            "",
            f"**The edits are NOT in the weights.** They are a side memory of {memory['entries']} "
            f"entries on layer {memory['layer']} in `{memory['file']}` (routed by key similarity, "
            f"threshold {memory['threshold']}). `transformers`' `from_pretrained` loads the "
            "unedited model from this folder; excise (`excise.models.load_model`, every `excise` "
            "command) loads it with the edits. Deleting the file restores the base model.",
            "",
        ]
    else:
        where = [
            "",
            "A standard Hugging Face checkpoint. `../delta.safetensors` holds the exact weight "
            "changes: `excise revert-delta --model THIS --delta ../delta.safetensors --out BASE` "
            "restores the base model.",
            "",
        ]
    lines += [
        *where,
        "## Before and after",
        "",
        "`_tf` metrics are teacher forced, `_gen` come from greedy generation; in-context is the "
        "unedited model told the new fact in its prompt (see report.html). n/a: not measured, or "
        "not a finite number.",
        "",
        "| metric | before | edited | in-context |",
        "|---|---|---|---|",
        *rows,
        "",
    ]
    if utility:
        lines += [
            f"Unrelated knowledge and utility ({report.get('retain_items', 0)} facts the model "
            "knew that name no edited subject):",
            "",
            "| metric | before | edited |",
            "|---|---|---|",
            *utility,
            "",
        ]
    lines += card_lines(
        report.get("examples"),
        heading="What edited prompts now produce",
        after="edited",
        headings=EXAMPLE_HEADINGS,
    )
    return "\n".join(lines)
