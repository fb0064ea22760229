"""report.html: one self-contained page (inline CSS and SVG, no scripts, no network)."""

from __future__ import annotations

import json
from html import escape
from typing import Any

from excise.report.examples import html_section
from excise.report.fmt import number
from excise.report.svg import bar_chart, line_chart

STYLE = """
body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
th:first-child,td:first-child,td:last-child{text-align:left}.good{color:#2a7}.bad{color:#c33}small{color:#666}
section{margin:2em 0}
table.examples td,table.examples th{text-align:left;vertical-align:top;max-width:22em}.said{background:#fff1b8}
"""


def _fmt(value: Any) -> str:
    return escape(number(value))  # None, NaN, inf: "n/a"


def metric_table(report: dict[str, Any]) -> str:
    before, after, help_ = (
        report.get("before", {}),
        report.get("after", {}),
        report.get("metric_help", {}),
    )
    rows = []
    for key in after:
        rows.append(
            f"<tr><td title='{escape(help_.get(key, ''))}'>{escape(key)}</td>"
            f"<td>{_fmt(before.get(key))}</td><td>{_fmt(after.get(key))}</td>"
            f"<td><small>{escape(help_.get(key, ''))}</small></td></tr>"
        )
    return (
        "<table><tr><th>metric</th><th>before</th><th>after</th><th>meaning</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def unlearn_sections(report: dict[str, Any]) -> list[str]:
    before, after = report.get("before", {}), report.get("after", {})
    keys = [
        k
        for k in (
            "forget_accuracy",
            "paraphrase_accuracy",
            "retain_accuracy",
            "mc_accuracy",
            "model_utility",
        )
        if k in after
    ]
    sections = [
        "<section><h2>Before and after</h2>" + metric_table(report) + "</section>",
        html_section(report.get("examples")),  # a few prompts, answered before and after
        "<section>"
        + bar_chart(
            "accuracy before and after",
            keys,
            {
                # a missing or non-finite value draws no bar
                "before": [before.get(k) for k in keys],
                "after": [after.get(k) for k in keys],
            },
            ymax=1.0,
        )
        + "</section>",
    ]
    log = report.get("loss_log") or []
    if log:
        curves = {
            name: [(row["step"], row[name]) for row in log if row.get(name) is not None]
            for name in log[0]
            if name not in ("step", "lr", "grad_norm")
        }
        sections.append(
            "<section>" + line_chart("training loss terms", curves, xlabel="step") + "</section>"
        )
    return sections


def render_html(report: dict[str, Any], extra_sections: list[str] | None = None) -> str:
    title = f"excise {report.get('kind', 'report')}: {report.get('model')} · {report.get('task', {}).get('name')}"
    sections = unlearn_sections(report) if report.get("kind") == "unlearn" else []
    sections += extra_sections or []
    timings = "".join(
        f"<tr><td>{escape(k)}</td><td>{number(v, '.1f')} s</td></tr>"
        for k, v in (report.get("timings_s") or {}).items()
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title><style>{STYLE}</style></head>
<body><h1>{escape(title)}</h1>
<p>method <b>{escape(str((report.get("method") or {}).get("name", "–")))}</b>,
excise {escape(str(report.get("excise_version")))}, {escape(str(report.get("created")))}</p>
{"".join(sections)}
<section><h2>Timings</h2><table>{timings}</table></section>
<section><h2>Task</h2><pre>{escape(json.dumps(report.get("task"), indent=2))}</pre></section>
</body></html>
"""
