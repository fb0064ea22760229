"""Every editor on the same requests, at once and sequentially: one table (never in `make test`).

    python bench/editing_table.py --editors ft,rome,memit,alphaedit,memory \
        --at-once 100 --sequential 500 --batch 10 --eval-sample 100 --prefixes 0

For each editor (or variant: ``NAME`` or ``NAME+ripple``/``NAME+guard``) and schedule:

* ``at-once``: the first ``--at-once`` counterfact-mini requests in one batch;
* ``sequential``: the first ``--sequential`` requests in batches of ``--batch``, in file order;

then, on the edited model: efficacy of every request edited (score and teacher forced), every
edit metric teacher forced and by greedy generation (:func:`excise.editing.metrics.edit_metrics`)
on an evenly spaced sample of ``--eval-sample`` of them (all of them when there are no more),
and the utility probe the sequential bench uses (unrelated chem-symbols facts, multiple choice
on all questions and on those naming no edited subject, perplexity), each against the unedited
model measured in the same run. Rows go to ``bench/results/OUT.json`` as each finishes (a row
already there is not run again: an interrupted table resumes), and the table to ``OUT.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from editing import _efficacy, _setup

RESULTS = Path(__file__).parent / "results"
MC_PARTS = ("unrelated", "replaced", "same_subject")  # excise.editing.utility's split
METRICS = ("efficacy", "paraphrase", "neighborhood", "portability", "compositional")


def _sample(requests: list, size: int) -> list:
    """``size`` requests evenly spaced over ``requests`` (all of them if there are no more)."""
    if size >= len(requests):
        return list(requests)
    step = len(requests) / size
    return [requests[int(i * step)] for i in range(size)]


def _variant(name: str) -> tuple[str, dict]:
    """``memit+ripple`` -> ("memit", {"ripple": True}); options ride after the editor's name."""
    method, *flags = name.split("+")
    unknown = set(flags) - {"ripple", "guard"}
    if unknown:
        raise SystemExit(f"unknown variant flag(s) {sorted(unknown)} in {name!r}")
    return method, {flag: True for flag in flags}


def _row(model, tokenizer, requests, name, schedule, args, baseline) -> dict:
    from excise.editing import edit, make_config
    from excise.editing.metrics import edit_metrics
    from excise.editing.utility import utility_probe

    method, flags = _variant(name)
    options = {}
    if hasattr(make_config(method, {}), "prefixes"):  # ft has no context prefixes
        options["prefixes"] = args.prefixes
    size = args.at_once if schedule == "at-once" else args.sequential
    chosen = requests[:size]
    started = time.perf_counter()
    result = edit(
        model,
        tokenizer,
        chosen,
        method,
        batch_size=None if schedule == "at-once" else args.batch,
        progress=False,
        **flags,
        **options,
    )
    edit_s = time.perf_counter() - started
    sample = _sample(chosen, args.eval_sample)
    started = time.perf_counter()
    _, full, retain_items = utility_probe(model, tokenizer, chosen)
    if (schedule, size) not in baseline:  # the unedited model on the same probe sets, once
        baseline[(schedule, size)] = {
            **full(model),
            "efficacy_all": _efficacy(model, tokenizer, chosen),
            "metrics": edit_metrics(model, tokenizer, sample, fluency_sample=0),
        }
    row = {
        "editor": name,
        "schedule": schedule,
        "edits": size,
        "batch": size if schedule == "at-once" else args.batch,
        "options": options,
        "implied": len(result.implied),
        "refused": len(result.refused),
        "sample": len(sample),
        "retain_items": retain_items,
        "efficacy_all": _efficacy(result.model, tokenizer, chosen),
        **full(result.model),
        "metrics": edit_metrics(result.model, tokenizer, sample, fluency_sample=0),
        "original": baseline[(schedule, size)],
        "edit_s": round(edit_s, 1),
        "eval_s": round(time.perf_counter() - started, 1),
        "threads": args.threads,
        "date": time.strftime("%Y-%m-%d"),
    }
    del result
    return row


def _pair(metrics: dict, name: str) -> str:
    gen = metrics.get(f"{name}_gen")
    tf = metrics.get(f"{name}_tf")
    return "-" if gen is None else f"{gen:.2f} ({tf:.2f})"


def _mc(row: dict, part: str) -> str:
    value = row.get(f"mc_{part}_accuracy")
    return "-" if value is None else f"{value:.3f}"


def _kept(row: dict) -> str:
    """Multiple choice on the questions whose answer no edit replaces (unrelated + same subject):
    what the edits should leave as it was."""
    parts = [(row.get(f"mc_{k}_accuracy"), row.get(f"mc_{k}_questions")) for k in MC_PARTS[::2]]
    if any(v is None or n is None for v, n in parts):
        return "-"
    total = sum(n for _, n in parts)
    return f"{sum(v * n for v, n in parts) / total:.3f}" if total else "-"


def _questions(row: dict) -> int:
    return sum(row.get(f"mc_{k}_questions") or 0 for k in MC_PARTS)


def _cells(row: dict) -> str:
    """A row's cells from efficacy to perplexity (the unedited model's and each editor's)."""
    return " | ".join(
        [
            *(_pair(row["metrics"], m) for m in METRICS),
            f"{row['efficacy_all']['score']:.3f} ({row['efficacy_all']['tf']:.3f})",
            f"{row.get('retain_accuracy', float('nan')):.3f}",
            f"{row['mc_accuracy']:.3f}",
            *(_mc(row, k) for k in MC_PARTS),
            _kept(row),
            f"{row['perplexity']:.2f}",
        ]
    )


def table_lines(rows: list[dict]) -> list[str]:
    """One markdown table per schedule: generation, teacher forced in brackets."""
    lines = []
    for schedule in ("at-once", "sequential"):
        chosen = [r for r in rows if r["schedule"] == schedule]
        if not chosen:
            continue
        first = chosen[0]
        before = first["original"]
        lines += [
            f"### {schedule}: {first['edits']} requests"
            + (f", batches of {first['batch']}" if schedule == "sequential" else "")
            + f"; edit metrics on {first['sample']} of them",
            "",
            "| editor | " + " | ".join(METRICS) + " | all edits, score (tf) | unrelated facts "
            f"({first['retain_items']}) | MC all ({_questions(first)}) | "
            + " | ".join(f"MC {k} ({first.get(f'mc_{k}_questions')})" for k in MC_PARTS)
            + " | MC not replaced | perplexity | edit s |",
            "|---" * (len(METRICS) + 10) + "|",
            f"| unedited | {_cells(before)} | - |",
        ]
        lines += [f"| {r['editor']} | {_cells(r)} | {r['edit_s']:.0f} |" for r in chosen]
        lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--editors", default="ft,rome,memit,alphaedit,memory")
    parser.add_argument("--schedules", default="at-once,sequential")
    parser.add_argument("--at-once", type=int, default=100)
    parser.add_argument("--sequential", type=int, default=500)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--eval-sample", type=int, default=100)
    parser.add_argument("--prefixes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=f"editing-table-{time.strftime('%Y-%m-%d')}")
    parser.add_argument("--report", action="store_true", help="only rewrite OUT.md from OUT.json")
    args = parser.parse_args()
    if args.report:
        rows = json.loads((RESULTS / f"{args.out}.json").read_text())
        (RESULTS / f"{args.out}.md").write_text("\n".join(table_lines(rows)))
        print("\n".join(table_lines(rows)))
        return
    for name in args.editors.split(","):
        _variant(name)  # refuse a bad name before the long work
    model, tokenizer, requests = _setup(args.threads)
    path = RESULTS / f"{args.out}.json"
    rows = json.loads(path.read_text()) if path.is_file() else []
    baseline = {(r["schedule"], r["edits"]): r["original"] for r in rows}
    for schedule in args.schedules.split(","):
        for name in args.editors.split(","):
            if any(r["editor"] == name and r["schedule"] == schedule for r in rows):
                continue
            row = _row(model, tokenizer, requests, name, schedule, args, baseline)
            rows.append(row)
            path.write_text(json.dumps(rows, indent=1) + "\n")
            print(json.dumps({k: v for k, v in row.items() if k != "original"}), flush=True)
            (RESULTS / f"{args.out}.md").write_text("\n".join(table_lines(rows)))
    print("\n".join(table_lines(rows)))


if __name__ == "__main__":
    main()
