"""What is already known of a model before an audit scores it: per-item answers and MC accuracy.

A job that evaluated a model (``excise unlearn`` before and after, or the original's evaluation
read from :mod:`excise.metrics.cache`) has already scored its answers item by item
(``{set}_correct`` in the evaluation's details). :class:`Known` keeps them by (prompt, answer), so
:func:`excise.attacks.scorecard.audit` scores only the items no one scored yet: the clean forget
and retain accuracy of the unlearned, original and gold models, and relearning's step 0 and
target on half B, are then read, not computed again. The values are those
:func:`excise.attacks.base.accuracy` gives: the same items, each answer's greedy match, the mean
taken as a float32 row in item order (the evaluation's packed scorer gives the same per-item
values up to float rounding: tests/test_relearn_side.py checks equality on a tiny model).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from excise.data.records import MC, QA
from excise.data.tasks import Task
from excise.scoring import score_pairs

# evaluation detail -> task field whose items it scores, in order
DETAIL_SETS = (
    ("forget_correct", "forget_eval"),
    ("paraphrase_correct", "paraphrases"),
    ("retain_correct", "retain_eval"),
    ("near_retain_correct", "near_retain_eval"),
)


@dataclass
class Known:
    """Answers of one model already scored, by (prompt, completion); and its multiple-choice
    accuracy on one question set (``mc_questions``), where measured."""

    correct: dict[tuple[str, str], bool] = field(default_factory=dict)
    mc_questions: tuple[MC, ...] | None = None
    mc_accuracy: float | None = None


def known_from_evaluation(metrics: dict[str, Any], details: dict[str, Any], task: Task) -> Known:
    """What an evaluation of ``task`` (the task as evaluated: :func:`excise.metrics.quick_task`'s
    sample for ``--eval quick``) says item by item."""
    known = Known()
    for detail, name in DETAIL_SETS:
        values, items = details.get(detail), getattr(task, name, None) or []
        if values is not None and len(values) == len(items):
            known.correct |= {
                (q.prompt, q.completion): bool(v) for q, v in zip(items, values, strict=True)
            }
    if task.utility and metrics.get("mc_accuracy") is not None:
        known.mc_questions, known.mc_accuracy = tuple(task.utility), float(metrics["mc_accuracy"])
    return known


def known_accuracy(
    model, tokenizer, items: Sequence[QA], template: str, known: Known, *, batch_size: int = 32
) -> float:
    """:func:`excise.attacks.base.accuracy` of ``items``, scoring only those ``known`` lacks
    (and keeping them in it)."""
    if not items:
        return float("nan")
    pairs = dict.fromkeys((q.prompt, q.completion) for q in items)
    missing = [pair for pair in pairs if pair not in known.correct]
    if missing:
        stats = score_pairs(model, tokenizer, missing, template, batch_size=batch_size)
        known.correct |= dict(zip(missing, stats.correct.tolist(), strict=True))
    row = torch.tensor([known.correct[(q.prompt, q.completion)] for q in items])
    return float(row.float().mean())


def known_utility(model, tokenizer, task: Task, known: Known) -> dict[str, float]:
    """:func:`excise.attacks.base.utility_metrics`, reading what ``known`` holds."""
    from excise.metrics import mc_accuracy

    metrics = {
        "forget_accuracy": known_accuracy(model, tokenizer, task.forget_eval, task.template, known),
        "retain_accuracy": known_accuracy(model, tokenizer, task.retain_eval, task.template, known),
    }
    if task.utility:
        questions = tuple(task.utility)
        if known.mc_questions != questions or known.mc_accuracy is None:
            known.mc_questions = questions
            known.mc_accuracy = mc_accuracy(model, tokenizer, task.utility, batch_size=32)
        metrics["mc_accuracy"] = known.mc_accuracy
    return metrics
