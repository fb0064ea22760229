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
    from excise.metrics.generate import answer_sets
    from excise.models import fingerprint, load_model, save_model
    from excise.pipeline import Timer, disk_errors
    from excise.report import _clean, _header, examples

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

    shown = edit_examples(requests)
    with timer.stage("evaluate before"):
        before = {"edit": measure(model), "utility": full(model)}
        in_context = measure(model, in_context_prefix)
        shown_before = answer_sets(model, tokenizer, shown, template)  # edited in place next
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
        shown_after = answer_sets(model, tokenizer, shown, template)
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
        "examples": examples.combine(shown, shown_before, shown_after),
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
    from excise.report.examples import html_section
    from excise.report.fmt import number
    from excise.report.html import STYLE
    from excise.report.svg import line_chart

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
    }; preservation set: {escape(_preserve_line(report.get("preserve")).replace("`", ""))}.
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


def _preserve_line(preserve: dict[str, Any] | None) -> str:
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
    import yaml

    from excise.report.card import base_model, card_metadata
    from excise.report.examples import card_lines
    from excise.report.fmt import number

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
        f"- preservation set: {_preserve_line(report.get('preserve'))}",
        f"- excise {report.get('excise_version')}, {report.get('created')}",
    ]
    if report.get("stopped"):
        lines.append(f"- stopped early: {report['stopped']}")
    if report.get("refused"):
        lines.append(f"- refused edits: {len(report['refused'])} (see report.html)")
    lines += [
        "",
        "A standard Hugging Face checkpoint. `../delta.safetensors` holds the exact weight changes:",
        "`excise revert-delta --model THIS --delta ../delta.safetensors --out BASE` restores the "
        "base model.",
        "",
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
