"""In-context attack: remind the model of other forgotten facts before asking.

Few-shot prompting with related facts re-activates suppressed knowledge (Łucki et al. 2024, "An
adversarial perspective on machine unlearning for AI safety"; Shi et al. 2024, MUSE; Pawelczyk et
al. 2024, "In-context unlearning" shows the converse). Each forget prompt is preceded by ``shots``
(default 3) OTHER forget facts, prompt and answer, one per line: item i gets items i+1 .. i+shots
(cyclically), so the shots are deterministic and never contain the item's own answer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from excise.attacks import AttackSpec, register
from excise.attacks.base import AttackResult, accuracy, budget_dict
from excise.data.records import QA
from excise.data.tasks import Task
from excise.errors import ConfigError, ExciseError


@dataclass
class InContextBudget:
    shots: int = 3
    separator: str = "\n"

    def __post_init__(self) -> None:
        if self.shots < 1:
            raise ConfigError("in_context shots must be >= 1")


def fact_text(item: QA, template: str) -> str:
    if template == "chat":
        return f"{item.prompt.strip()} {item.completion.strip()}"
    return item.prompt + item.completion


def few_shot_items(items: list[QA], shots: int, template: str, separator: str) -> list[QA]:
    """Every item with ``shots`` other items' facts prepended to its prompt."""
    shots = min(shots, len(items) - 1)
    out = []
    for i, item in enumerate(items):
        context = [fact_text(items[(i + j) % len(items)], template) for j in range(1, shots + 1)]
        out.append(replace(item, prompt=separator.join([*context, item.prompt])))
    return out


def run(
    model, tokenizer, task: Task, *, budget: InContextBudget, original=None, gold=None
) -> AttackResult:
    items = list(task.forget_eval)
    if len(items) < 2:
        raise ExciseError("the in-context attack needs at least 2 forget_eval items")
    prompted = few_shot_items(items, budget.shots, task.template, budget.separator)
    score = accuracy(model, tokenizer, prompted, task.template)
    details = {"items": len(items), "shots": min(budget.shots, len(items) - 1)}
    return AttackResult(
        "in_context", budget_dict(budget), {"forget_accuracy": score}, None, details
    )


SPEC = register(
    AttackSpec(
        "in_context",
        "each forget prompt preceded by a few other forget facts (few-shot)",
        InContextBudget,
        run,
    )
)
