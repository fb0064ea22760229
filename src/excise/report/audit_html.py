"""HTML sections of an audit (see :mod:`excise.attacks.scorecard` for the data they draw).

``audit_sections(report)`` takes the report (its ``audit`` entry) or the audit dict itself and
returns sections for :func:`excise.report.html.render_html`'s ``extra_sections``: the scorecard
table, forget accuracy clean vs attacked, relearning curves (original / unlearned / gold per
variant), per-layer probe and logit-lens lines, quantization settings with utility, and MIA AUCs.
Every chart is an inline ``<svg class="chart">``.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from excise.report.fmt import number
from excise.report.svg import bar_chart, line_chart


def _fmt(value: Any) -> str:
    return escape(number(value))  # None, NaN, inf: "n/a"


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _budget(budget: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in budget.items())


def _other(result: dict[str, Any]) -> str:
    """The headline of attacks that measure something other than answers."""
    metrics, details = result.get("metrics", {}), result.get("details", {})
    if details.get("skipped"):
        return f"skipped: {details['skipped']}"
    if result.get("name") == "probe":
        return (
            f"{details.get('mode')} probe {number(metrics.get('probe_accuracy'))} at layer "
            f"{number(metrics.get('best_layer'), '.0f')} (chance {number(metrics.get('chance'))}, "
            f"p={number(metrics.get('p_value'), '.2g')})"
        )
    if result.get("name") == "mia" and "auc_max" in metrics:
        return (
            f"AUC {number(metrics.get('auc_min'))}–{number(metrics.get('auc_max'))} "
            f"({details.get('mode')})"
        )
    return ""


def scorecard_table(audit: dict[str, Any]) -> str:
    card = audit.get("scorecard", {})
    forget, retain = card.get("forget_accuracy", {}), card.get("retain_accuracy", {})
    rows = [
        [f"clean ({role})", m.get("forget_accuracy"), m.get("retain_accuracy"), None, "", None, ""]
        for role, m in audit.get("clean", {}).items()
    ]
    for name in audit.get("attacks", []):
        seconds = audit.get("timings_s", {}).get(name)
        rows.append(
            [
                name,
                forget.get("attacked", {}).get(name),
                retain.get("attacked", {}).get(name),
                audit.get("recovery", {}).get(name),
                _other(audit.get("results", {}).get(name, {})),
                number(seconds, ".1f"),
                _budget(audit.get("budgets", {}).get(name, {})),
            ]
        )
    worst = (
        f"<p>worst-case forget accuracy <b>{_fmt(forget.get('worst'))}</b> "
        f"({escape(str(forget.get('worst_attack')))}; clean {_fmt(forget.get('clean'))})</p>"
    )
    head = card.get("recovery") or {}
    if head.get("worst") is not None:
        config = head.get("configuration")
        worst += (
            f"<p>worst-case recovery <b>{_fmt(head['worst'])}</b> of what the original knew "
            f"({escape(str(head.get('worst_attack')))}"
            + (f": {escape(json.dumps(config))}" if config else "")
            + ")</p>"
        )
    headers = ["attack", "forget acc.", "retain acc.", "recovery", "other", "seconds", "budget"]
    return (
        "<section><h2>Audit scorecard</h2>"
        + worst
        + _table(headers, rows)
        + "<p><small>forget/retain acc.: greedy exact match under attack (logit lens: first answer "
        "token). recovery = (attacked − unlearned) / (original − unlearned). A robustness claim "
        "holds only at the budget shown.</small></p></section>"
    )


def _source(row: dict[str, Any]) -> str:
    return row.get("source") or str(row["variant"]).split("_")[0]


def relearn_charts(audit: dict[str, Any]) -> list[str]:
    """One chart per data source: every configuration's curve on the unlearned model (named by
    variant and learning rate) beside the reference models' curves; then the grid as a table."""
    relearn = audit.get("relearn") or {}
    curves = relearn.get("curves") or {}
    if not curves.get("unlearned") and audit.get("results", {}).get("relearn"):
        curves = {"unlearned": audit["results"]["relearn"].get("curve") or []}
    sources = list(dict.fromkeys(_source(r) for rows in curves.values() for r in rows or []))
    charts = []
    for source in sources:
        series: dict[str, list] = {}
        for role, rows in curves.items():
            for row in rows or []:
                if _source(row) == source:
                    label = row["variant"] if role == "unlearned" else f"{role} {row['variant']}"
                    series.setdefault(label, []).append((row["step"], row["forget_accuracy"]))
        if relearn.get("threshold") is not None:
            steps = [x for pts in series.values() for x, _ in pts]
            series["threshold"] = [
                (min(steps), relearn["threshold"]),
                (max(steps), relearn["threshold"]),
            ]
        charts.append(
            line_chart(
                f"relearning on {source} data: forget accuracy on held-out half B",
                series,
                xlabel="step",
                ymax=1.0,
            )
        )
    details = audit.get("results", {}).get("relearn", {}).get("details", {})
    winner = (details.get("worst") or {}).get("variant")
    grid = [
        [
            f"{name} (winner)" if name == winner else name,
            end.get("lr"),
            end.get("best_forget_accuracy"),
            number(end.get("best_step"), ".0f"),
            number(end.get("last_step"), ".0f"),
            end.get("stopped"),
            end.get("retain_accuracy"),
        ]
        for name, end in (details.get("configurations") or {}).items()
    ]
    grid += [[name, None, None, "", "", f"skipped: {why}", None] for name, why in
             (details.get("skipped") or {}).items()]  # fmt: skip
    headers = ["configuration", "lr", "best forget acc.", "at step", "last step", "stopped",
               "retain acc. at the end"]  # fmt: skip
    table = _table(headers, grid) if grid else ""
    ratios = relearn.get("ratio") or {}
    rows = [[v, r.get("ratio"), r.get("bound")] for v, r in ratios.items()]
    if rows:
        table += _table(["variant", "relearn ratio (unlearned / gold steps)", "bound"], rows)
    return (
        ["<section><h2>Relearning</h2>" + "".join(charts) + table + "</section>"] if charts else []
    )


def layer_charts(audit: dict[str, Any]) -> list[str]:
    results, out = audit.get("results", {}), []
    probe = results.get("probe", {}).get("details", {})
    if probe.get("layer_accuracy"):
        chance = results["probe"]["metrics"].get("chance", 0.0)
        series = {
            f"probe ({probe.get('mode')})": list(
                zip(probe["layers"], probe["layer_accuracy"], strict=True)
            ),
            "chance": [(layer, chance) for layer in probe["layers"]],
        }
        out.append(
            line_chart(
                "linear probe: held-out accuracy per layer", series, xlabel="layer", ymax=1.0
            )
        )
    lens = results.get("logit_lens", {}).get("details", {})
    if lens.get("top1"):
        series = {
            "top-1 of first answer token": list(zip(lens["layers"], lens["top1"], strict=True))
        }
        out.append(
            line_chart("logit lens: answer top-1 rate per layer", series, xlabel="layer", ymax=1.0)
        )
    return ["<section><h2>Per layer</h2>" + "".join(out) + "</section>"] if out else []


def detail_tables(audit: dict[str, Any]) -> list[str]:
    results, out = audit.get("results", {}), []
    settings = results.get("quantize", {}).get("details", {}).get("settings") or []
    if settings:
        keys = ["forget_accuracy", "retain_accuracy", "mc_accuracy"]
        rows = [[s["setting"], *(s.get(k) for k in keys)] for s in settings]
        out.append(
            "<h3>Quantization (utility beside recovery)</h3>" + _table(["setting", *keys], rows)
        )
    mia = results.get("mia", {})
    if mia.get("metrics"):
        rows = [[k, v] for k, v in mia["metrics"].items()]
        out.append(
            f"<h3>Membership inference ({escape(str(mia['details'].get('mode')))})</h3>"
            + _table(["score", "AUC"], rows)
        )
    return ["<section><h2>Attack details</h2>" + "".join(out) + "</section>"] if out else []


def audit_sections(report: dict[str, Any]) -> list[str]:
    audit = report.get("audit", report)
    card = audit.get("scorecard", {}).get("forget_accuracy", {})
    attacked = card.get("attacked", {})
    sections = [scorecard_table(audit)]
    if attacked:
        bars = bar_chart(
            "forget accuracy: clean vs under attack",
            list(attacked),
            {
                # a missing or non-finite value draws no bar
                "clean": [card.get("clean")] * len(attacked),
                "attacked": list(attacked.values()),
            },
            ymax=1.0,
        )
        sections.append(f"<section>{bars}</section>")
    return sections + relearn_charts(audit) + layer_charts(audit) + detail_tables(audit)
