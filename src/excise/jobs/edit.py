"""``excise edit`` as data and one function: :class:`EditJob` and :func:`run`.

Load, measure, edit, measure again, write model + deltas + report. The report holds every edit
metric twice (teacher forced and generated), the same metrics for the in-context baseline (the
unedited model told the new fact in its prompt), unrelated knowledge and utility before and after
(the ``chem-symbols`` items the model knows, general multiple choice, perplexity), the per-batch
trace of a sequential run, and any refused edit. ``ripple`` adds each request's implied facts
(read from the model) to its batch and lists them in the report; ``guard`` turns on the drift
guard of sequential runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from excise import models, sidememory
from excise.arch import normalised_writes
from excise.editing import edit, make_config
from excise.editing.delta import save_delta
from excise.editing.metrics import edit_metrics, in_context_prefix
from excise.editing.preserve import DEFAULTS
from excise.editing.preserve import resolve as resolve_preserve
from excise.editing.requests import builtin_requests, load_requests
from excise.editing.stats import check_stats_model, import_stats
from excise.editing.utility import utility_probe
from excise.errors import ConfigError
from excise.fsutil import atomic_dir, check_output, disk_errors, write_manifest
from excise.jobs.common import Echo, check_choices
from excise.metrics.generate import answer_sets
from excise.progress import Timer
from excise.report import clean, examples, header
from excise.report.edit import edit_card, edit_examples, edit_html


@dataclass(kw_only=True)
class EditJob:
    """Change facts in ``model`` with ``method`` (rome, memit, alphaedit, ft, memory).

    The facts are ``requests`` (an excise jsonl, CounterFact or zsRE json file) or a built-in
    request set named by ``task`` (``counterfact-mini``), the first ``limit`` of them; with
    ``sequential`` they are applied in batches of that many, and ``min_retain`` stops (or, with
    ``on_drop="warn"``, warns) when retain accuracy falls below it. ``options`` are the editor's;
    ``stats`` a key statistics file (``excise stats``), ``stats_corpus`` text to compute them
    from; ``preserve`` what memit/alphaedit must keep ("facts", "none" or a records file).
    ``ripple`` ("builtin" or a relations file) also edits the facts each request implies, as the
    model knows them; ``guard`` sets the drift guard (memit, alphaedit; ``--set`` overrides).
    ``generation=False`` measures teacher-forced metrics only. ``out=None`` writes nothing."""

    model: str = "smollm2-135m"
    requests: str | None = None
    task: str | None = None
    method: str = "memit"
    limit: int | None = None
    sequential: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    stats: str | None = None
    stats_corpus: str | None = None
    preserve: str | None = None
    min_retain: float | None = None
    on_drop: str = "stop"
    ripple: str | None = None
    guard: bool = False
    generation: bool = True
    template: str = "auto"
    dtype: str = "float32"
    progress: bool = True
    out: str | Path | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        # ranges and names fail before any request is read
        check_choices(self.template, self.dtype)
        if (self.requests is None) == (self.task is None):
            raise ConfigError("give either --requests FILE or --task (built-in requests)")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {self.limit}")
        if self.guard:
            from excise.editing.guard import guard_options

            make_config(self.method, guard_options(self.method, self.options))
        if self.ripple is not None:
            from excise.editing.ripple import load_relations

            load_relations(None if self.ripple == "builtin" else self.ripple)  # a bad file fails
        config = make_config(self.method, self.options)  # unknown options fail here
        self.options = {key: getattr(config, key) for key in self.options}  # as the config reads
        if self.min_retain is not None and not self.sequential:
            raise ConfigError("--min-retain monitors sequential editing: give --sequential N too")
        if self.min_retain is not None and not 0.0 <= self.min_retain <= 1.0:
            raise ConfigError(f"--min-retain is an accuracy in [0, 1], got {self.min_retain}")
        if self.sequential is not None and self.sequential < 1:
            raise ConfigError(f"--sequential takes a batch size >= 1, got {self.sequential}")
        if self.on_drop not in ("stop", "warn"):
            raise ConfigError(f"--on-drop is stop or warn, got {self.on_drop!r}")

    def load_requests(self) -> list:
        """The requests, the first ``limit`` of them."""
        if self.task is not None:
            requests = builtin_requests(self.task)
        else:
            requests = load_requests(self.requests)
        return requests[: self.limit] if self.limit is not None else requests


@dataclass
class EditResult:
    """The edited model (with its tokenizer), the report and the exact weight deltas (float64,
    reversible: :mod:`excise.editing.delta`)."""

    model: Any
    tokenizer: Any
    report: dict[str, Any]
    deltas: dict[str, Any]


def run(job: EditJob, *, echo: Echo | None = None) -> EditResult:
    """Apply the edits; write ``job.out`` (unless None) whole or not at all."""
    if job.out is not None:
        inputs = {"--model": job.model, "--requests": job.requests, "--stats": job.stats}
        inputs |= {"--stats-corpus": job.stats_corpus, "--preserve": job.preserve}
        inputs["--ripple"] = job.ripple if job.ripple != "builtin" else None
        check_output(Path(job.out), overwrite=job.overwrite, inputs=inputs)
    requests = job.load_requests()
    if not requests:
        raise ConfigError("no edit requests to apply")
    kept = resolve_preserve(job.method, job.preserve, requests)  # a bad source fails now
    # read once, now: a damaged or foreign file fails before loading; its model is checked after
    stats = import_stats(job.stats) if job.stats else None
    # edit prompts are cloze prompts: auto is raw (--template chat for instruct models)
    template = "raw" if job.template == "auto" else job.template
    timer = Timer(echo)
    with timer.stage("load"):
        model, tokenizer = models.load_model(job.model, dtype=job.dtype)
        make_config(job.method, job.options).layers_for(model)  # layers out of range fail here
        model_hash = models.fingerprint(model)
        if stats is not None:
            check_stats_model(stats, job.stats, model_hash, normalised_writes(model))
        quick, full, retain_items = utility_probe(model, tokenizer, requests)

    def measure(current, context=None, items=requests) -> dict[str, float]:
        return edit_metrics(
            current, tokenizer, items, template=template, generation=job.generation, context=context
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
            job.method,
            in_place=True,
            template=template,
            batch_size=job.sequential,
            stats=stats,
            stats_corpus=job.stats_corpus,
            preserve=kept,
            monitor=quick if job.sequential else None,
            monitor_key="retain_accuracy",
            min_monitor=job.min_retain,
            on_drop=job.on_drop,
            progress=job.progress,
            echo=echo,
            ripple=(True if job.ripple == "builtin" else job.ripple) if job.ripple else None,
            guard=job.guard,
            **job.options,
        )
    with timer.stage("evaluate after"):
        after = {"edit": measure(model), "utility": full(model)}
        shown_after = answer_sets(model, tokenizer, shown, template)
        if job.sequential and len(result.batches) > 1:
            last = requests[-job.sequential :] if not result.stopped else []
            if last:
                after["last_batch"] = measure(model, items=last)
    found = sidememory.find(model)  # the memory editor's (or one the model came with)
    if found and echo:
        echo(
            f"the edits are a side memory ({found[1].size} entries, {sidememory.FILE}): "
            "excise loads it with the model, transformers' from_pretrained does not"
        )
    report = {
        **header("edit", job.model, {"name": "edit requests", "size": len(requests)}),
        "method": {"name": job.method, "options": result.config},
        "model_sha": model_hash,
        "requests": len(requests),
        "retain_items": retain_items,  # unrelated facts measured (none names an edited subject)
        "preserve": {
            "source": job.preserve or DEFAULTS.get(job.method, "none"),
            "texts": len(kept),
        },
        "applied": result.applied,
        "ripple": {"relations": job.ripple, "implied": result.implied} if job.ripple else None,
        "memory": sidememory.describe(found[1], found[0]) if found else None,
        "guard": job.guard,
        "sequential": job.sequential,
        "before": before,
        "after": after,
        "in_context": in_context,
        "batches": result.batches,
        "refused": result.refused,
        "stopped": result.stopped,
        "examples": examples.combine(shown, shown_before, shown_after),
        "timings_s": timer.seconds,
    }
    report = clean(report)
    if job.out is not None:
        out = Path(job.out)
        with disk_errors(out), atomic_dir(out, overwrite=job.overwrite) as tmp:
            models.save_model(model, tokenizer, tmp / "model")
            save_delta(
                result.deltas,
                tmp / "delta.safetensors",
                {"method": job.method, "base_model": job.model, "base_fingerprint": model_hash},
            )
            (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
            (tmp / "report.html").write_text(edit_html(report))
            (tmp / "model" / "README.md").write_text(edit_card(report))
            write_manifest(tmp)
    return EditResult(model, tokenizer, report, result.deltas)
