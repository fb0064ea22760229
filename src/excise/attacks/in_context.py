"""In-context attack: remind the model of other forgotten facts before asking.

Few-shot prompting with related facts re-activates suppressed knowledge (Łucki et al. 2024, "An
adversarial perspective on machine unlearning for AI safety"; Shi et al. 2024, MUSE; Pawelczyk et
al. 2024, "In-context unlearning" shows the converse); many shots work better still (Anil et al.
2024, "Many-shot jailbreaking"). Each forget prompt is preceded by ``n`` OTHER forget facts,
prompt and answer, one per line: item i gets items i+1 .. i+n (cyclically), so the shots are
deterministic and never contain the item's own answer. Every count of ``shots`` (default 3, 16
and 32) is scored on the first ``max_items`` items (default 64; 0: all; a 32-shot prompt is ~400
tokens); the attacked accuracy is the best count, each count's in ``details["by_shots"]``, and the
clean (and original's) accuracy on the same items beside them.
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
    shots: tuple[int, ...] | int = (3, 16, 32)  # shot counts, each scored; best reported
    separator: str = "\n"
    max_items: int = 64  # forget_eval items scored per count; 0: all

    def __post_init__(self) -> None:
        self.shots = (self.shots,) if isinstance(self.shots, int) else tuple(self.shots)
        if not self.shots or min(self.shots) < 1:
            raise ConfigError("in_context shots must be counts >= 1")
        if self.max_items < 0:
            raise ConfigError("in_context max_items must be >= 0")


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
    scored = items[: budget.max_items or None]
    by_shots: dict[str, float] = {}
    for shots in dict.fromkeys(min(n, len(items) - 1) for n in budget.shots):
        prompted = few_shot_items(items, shots, task.template, budget.separator)[: len(scored)]
        by_shots[str(shots)] = accuracy(model, tokenizer, prompted, task.template)
    best = max(by_shots, key=lambda n: by_shots[n])
    details = {
        "items": len(scored),
        "shots": int(best),  # the count that reached the attacked accuracy
        "by_shots": by_shots,
        "configuration": {"shots": int(best)},
        "clean_forget_accuracy": accuracy(model, tokenizer, scored, task.template),
        "original_forget_accuracy": (
            accuracy(original, tokenizer, scored, task.template) if original is not None else None
        ),
    }
    return AttackResult(
        "in_context", budget_dict(budget), {"forget_accuracy": by_shots[best]}, None, details
    )


SPEC = register(
    AttackSpec(
        "in_context",
        "each forget prompt preceded by 3, 16 or 32 other forget facts (many-shot); best count",
        InContextBudget,
        run,
    )
)
