"""What the audit costs where users wait: the old default audit, the new default grid and the
demo's quick audit, timed in one process on one RMU-unlearned chem-symbols model (issue #24).

    python bench/audit_cost.py [--parts quick_before,quick,old,new] [--unlearned /tmp/rmu]
        [--out bench/results/audit-cost-DATE]

Loads the bundled model (smollm2-135m) and chem-symbols (its knowledge filter cached), unlearns
a copy with rmu at its defaults (the demo's method), evaluates the original and the unlearned
model quickly (as the demo does), then times, each through :func:`excise.attacks.scorecard.audit`
with ``attacks="relearn"`` and the original model as reference:
- ``quick_before``: the demo's quick audit as it ran before (nothing handed over: every clean
  accuracy scored again); ``quick``: the same audit given the job's two quick evaluations
  (``known``), as ``excise demo`` runs it now;
- ``old``: the default relearn audit before the grid (commit 6cc9cf9): forget/retain x full/LoRA
  at 1e-4 (full) and 1e-3 (LoRA), checkpoints 0, 5, 10, 25, 50, no early stop of any kind, each
  LoRA configuration alone through peft; the original's forget_full reference curve (50 steps);
- ``new``: today's default budget (3 learning rates x full/LoRA x forget/retain/text, up to 100
  steps, early stops, LoRA configurations side by side); the same reference curve with a plateau stop.
Writes OUT.json after every part (a run cut short keeps what finished) and prints the ratios and
each audit's worst case (highest forget accuracy on half B, recovery, configuration).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

# the pre-grid default (git show 6cc9cf9:src/excise/attacks/relearn.py), in today's budget
OLD_BUDGET = {
    "variants": ["forget_full", "forget_lora", "retain_full", "retain_lora"],
    "lr_grid": [],
    "steps": [0, 5, 10, 25, 50],
    "patience": 0,
    "behind": 0.0,
    "stop_at_recovery": False,
    "side_by_side": False,
}


def summary(report: dict, seconds: float) -> dict:
    relearn = report["results"]["relearn"]
    details = relearn["details"]
    return {
        "wall_s": round(seconds, 1),
        "timings_s": report["timings_s"],
        "worst_forget_accuracy": relearn["metrics"]["forget_accuracy"],
        "clean_half_b": details["clean_forget_accuracy"],
        "original_half_b": details["original_forget_accuracy"],
        "recovery": report["recovery"].get("relearn"),
        "worst": details["worst"],
        "configurations": {
            name: {
                k: end.get(k) for k in ("best_forget_accuracy", "best_step", "last_step", "stopped")
            }
            for name, end in details["configurations"].items()
        },
        "skipped": details["skipped"],
        "clean": report["clean"],
    }


def log_configurations() -> None:
    """Print each relearning configuration (and the side-by-side LoRA group) as it ends, with
    its wall time, so a run cut short still shows where the time went."""
    from excise.attacks import relearn, relearn_side

    one, together = relearn.run_configuration, relearn_side.train_side_by_side

    def timed_one(*args, **kwargs):
        start = time.perf_counter()
        rows, end = one(*args, **kwargs)
        seconds = time.perf_counter() - start
        name = kwargs.get("name") or args[4]
        print(f"  [{name}] {seconds:.1f} s, to step {end.get('last_step')} ({end['stopped']}), "
              f"best {end.get('best_forget_accuracy')}", flush=True)  # fmt: skip
        return rows, end

    def timed_together(model, tokenizer, lanes, **kwargs):
        start = time.perf_counter()
        side = together(model, tokenizer, lanes, **kwargs)
        ends = ", ".join(
            f"{lane.watch.name} to {lane.watch.end.get('last_step')} ({lane.watch.end['stopped']}, "
            f"best {lane.watch.end.get('best_forget_accuracy')})"
            for lane in lanes
        )
        print(f"  [LoRA side by side] {time.perf_counter() - start:.1f} s: {ends}", flush=True)
        return side

    relearn.run_configuration = timed_one
    relearn_side.train_side_by_side = timed_together


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="quick_before,quick,old,new")
    parser.add_argument(
        "--unlearned", help="a folder: the RMU model saved there on the first run, reloaded after"
    )
    parser.add_argument("--out", default=f"bench/results/audit-cost-{time.strftime('%Y-%m-%d')}")
    args = parser.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]

    from excise.attacks.scorecard import audit

    log_configurations()
    from excise.jobs.common import QUICK_AUDIT, evaluations_known, resolve_task
    from excise.jobs.training import unlearn
    from excise.metrics import evaluate
    from excise.models import clone_model, load_model, save_model

    out = Path(args.out)
    result: dict = {
        "command": "python bench/audit_cost.py --parts "
        + ",".join(parts)
        + (f" --unlearned {args.unlearned}" if args.unlearned else ""),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "old_budget": OLD_BUDGET,
        "stages_s": {},
        "audits": {},
    }

    def write() -> None:
        out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))

    def stage(name: str, work):
        start = time.perf_counter()
        value = work()
        result["stages_s"][name] = round(time.perf_counter() - start, 1)
        print(f"[{name}] {result['stages_s'][name]} s", flush=True)
        return value

    original, tokenizer = stage("load model", lambda: load_model("smollm2-135m"))
    task = stage("load task", lambda: resolve_task(original, tokenizer, task="chem-symbols"))
    saved = Path(args.unlearned) if args.unlearned else None
    if saved is not None and (saved / "config.json").is_file():  # the same RMU model, reloaded
        model = stage("load the unlearned model", lambda: load_model(str(saved))[0])
    else:
        model = clone_model(original)
        options = {"progress": False}
        stage(
            "unlearn (rmu)", lambda: unlearn(model, tokenizer, task, "rmu", train_options=options)
        )
        if saved is not None:
            save_model(model, tokenizer, saved)
    result["task"] = {"forget_eval": len(task.forget_eval), "retain_eval": len(task.retain_eval)}
    write()
    plans = {
        "quick_before": (QUICK_AUDIT["relearn"], False),
        "quick": (QUICK_AUDIT["relearn"], True),
        "old": (OLD_BUDGET, False),
        "new": (None, False),
    }
    evaluations: dict = {}
    for part in parts:
        budget, handed = plans[part]
        known = None
        if handed:  # the demo's two quick evaluations (once), handed to its quick audit
            if "before" not in evaluations:
                evaluations["before"] = stage(
                    "evaluate before (quick)",
                    lambda: evaluate(original, tokenizer, task, quick=True),
                )
                evaluations["after"] = stage(
                    "evaluate after (quick)", lambda: evaluate(model, tokenizer, task, quick=True)
                )
            known = evaluations_known(
                task, "quick", unlearned=evaluations["after"], original=evaluations["before"]
            )
        start, cpu = time.perf_counter(), time.process_time()
        report = audit(
            model, tokenizer, task, original=original, attacks="relearn",
            budgets={"relearn": budget} if budget else None, known=known,
        )  # fmt: skip
        result["audits"][part] = summary(report, time.perf_counter() - start)
        result["audits"][part]["cpu_s"] = round(time.process_time() - cpu, 1)
        print(f"[audit {part}] {json.dumps(result['audits'][part])}", flush=True)
        write()
    audits = result["audits"]
    ratios = {}
    if "old" in audits and "new" in audits:
        ratios["new / old"] = round(audits["new"]["wall_s"] / audits["old"]["wall_s"], 2)
    if "quick_before" in audits and "quick" in audits:
        ratios["quick / quick_before"] = round(
            audits["quick"]["wall_s"] / audits["quick_before"]["wall_s"], 2
        )
    result["ratios"] = ratios
    write()
    lines = [
        "| audit | wall s | worst forget (half B) | recovery | configuration |",
        "|---|---|---|---|---|",
    ]
    for part, row in audits.items():
        worst = row["worst"]
        where = f"{worst.get('variant')} step {worst.get('step')}"
        recovery = "-" if row["recovery"] is None else f"{row['recovery']:.2f}"
        lines.append(
            f"| {part} | {row['wall_s']} | {row['worst_forget_accuracy']:.3f} | {recovery} | {where} |"
        )
    print("\n".join(lines))
    print("ratios:", ratios)
    md = [
        f"# Audit cost ({result['date']})",
        "",
        f"`{result['command']}`; {result['machine']}.",
        "",
    ]
    md += lines + ["", f"ratios: {ratios}", "", f"stages (s): {result['stages_s']}"]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
