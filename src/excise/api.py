"""The Python entry points: each builds a job from its keyword arguments, runs it and returns a
typed result holding the model, its tokenizer and the report.

    import excise

    result = excise.unlearn(method="rmu", task="chem-symbols")  # out=None: nothing is written
    print(result.report["after"]["forget_accuracy"])
    excise.save_model(result.model, result.tokenizer, "runs/rmu")

The keyword arguments are the fields of the job, with the same defaults and checks as the command
line's options: :class:`~excise.jobs.unlearn.UnlearnJob`, :class:`~excise.jobs.audit.AuditJob`,
:class:`~excise.jobs.edit.EditJob`, :class:`~excise.jobs.erase.EraseJob`. With ``out`` a folder
is written exactly as the command writes it. Errors a user can cause raise
:class:`~excise.errors.ExciseError` with a one-line message.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from excise.errors import ConfigError
from excise.jobs import audit as audit_job
from excise.jobs import edit as edit_job
from excise.jobs import erase as erase_job
from excise.jobs import unlearn as unlearn_job
from excise.jobs.audit import AuditJob, AuditResult
from excise.jobs.edit import EditJob, EditResult
from excise.jobs.erase import EraseJob, EraseResult
from excise.jobs.unlearn import UnlearnJob, UnlearnResult

__all__ = [
    "AuditResult",
    "EditResult",
    "EraseResult",
    "UnlearnResult",
    "audit",
    "edit",
    "erase",
    "unlearn",
]

F = TypeVar("F", bound=Callable[..., Any])


def _fields_of(job: type) -> Callable[[F], F]:
    """Show ``job``'s fields as the function's signature (``help()``, notebook completion)."""

    def mirror(function: F) -> F:
        returns = inspect.signature(function).return_annotation
        function.__signature__ = inspect.signature(job).replace(return_annotation=returns)
        return function

    return mirror


def _job(job: type, fields: dict[str, Any]) -> Any:
    """``job(**fields)``, an unknown keyword being a one-line ConfigError like a bad option."""
    known = [f.name for f in dataclasses.fields(job)]
    if unknown := sorted(set(fields) - set(known)):
        raise ConfigError(
            f"unknown argument(s) {', '.join(unknown)} for {job.__name__}; known: {', '.join(known)}"
        )
    return job(**fields)


@_fields_of(UnlearnJob)
def unlearn(**fields: Any) -> UnlearnResult:
    """Remove what a forget set holds (:class:`~excise.jobs.unlearn.UnlearnJob`'s fields)."""
    return unlearn_job.run(_job(UnlearnJob, fields))


@_fields_of(AuditJob)
def audit(**fields: Any) -> AuditResult:
    """Attack a changed model; the report holds the worst case
    (:class:`~excise.jobs.audit.AuditJob`'s fields)."""
    return audit_job.run(_job(AuditJob, fields))


@_fields_of(EditJob)
def edit(**fields: Any) -> EditResult:
    """Change facts in place; the result holds the exact weight deltas too
    (:class:`~excise.jobs.edit.EditJob`'s fields)."""
    return edit_job.run(_job(EditJob, fields))


@_fields_of(EraseJob)
def erase(**fields: Any) -> EraseResult:
    """Bound a concept in closed form (:class:`~excise.jobs.erase.EraseJob`'s fields)."""
    return erase_job.run(_job(EraseJob, fields))
