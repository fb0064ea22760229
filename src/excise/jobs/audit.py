"""``excise audit`` as data and one function: :class:`AuditJob` and :func:`run`.

The audited weights' sha256 goes into the report (``model_sha256``); with ``expect_hash`` a model
with other weights is refused before any attack runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from excise import models
from excise.attacks.scorecard import audit
from excise.fsutil import atomic_dir, check_output, disk_errors, write_manifest
from excise.jobs.checks import check_hash, expected_hash
from excise.jobs.common import (
    Echo,
    audit_known,
    check_attacks,
    check_choices,
    job_task,
    load,
    references_for,
)
from excise.progress import Timer
from excise.report import audit_report, write_report


@dataclass(kw_only=True)
class AuditJob:
    """Attack ``model`` (the changed one) and report the worst case against ``original``.

    ``attacks`` is ``"all"`` or a list of names (``excise attacks``), ``budgets`` their budgets
    by attack name. The task's items are filtered by what ``original`` knew, not by what is left.
    ``out=None`` writes nothing."""

    model: str
    original: str
    task: str | None = None
    forget: str | None = None
    retain: str | None = None
    data_dir: str | None = None
    template: str = "auto"
    dtype: str = "float32"
    attacks: str | list[str] = "all"
    budgets: dict[str, Any] | None = None
    expect_hash: str | None = None
    out: str | Path | None = None
    overwrite: bool = False
    allow_pickle: bool = False
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        check_choices(self.template, self.dtype)
        if self.expect_hash is not None:  # a malformed hash is an error before loading anything
            expected_hash(self.expect_hash)
        check_attacks(self.attacks)


@dataclass
class AuditResult:
    """The audited model (with its tokenizer) and the report (also in ``OUT/report.json``)."""

    model: Any
    tokenizer: Any
    report: dict[str, Any]


def run(job: AuditJob, *, echo: Echo | None = None) -> AuditResult:
    """Attack ``job.model`` and write report.json / report.html into ``job.out`` (unless None)."""
    if job.out is not None:  # before the long work, not after it
        inputs = {"--model": job.model, "--original": job.original, "--forget": job.forget}
        inputs |= {"--retain": job.retain, "--data-dir": job.data_dir}
        check_output(Path(job.out), overwrite=job.overwrite, inputs=inputs)
    timer = Timer(echo)
    with timer.stage("load models"):
        model, tokenizer = load(job.model, job)
        model_sha256 = models.weights_sha256(model)
        check_hash(job.model, model_sha256, job.expect_hash)
        base, _ = load(job.original, job)
        original_sha256 = models.weights_sha256(base)
    with timer.stage("load task"):
        # items are filtered by what the original model knew, not by what is left
        task = job_task(job, base, tokenizer)
        original, gold = references_for(job.original, task, job, echo=echo)
        del base
    with timer.stage("audit"):
        # the original's answers as an earlier run evaluated or audited them (cached by weights)
        taught = task.metadata.get("needs_teaching")
        weights = models.weights_sha256(original) if taught else original_sha256
        known = audit_known(original, tokenizer, task, weights)
        result = audit(
            model,
            tokenizer,
            task,
            original=original,
            gold=gold,
            attacks=job.attacks,
            budgets=job.budgets,
            echo=echo,
            known=known,
        )
    report = audit_report(
        model_spec=job.model,
        original_spec=job.original,
        task=task,
        audit=result,
        timings=timer.seconds,
    )
    report["model_sha256"] = model_sha256
    report["original_sha256"] = original_sha256
    if job.out is not None:
        out = Path(job.out)
        with disk_errors(out), atomic_dir(out, overwrite=job.overwrite) as tmp:
            write_report(report, tmp)
            write_manifest(tmp)
    return AuditResult(model, tokenizer, report)
