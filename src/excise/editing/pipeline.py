"""``excise edit`` end to end: load, measure, edit, measure again, write model + deltas + report.

The report holds every edit metric twice (teacher forced and generated), the same metrics for the
in-context baseline (the unedited model told the new fact in its prompt), unrelated knowledge and
utility before and after (the ``chem-symbols`` items the model knows, general multiple choice,
perplexity), the per-batch trace of a sequential run, and any refused edit.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from html import escape
from pathlib import Path
from typing import Any

from excise.errors import ConfigError, ExciseError


def unrelated(facts: list, requests: list) -> list:
    """The facts whose prompt names no subject of ``requests``: what editing must leave alone.

    A fact about an edited subject is the edit's business (an edit may change it on purpose, or
    spread to it: relation specificity, reported with the edit metrics), not unrelated knowledge.
    Subjects match as whole words."""
    from excise.editing.preserve import naming

    pattern = naming(r.subject for r in requests)
    if pattern is None:
        return list(facts)
    return [f for f in facts if not pattern.search(f.prompt)]


def utility_probe(model, tokenizer, requests: list | None = None):
    """Unrelated knowledge and utility, measured the same way before, during and after editing.

    Knowledge is the ``chem-symbols`` facts (element facts and world facts) the model answers,
    less those that name a subject of ``requests`` (all of them, so a sequential trace measures
    one fixed set). Returns the quick probe (retain accuracy, for monitoring), the full one
    (plus multiple choice and perplexity) and the number of facts measured."""
    from excise.data.tasks import filter_known, load_task
    from excise.metrics import mc_accuracy, perplexity, qa_metrics

    task = load_task("chem-symbols")
    try:
        known = filter_known(task, model, tokenizer)
        facts = unrelated(known.forget_eval + known.retain_eval, requests or [])
    except ExciseError:  # a model that knows none of them (a tiny test model, say)
        facts = []
    texts = [t.text for t in task.fluency]

    def quick(current) -> dict[str, float]:
        if not facts:
            return {}
        values, _ = qa_metrics(current, tokenizer, facts, "raw", "retain", truth=False)
        return {"retain_accuracy": values["retain_accuracy"]}

    def full(current) -> dict[str, float]:
        return {
            **quick(current),
            "mc_accuracy": mc_accuracy(current, tokenizer, task.utility),
            "perplexity": perplexity(current, tokenizer, texts),
        }

    return quick, full, len(facts)


def run_edit(
    *,
    model_spec: str,
    requests: list,
    method: str,
    options: dict[str, Any],
    out: Path,
    overwrite: bool = False,
    sequential: int | None = None,
    stats_file: str | None = None,
    stats_corpus: str | None = None,
    preserve: str | None = None,
    min_retain: float | None = None,
    on_drop: str = "stop",
    generation: bool = True,
    template: str = "auto",
    dtype: str = "float32",
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    from excise.editing import edit, make_config
    from excise.editing.delta import save_delta
    from excise.editing.metrics import edit_metrics, in_context_prefix
    from excise.editing.preserve import DEFAULTS
    from excise.editing.preserve import resolve as resolve_preserve
    from excise.editing.stats import import_stats
    from excise.fsutil import atomic_dir, check_output, write_manifest
    from excise.models import fingerprint, load_model, save_model
    from excise.pipeline import Timer, disk_errors
    from excise.report import _clean, _header

    check_output(out, overwrite=overwrite)
    if not requests:
        raise ConfigError("no edit requests to apply")
    config = make_config(method, options)  # unknown options fail before any long work
    options = {key: getattr(config, key) for key in options}  # as the config reads them
    if min_retain is not None and not sequential:
        raise ConfigError("--min-retain monitors sequential editing: give --sequential N too")
    kept = resolve_preserve(method, preserve, requests)  # a bad source fails before any work
    if min_retain is not None and not 0.0 <= min_retain <= 1.0:
        raise ConfigError(f"--min-retain is an accuracy in [0, 1], got {min_retain}")
    if sequential is not None and sequential < 1:
        raise ConfigError(f"--sequential takes a batch size >= 1, got {sequential}")
    if stats_file:  # a damaged or foreign file fails now; the model check comes after loading
        import_stats(stats_file)
    timer = Timer(echo)
    with timer.stage("load"):
        model, tokenizer = load_model(model_spec, dtype=dtype)
        if template == "auto":
            template = "raw"  # edit prompts are cloze prompts; --template chat for instruct models
        make_config(method, options).layers_for(model)  # layers out of range fail here
        model_hash = fingerprint(model)
        stats = import_stats(stats_file, model_hash=model_hash) if stats_file else None
        quick, full, retain_items = utility_probe(model, tokenizer, requests)

    def measure(current, context=None) -> dict[str, float]:
        return edit_metrics(
            current, tokenizer, requests, template=template, generation=generation, context=context
        )

    with timer.stage("evaluate before"):
        before = {"edit": measure(model), "utility": full(model)}
        in_context = measure(model, in_context_prefix)
    with timer.stage("edit"):
        result = edit(
            model,
            tokenizer,
            requests,
            method,
            in_place=True,
            template=template,
            batch_size=sequential,
            stats=stats,
            stats_corpus=stats_corpus,
            preserve=kept,
            monitor=quick if sequential else None,
            monitor_key="retain_accuracy",
            min_monitor=min_retain,
            on_drop=on_drop,
            progress=progress,
            echo=echo,
            **options,
        )
    with timer.stage("evaluate after"):
        after = {"edit": measure(model), "utility": full(model)}
        if sequential and len(result.batches) > 1:
            last = requests[-sequential:] if not result.stopped else []
            if last:
                after["last_batch"] = edit_metrics(
                    model, tokenizer, last, template=template, generation=generation
                )
    header = _header("edit", model_spec, {"name": "edit requests", "size": len(requests)})
    report = {
        **header,
        "method": {"name": method, "options": result.config},
        "model_sha": model_hash,
        "requests": len(requests),
        "retain_items": retain_items,  # unrelated facts measured (none names an edited subject)
        "preserve": {"source": preserve or DEFAULTS.get(method, "none"), "texts": len(kept)},
        "applied": result.applied,
        "sequential": sequential,
        "before": before,
        "after": after,
        "in_context": in_context,
        "batches": result.batches,
        "refused": result.refused,
        "stopped": result.stopped,
        "timings_s": timer.seconds,
    }
    with disk_errors(out), atomic_dir(out, overwrite=overwrite) as tmp:
        save_model(model, tokenizer, tmp / "model")
        save_delta(
            result.deltas,
            tmp / "delta.safetensors",
            {"method": method, "base_model": model_spec, "base_fingerprint": model_hash},
        )
        report = _clean(report)
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (tmp / "report.html").write_text(edit_html(report))
        (tmp / "model" / "README.md").write_text(edit_card(report))
        write_manifest(tmp)
    return report


def edit_html(report: dict[str, Any]) -> str:
    from excise.report.html import STYLE
    from excise.report.svg import line_chart

    before, after = report["before"]["edit"], report["after"]["edit"]
    context = report.get("in_context", {})
    categories = sorted({k.rsplit("_", 1)[0] for k in after if k != "fluency"})

    def cell(values: dict, key: str) -> str:
        value = values.get(key)
        return "<td>–</td>" if value is None else f"<td>{value:.3f}</td>"

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
        f"<tr><td>{escape(k)}</td><td>{report['before']['utility'].get(k, 0):.3f}</td>"
        f"<td>{v:.3f}</td></tr>"
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
    }; preservation set: {escape(_preserve_line(report.get("preserve")).replace("`", ""))}.
Teacher-forced scores read the answer's probability; generated scores check what the model
actually writes. The in-context column is the unedited model told the new fact in its prompt.</p>
<section><h2>Edit metrics</h2><table><tr><th>category</th>{head}</tr>{rows}</table>
<p>fluency (n-gram entropy): before {before.get("fluency", 0):.3f}, edited {
        after.get("fluency", 0):.3f}</p></section>
<section><h2>Unrelated knowledge and utility</h2><p>retain: {
        report.get("retain_items", 0)
    } chem-symbols facts the model knew that name no edited subject</p><table><tr><th>metric</th><th>before</th><th>after</th></tr>{
        utility
    }</table></section>
{trace}
<section><h2>Refused edits</h2><ul>{refused or "<li>none</li>"}</ul></section>
</body></html>
"""


def _preserve_line(preserve: dict[str, Any] | None) -> str:
    if not preserve or not preserve.get("texts"):
        return "none"
    return f"`{preserve['source']}` ({preserve['texts']} texts whose keys the edit kept)"


def edit_card(report: dict[str, Any]) -> str:
    after, before = report["after"]["edit"], report["before"]["edit"]
    rows = "\n".join(
        f"| {k} | {before.get(k, float('nan')):.3f} | {v:.3f} |" for k, v in sorted(after.items())
    )
    return f"""---
library_name: transformers
tags: [excise, model-editing]
---
# Model edited by excise

- base model: `{report.get("model")}` (weights fingerprint `{report.get("model_sha")}`)
- method: `{report["method"]["name"]}`, {report["applied"]} of {report["requests"]} edits applied
- preservation set: {_preserve_line(report.get("preserve"))}
- excise {report.get("excise_version")}, {report.get("created")}

A standard Hugging Face checkpoint. `../delta.safetensors` holds the exact weight changes:
`excise revert-delta --model THIS --delta ../delta.safetensors --out BASE` restores the base model.
`_tf` metrics are teacher forced, `_gen` come from greedy generation (see report.html).

| metric | before | edited |
|---|---|---|
{rows}
"""
