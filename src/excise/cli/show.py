"""What the commands print on stdout from a job's report: the before/after table, the audit's
scorecard, the erasure's figures."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

TABLE = (
    "forget_accuracy",
    "paraphrase_accuracy",
    "retain_accuracy",
    "mc_accuracy",
    "model_utility",
    "perplexity",
)


def print_table(before: dict[str, float], after: dict[str, float]) -> None:
    print(f"{'metric':<22}{'before':>10}{'after':>10}")
    for key in TABLE:
        if key in after:
            print(f"{key:<22}{before.get(key, float('nan')):>10.3f}{after[key]:>10.3f}")


def print_scorecard(audit: dict[str, Any]) -> None:
    card = audit["scorecard"]["forget_accuracy"]
    recovery = audit.get("recovery") or {}
    print(f"{'attack':<16}{'forget acc':>12}{'recovery':>10}")
    print(f"{'(clean)':<16}{card['clean']:>12.3f}")
    for name, value in card["attacked"].items():
        rec = recovery.get(name)
        print(f"{name:<16}{value:>12.3f}{'' if rec is None else f'{rec:>10.2f}'}")
    print(f"worst case: {card['worst']:.3f} ({card['worst_attack']})")
    head = audit["scorecard"].get("recovery") or {}
    if head.get("worst") is not None:
        print(
            f"worst-case recovery: {head['worst']:.2f} ({head['worst_attack']}: "
            f"{head.get('configuration')})"
        )
    relearn = audit.get("relearn") or {}
    for variant, ratio in (relearn.get("ratio") or {}).items():
        value = "n/a" if ratio.get("ratio") is None else f"{ratio['ratio']:.2f}"
        print(
            f"relearn ratio vs gold ({variant}): {value} [{ratio.get('bound')}] (1.0 = never learned)"
        )


def print_unlearn(report: dict[str, Any], out: str | Path, started: float) -> None:
    """An unlearning run: the table, the audit and bypass check if any, what was written, times."""
    print_table(report["before"], report["after"])
    if not report["after"]:
        print("(no evaluation: --eval none)")
    if audit := report.get("audit"):  # the relearning attack's best against the original's
        original = (audit.get("relearn") or {}).get("original_clean_half_b")
        worst = audit["scorecard"]["forget_accuracy"]["worst"]
        recovered = [v for v in (audit.get("recovery") or {}).values() if v is not None]
        print(
            f"{'worst case under attack':<23}{'' if original is None else f'{original:>9.3f}'}"
            f"{worst:>10.3f}"
            + (f"  (recovers {max(recovered):.0%} of the removed)" if recovered else "")
        )
    if report.get("audit"):
        print_scorecard(report["audit"])
    if check := report.get("bypass"):
        print(f"bypass check: {check['verdict']} (layer {check['layer']}; see report.html)")
    lora = report.get("lora")
    written = ["model"] if not lora or lora["merged"] else []
    written += ["adapter"] if lora else []
    print(
        f"wrote {', '.join(f'{out}/{name}' for name in written)}, {out}/report.json, {out}/report.html"
    )
    if tracked := report.get("tracking"):  # --report-to
        print(f"logged to {', '.join(tracked['report_to'])}: {tracked['logging_dir']}")
    print(
        f"total {time.perf_counter() - started:.0f} s; stages: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in report["timings_s"].items())
    )


def print_erase(report: dict[str, Any], out: str | Path) -> None:
    """An erasure: its figures, the task's before/after table if any, and what was written."""
    for key, value in report["erasure"].items():
        print(f"{key:<32}{value:>12.4g}")
    if report["after"]:
        print(f"{'metric':<22}{'before':>10}{'after':>10}")
        for key, value in report["after"].items():
            print(f"{key:<22}{report['before'].get(key, float('nan')):>10.3f}{value:>10.3f}")
    print(f"wrote {out}/model, {out}/report.json ({report['seconds']:.0f} s)")
