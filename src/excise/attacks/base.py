"""What every attack shares: its result record, accuracy on a set of items, the relearning split.

Attacks never change the model they are given: weight attacks work on
:func:`excise.models.clone_model` copies, activation attacks add forward hooks and remove them in
a ``finally`` (see :mod:`excise.activations.prompts`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from excise.data.records import QA
from excise.data.tasks import Task
from excise.scoring import score_pairs


@dataclass
class AttackResult:
    """One attack on one model. ``metrics`` holds ``forget_accuracy`` under attack where the
    attack measures answers (all but ``probe`` and ``mia``), and utility beside it where the attack
    changes the model; ``curve`` rows are budget points (relearning steps)."""

    name: str
    budget: dict[str, Any]
    metrics: dict[str, float]
    curve: list[dict[str, Any]] | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def budget_dict(budget: Any) -> dict[str, Any]:
    return dataclasses.asdict(budget)


def accuracy(
    model, tokenizer, items: Sequence[QA], template: str, *, batch_size: int = 32
) -> float:
    """Share of ``items`` whose answer is the greedy continuation (teacher forced); NaN if none."""
    if not items:
        return float("nan")
    pairs = [(q.prompt, q.completion) for q in items]
    stats = score_pairs(model, tokenizer, pairs, template, batch_size=batch_size)
    return float(stats.correct.float().mean())


def utility_metrics(model, tokenizer, task: Task, *, batch_size: int = 32) -> dict[str, float]:
    """Forget accuracy with what the model keeps beside it: retain and multiple-choice accuracy."""
    from excise.metrics import mc_accuracy

    metrics = {
        "forget_accuracy": accuracy(
            model, tokenizer, task.forget_eval, task.template, batch_size=batch_size
        ),
        "retain_accuracy": accuracy(
            model, tokenizer, task.retain_eval, task.template, batch_size=batch_size
        ),
    }
    if task.utility:
        metrics["mc_accuracy"] = mc_accuracy(model, tokenizer, task.utility, batch_size=batch_size)
    return metrics


def halves(items: Sequence[QA]) -> tuple[list[QA], list[QA]]:
    """The deterministic split used by relearning: even positions (A, trained) and odd (B, held out)."""
    return list(items[0::2]), list(items[1::2])


def retain_items(task: Task) -> list[QA]:
    """Retain-side prompts for contrasts: the retain evaluation set, else the retain QA records."""
    return list(task.retain_eval) or [r for r in task.retain if isinstance(r, QA)]


def general_text(count: int) -> list[str]:
    """The first ``count`` passages of the shipped general text sample (model-written prose on
    generic openings: no task's facts), for attacks that train on unrelated text."""
    import excise.data

    path = Path(excise.data.__file__).parent / "builtin" / "text_sample" / "sample.jsonl"
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [json.loads(line)["text"] for line in lines[:count]]
