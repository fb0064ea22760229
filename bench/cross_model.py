"""The same commands on both bundled models: what transfers from SmolLM2-135M to Gemma 3 270M.

    python bench/cross_model.py [--models gemma3-270m,smollm2-135m] [--rows demo,memit,erase]
                                [--no-audit] [--work DIR] [--note ROW=TEXT ...]

Rows (each the command a user types, run as a subprocess; figures read from its report.json):
- ``demo``:  excise demo --model M                      forget, paraphrase, retain, MC, perplexity
- ``memit``: excise edit --model M --task counterfact-mini --limit 100 --method memit
             --no-generation                            efficacy, paraphrase, neighbourhood (tf)
- ``erase``: excise erase --model M --task bias --method leace
                                                        probe accuracy, stereotype, perplexity
- ``ablate``: the same with --method ablate (directional ablation)
- ``audit-METHOD``: excise unlearn --model M --task chem-symbols --method METHOD --audit all
                     (every attack, after the job's own evaluations)
                                                        worst recovery, the attack that reached it

Results merge into bench/results/cross-model-2026-12-07.json (a later run replaces only the
cells it measured) and the table in the .md beside it is rewritten from the JSON, with one
sentence per row given by ``--note ROW=TEXT``. Never part of `make test`: each cell loads a real
model (Gemma's demo takes minutes on 2 CPU cores; a full audit tens of minutes).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
STEM = "cross-model-2026-12-07"
EXCISE = str(Path(sys.executable).with_name("excise"))
DEMO_KEYS = ("forget_accuracy", "paraphrase_accuracy", "retain_accuracy", "mc_accuracy")


def commands(row: str, model: str, out: Path, no_audit: bool) -> list[list[str]]:
    """The commands a cell runs, in order; the last one's OUT/report.json holds its figures."""
    common = ["--model", model, "--out", str(out), "--overwrite", "--quiet"]
    if row == "demo":
        return [[EXCISE, "demo", *common, *(["--no-audit"] if no_audit else [])]]
    if row == "memit":
        edit = ["--task", "counterfact-mini", "--limit", "100", "--method", "memit"]
        return [[EXCISE, "edit", *common, *edit, "--no-generation"]]
    if row in ("erase", "ablate"):
        method = "leace" if row == "erase" else "ablate"
        return [[EXCISE, "erase", *common, "--task", "bias", "--method", method]]
    if row.startswith("audit-"):
        method = ["--method", row.removeprefix("audit-"), "--audit", "all"]
        return [[EXCISE, "unlearn", *common, "--task", "chem-symbols", *method]]
    raise SystemExit(f"unknown row {row!r}: demo, memit, erase, ablate or audit-METHOD")


def numbers(values: dict) -> dict[str, float]:
    return {k: round(float(v), 4) for k, v in values.items() if isinstance(v, int | float)}


def figures(row: str, report: dict) -> dict:
    """What the table shows of a command's report (and everything numeric before/after)."""
    before, after = (report.get(side, {}) for side in ("before", "after"))
    if row == "memit":  # an edit's report nests {"edit": ..., "utility": ...}
        before, after = ({**s.get("edit", {}), **s.get("utility", {})} for s in (before, after))
    before, after = numbers(before), numbers(after)
    cell = {"before": before, "after": after}
    if row == "demo":
        cell["timings_s"] = report.get("timings_s", {})
        if before.get("retain_accuracy"):
            cell["retain_kept"] = round(after["retain_accuracy"] / before["retain_accuracy"], 4)
        audit = report.get("audit") or {}
        # the scorecard's worst (the audit's own "recovery" is per attack)
        recovery = (audit.get("scorecard") or {}).get("recovery") or audit.get("recovery") or {}
        if "worst" in recovery:
            cell["worst_under_attack"] = round(float(recovery["worst"]), 4)
    elif row == "memit":
        cell["timings_s"] = report.get("timings_s", {})
    elif row in ("erase", "ablate"):
        cell["erasure"] = numbers(report.get("erasure", {}))
        cell["layer"] = report.get("layer")
    elif row.startswith("audit-"):
        cell.update(figures("demo", report))
        audit = report.get("audit", {})
        card = audit.get("scorecard", {})
        cell["worst_recovery"] = card.get("recovery", {})
        cell["worst_forget"] = card.get("forget_accuracy", {})
        cell["recovery"] = audit.get("recovery", {})
        cell["clean"] = audit.get("clean", {})
        cell["audit_timings_s"] = audit.get("timings_s", {})
        cell["timings_s"] = report.get("timings_s", {})
    return cell


def run_cell(row: str, model: str, work: Path, no_audit: bool) -> dict:
    out = work / f"{row}-{model}"
    shown = []
    cell: dict = {"commands": shown, "walls_s": []}
    for argv in commands(row, model, out, no_audit):
        shown.append(" ".join(["excise", *argv[1:]]))
        print("$", shown[-1], flush=True)
        start = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True)
        cell["walls_s"].append(round(time.perf_counter() - start, 1))
        if done.returncode != 0:
            print(done.stdout[-2000:], done.stderr[-2000:], file=sys.stderr)
            return {**cell, "returncode": done.returncode, "wall_s": sum(cell["walls_s"])}
    cell["wall_s"] = round(sum(cell["walls_s"]), 1)
    cell["printed"] = done.stdout[-4000:]
    cell.update(figures(row, json.loads((out / "report.json").read_text())))
    shutil.rmtree(out, ignore_errors=True)
    return cell


def fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


# what each row's cell shows (the JSON keeps every figure): (before -> after keys, erasure keys)
SHOWN = {
    "memit": (
        ("efficacy_tf", "paraphrase_tf", "neighborhood_tf", "portability_tf", "compositional_tf",
         "efficacy_score", "neighborhood_score", "retain_accuracy", "mc_accuracy", "perplexity"),
        (),
    ),
    "erase": (
        ("stereotype_preference", "perplexity", "mc_accuracy"),
        ("chance", "probe_before", "probe_after", "probe_runtime", "probe_after_max"),
    ),
    "audit": (
        ("forget_accuracy", "paraphrase_accuracy", "retain_accuracy", "near_retain_accuracy",
         "mc_accuracy", "perplexity"),
        (),
    ),
}  # fmt: skip
SHOWN["ablate"] = SHOWN["erase"]


def cell_figures(row: str, cell: dict) -> list[str]:
    b, a = cell.get("before", {}), cell.get("after", {})
    if row.split("-")[0] == "demo":  # demo, demo-layer5 (an earlier default's cell)
        keys = (*DEMO_KEYS, "perplexity")
        shown = [f"{k.split('_')[0]} {fmt(b.get(k))} -> {fmt(a.get(k))}" for k in keys]
        shown.append(f"retain kept {fmt(cell.get('retain_kept'))}")
        if "worst_under_attack" in cell:
            shown.append(f"worst under attack {fmt(cell['worst_under_attack'])}")
        return shown
    pairs, erasure = SHOWN[row.split("-")[0]]  # audit-rmu: audit; memit-before-fix: memit
    shown = [f"{k} {fmt(b.get(k))} -> {fmt(a.get(k))}" for k in pairs if k in a]
    shown += [f"{k} {fmt(v)}" for k, v in cell.get("erasure", {}).items() if k in erasure]
    if row.startswith("audit-"):
        worst = cell.get("worst_recovery", {})
        config = worst.get("configuration") or {}
        where = ", ".join(f"{k} {v}" for k, v in config.items() if k in ("variant", "step"))
        shown.append(
            f"**worst-case recovery {fmt(worst.get('worst'))}** ({worst.get('worst_attack')}"
            f"{': ' + where if where else ''})"
        )
        recovery = cell.get("recovery", {})
        ranked = sorted(recovery, key=lambda n: -(recovery[n] or 0))[1:4]
        shown.append("next: " + ", ".join(f"{n} {fmt(recovery[n])}" for n in ranked))
    if cell.get("layer") is not None:
        shown.append(f"layer {cell['layer']}")
    return shown


def table(data: dict) -> str:
    lines = [
        "| row | model | figures (before -> after) | wall s |",
        "|---|---|---|---|",
    ]
    for row, cells in data["rows"].items():
        for model, cell in cells.items():
            shown = cell_figures(row, cell)
            lines.append(f"| {row} | {model} | {'; '.join(shown)} | {fmt(cell.get('wall_s'))} |")
    notes = [f"- **{row}**: {text}" for row, text in data.get("notes", {}).items()]
    head = [
        f"# Cross-model table ({data['date']})",
        "",
        f"Machine: {data['machine']}. Produced by `python bench/cross_model.py` (each cell is the",
        "commands in the JSON's `commands`, run once; figures are the last one's report.json).",
        "",
    ]
    return "\n".join([*head, *lines, "", "## What transferred", "", *notes, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="gemma3-270m,smollm2-135m")
    parser.add_argument("--rows", default="demo,memit,erase")
    parser.add_argument("--no-audit", action="store_true", help="demo without its quick audit")
    parser.add_argument("--work", default=None, help="where outputs go (default: a temp dir)")
    parser.add_argument("--note", action="append", default=[], help="ROW=one sentence")
    args = parser.parse_args()
    path = RESULTS / f"{STEM}.json"
    data = json.loads(path.read_text()) if path.is_file() else {"rows": {}, "notes": {}}
    data["date"] = time.strftime("%Y-%m-%d", time.gmtime())
    data["machine"] = (
        f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
        f" {'cuda' if torch.cuda.is_available() else 'cpu'}"
    )
    work = Path(args.work or tempfile.mkdtemp(prefix="cross-model-"))
    rows = [r for r in args.rows.split(",") if r]
    for row in rows:
        for model in [m for m in args.models.split(",") if m]:
            data["rows"].setdefault(row, {})[model] = run_cell(row, model, work, args.no_audit)
            path.write_text(json.dumps(data, indent=2) + "\n")  # each cell kept as it lands
    for note in args.note:
        row, _, text = note.partition("=")
        data["notes"][row] = text
    path.write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / f"{STEM}.md").write_text(table(data))
    print((RESULTS / f"{STEM}.md").read_text())


if __name__ == "__main__":
    main()
