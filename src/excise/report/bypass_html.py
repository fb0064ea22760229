"""HTML section of a bypass check (:mod:`excise.attacks.bypass`): the verdict, its figures, and the
relearning curve of the behaviour score."""

from __future__ import annotations

from html import escape
from typing import Any

from excise.report.fmt import number
from excise.report.svg import line_chart

MEANING = {
    "bypassed": "the behaviour's direction is still in the weights and brings the behaviour back "
    "(the change steers around it rather than removing it)",
    "removed": "the direction is gone from the weights, or neither adding it back nor "
    "relearning (against a control without the behaviour) restores the behaviour faster",
    "inconclusive": "the direction is still in the weights and relearning brings the behaviour "
    "back, but no control could say whether faster than it comes to a model without it",
    "not_suppressed": "the change did not lower the behaviour score; there is nothing to check",
}


def _fmt(value: Any) -> str:
    return escape(number(value))  # None, NaN, inf: "n/a"


def bypass_section(result: dict[str, Any]) -> str:
    verdict = str(result.get("verdict"))
    present, causal = result.get("present", {}), result.get("causal", {})
    behaviour, thresholds = result.get("behaviour", {}), result.get("thresholds", {})
    tone = {"bypassed": "bad", "inconclusive": "warn"}.get(verdict, "good")
    control = causal.get("control") or {}
    rows = [
        ("behaviour score, original", behaviour.get("original")),
        ("behaviour score, modified", behaviour.get("modified")),
        ("direction cosine (original vs modified)", present.get("direction_cosine")),
        ("MLP writer alignment (modified / original)", present.get("writer_alignment")),
        ("projection gap ratio (modified / original)", present.get("projection_gap_ratio")),
        ("fresh probe accuracy, original", present.get("probe_accuracy", {}).get("original")),
        ("fresh probe accuracy, modified", present.get("probe_accuracy", {}).get("modified")),
        ("steering: best restored share of the drop", causal.get("steering_restoration")),
        ("behaviour preferred, original", (behaviour.get("preference") or {}).get("original")),
        ("behaviour preferred, modified", (behaviour.get("preference") or {}).get("modified")),
        ("relearn steps to restore (target score)", causal.get("relearn_steps_to_restore")),
        ("control: " + str(control.get("model")), control.get("start")),
        ("control: target (" + str(control.get("direction")) + ")", control.get("target")),
        ("control: steps to its target", control.get("steps_to_target")),
        ("relearning speed-up over the control", causal.get("relearn_speedup")),
        ("relearning fast (evidence of bypass)", causal.get("relearn_fast")),
    ]
    table = "".join(f"<tr><td>{escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in rows)
    curve = {
        "relearn": [(r["step"], r["score"]) for r in causal.get("relearn", [])],
        "original": [(r["step"], behaviour.get("original")) for r in causal.get("relearn", [])],
    }
    if control.get("relearn"):
        curve["control"] = [(r["step"], r["score"]) for r in control["relearn"]]
    chart = line_chart("behaviour score while relearning", curve, xlabel="step") if curve else ""
    limits = ", ".join(f"{k}={v}" for k, v in thresholds.items())
    return (
        f"<section><h2>Bypass check: <span class='{tone}'>{escape(verdict)}</span></h2>"
        f"<p>{escape(MEANING.get(verdict, ''))}. Layer {_fmt(result.get('layer'))}, "
        f"score: {escape(str(behaviour.get('kind')))} on {_fmt(behaviour.get('held_out_items'))} "
        f"held-out items. Thresholds: {escape(limits)}.</p>"
        f"<table><tr><th>measure</th><th>value</th></tr>{table}</table>{chart}</section>"
    )
