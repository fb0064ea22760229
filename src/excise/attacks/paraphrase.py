"""Paraphrase attack: ask the forgotten questions in other words.

Removal that only suppresses the trained surface form leaves rephrased prompts answered (Maini et
al. 2024, TOFU; Lynch et al. 2024, "Eight methods to evaluate robust unlearning in LLMs"). Scored on
``task.paraphrases`` (every paraphrased prompt of ``forget_eval``, with the item's answer) by greedy
exact match, teacher forced. A task without paraphrases gives an empty result with a note. Budget:
none beyond the scoring batch size (32).
"""

from __future__ import annotations

from dataclasses import dataclass

from excise.attacks import AttackSpec, register
from excise.attacks.base import AttackResult, accuracy, budget_dict
from excise.data.tasks import Task
from excise.errors import ConfigError


@dataclass
class ParaphraseBudget:
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError("paraphrase batch_size must be >= 1")


def run(
    model, tokenizer, task: Task, *, budget: ParaphraseBudget, original=None, gold=None
) -> AttackResult:
    items = task.paraphrases
    if not items:
        return AttackResult(
            "paraphrase", budget_dict(budget), {}, None, {"skipped": "the task has no paraphrases"}
        )
    score = accuracy(model, tokenizer, items, task.template, batch_size=budget.batch_size)
    details = {"items": len(items), "source_items": len({q.meta["source"] for q in items})}
    return AttackResult(
        "paraphrase", budget_dict(budget), {"forget_accuracy": score}, None, details
    )


SPEC = register(
    AttackSpec(
        "paraphrase",
        "forget questions asked in other words (the task's paraphrases)",
        ParaphraseBudget,
        run,
    )
)
