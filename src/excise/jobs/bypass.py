"""``excise bypass-check`` as data and one function: :class:`BypassJob` and :func:`run`.

With a pair file (``prompt``/``chosen``/``rejected``; ``builtin:preference`` for the shipped one)
the behaviour is the rejected continuations against the chosen ones; with a task or QA files it is
the forget answers against the retain items. ``control`` is a model that never had the behaviour
(relearning is timed against it); without it the control is the original taught the alternatives
(pairs) or with the direction projected out of its weights (answers). ``positive``/``negative``
(records files, or ``builtin:harmful``/``builtin:harmless``) replace the texts the direction is
found from. See :mod:`excise.attacks.bypass` for the measures and thresholds (``options`` sets any
of them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from excise.attacks.bypass import BypassConfig, behaviour_from_task, bypass_check
from excise.data.preference import resolve
from excise.data.records import QA, Text, load_records
from excise.data.task import Task
from excise.errors import ConfigError
from excise.fsutil import atomic_dir, check_output, write_manifest
from excise.jobs.common import check_choices, load, resolve_task, shipped_set
from excise.registry import make_config
from excise.report import header, write_report


@dataclass(kw_only=True)
class BypassJob:
    """Does ``model`` (changed from ``original``) only bypass a behaviour, or is it removed?

    ``out`` (optional) gets ``report.json``, ``report.html``, ``recipe.yaml`` and
    ``manifest.json``; ``layer`` is the direction's layer (default: chosen)."""

    model: str
    original: str
    control: str | None = None
    task: str | None = None
    forget: str | None = None
    retain: str | None = None
    positive: str | None = None
    negative: str | None = None
    template: str = "auto"
    filter_known: bool | None = None
    dtype: str = "float32"
    layer: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    out: str | Path | None = None
    overwrite: bool = False
    allow_pickle: bool = False
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        check_choices(self.template, self.dtype)
        self.config()  # unknown options fail before any loading
        if (self.positive is None) != (self.negative is None):
            raise ConfigError("--positive and --negative go together")

    def config(self) -> BypassConfig:
        layer = {"layer": self.layer} if self.layer is not None else {}
        return make_config(BypassConfig, {**self.options, **layer})


@dataclass
class BypassResult:
    """The check's verdict and figures (:meth:`excise.attacks.bypass.BypassResult.to_dict`) and
    how long it took."""

    check: dict[str, Any]
    seconds: float


def read_texts(source: str, name: str) -> list[str]:
    """The texts of a records file (prompt + completion, or text); ``builtin:harmful`` /
    ``builtin:harmless`` name the shipped sets."""
    source = shipped_set(source, "text")
    texts = [
        r.prompt + r.completion if isinstance(r, QA) else r.text
        for r in load_records(source, name=name)
        if isinstance(r, QA | Text)
    ]
    if not texts:
        raise ConfigError(f"{source}: the {name} set has no text or prompt records")
    return texts


def run(job: BypassJob) -> BypassResult:
    """Run the check; write ``job.out`` (if given) whole or not at all."""
    config = job.config()
    if job.out is not None:
        inputs = {"--model": job.model, "--original": job.original, "--forget": job.forget}
        inputs |= {"--positive": job.positive, "--negative": job.negative}
        check_output(Path(job.out), overwrite=job.overwrite, inputs=inputs)
    positive = read_texts(job.positive, "positive") if job.positive else None
    negative = read_texts(job.negative, "negative") if job.negative else None
    forget = resolve(job.forget) if job.forget else None
    started = time.perf_counter()
    original, tokenizer = load(job.original, job)
    modified, _ = load(job.model, job)
    control = load(job.control, job)[0] if job.control else None
    task = resolve_task(
        original,
        tokenizer,
        task=job.task,
        forget=forget,
        retain=job.retain,
        template=job.template,
        filter_items=True if job.filter_known else None,
    )
    behaviour = behaviour_from_task(task)
    if positive is not None:
        behaviour.positive, behaviour.negative = positive, negative
        behaviour.__post_init__()
    check = bypass_check(
        original,
        modified,
        tokenizer,
        behaviour,
        template=task.template,
        config=config,
        control=control,
    ).to_dict()
    result = BypassResult(check, round(time.perf_counter() - started, 1))
    if job.out is not None:
        write(job, task, result)
    return result


def write(job: BypassJob, task: Task, result: BypassResult) -> None:
    report = {
        **header("bypass", job.model, task),
        "original": job.original,
        "bypass": result.check,
        "timings_s": {"bypass check": result.seconds},
    }
    with atomic_dir(Path(job.out), overwrite=job.overwrite) as tmp:
        write_report(report, tmp)
        write_manifest(tmp)
