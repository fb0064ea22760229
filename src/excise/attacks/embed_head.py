"""Token-surgery probe: retrain only the input embeddings and the output head on general text.

A removal that works by damaging the rows of a few tokens (moving the input-embedding or
unembedding rows of the forget domain's words toward noise) is token surgery, not knowledge
removal: the model can no longer read or say those words anywhere, and a relearning attack on
half A never trains the rows only half B uses. This attack fine-tunes a copy with every weight
frozen except the input-embedding matrix and the output head (one matrix where they are tied),
on general text with no forget facts (the shipped sample; passages that name a forget answer
left out), then re-scores all of ``forget_eval`` (the attacked accuracy) and half B. Knowledge
that comes back from repairing token rows alone was never removed from the layers.

Budget defaults: 50 steps, lr 1e-3, batch 8, 128 passages of 64 tokens. The model given is never
changed (a copy is trained).
"""

from __future__ import annotations

from dataclasses import dataclass

from excise.attacks import AttackSpec, register
from excise.attacks.base import AttackResult, accuracy, budget_dict, halves
from excise.attacks.relearn import RelearnBudget, training_records
from excise.attacks.relearn_run import fine_tune_watching
from excise.data.tasks import Task
from excise.errors import ConfigError, ExciseError
from excise.models import clone_model


@dataclass
class EmbedHeadBudget:
    steps: int = 50
    lr: float = 1e-3
    batch_size: int = 8
    text_passages: int = 128
    text_tokens: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.text_passages < 1 or self.text_tokens < 2:
            raise ConfigError(
                "embed_head steps, batch_size, text_passages must be >= 1; text_tokens >= 2"
            )
        if not self.lr > 0:
            raise ConfigError("embed_head lr must be > 0")


def token_rows(model) -> dict[str, object]:
    """The trainable token-row matrices: {name: parameter}, one entry where they are tied."""
    rows = {"embed": model.get_input_embeddings().weight}
    head = model.get_output_embeddings()
    if head is not None and head.weight is not rows["embed"]:
        rows["head"] = head.weight
    return rows


def run(
    model, tokenizer, task: Task, *, budget: EmbedHeadBudget, original=None, gold=None
) -> AttackResult:
    items = list(task.forget_eval)
    if not items:
        raise ExciseError("the embed_head attack needs forget_eval items")
    text = RelearnBudget(text_passages=budget.text_passages, text_tokens=budget.text_tokens)
    records = training_records(task, "text_full", text)
    copy = clone_model(model)
    rows = token_rows(copy)
    for param in copy.parameters():
        param.requires_grad_(False)
    for param in rows.values():
        param.requires_grad_(True)
    fine_tune_watching(
        copy,
        tokenizer,
        records,
        task.template,
        steps=budget.steps,
        lr=budget.lr,
        batch_size=budget.batch_size,
        seed=budget.seed,
        watch=lambda step: None,
        max_length=budget.text_tokens,
    )
    copy.eval()
    half_b = halves(items)[1]
    metrics = {
        "forget_accuracy": accuracy(copy, tokenizer, items, task.template),
        "half_b_forget_accuracy": accuracy(copy, tokenizer, half_b, task.template),
        "retain_accuracy": accuracy(copy, tokenizer, task.retain_eval, task.template),
    }
    details = {
        "trained": sorted(rows),  # "embed" alone: tied to the head
        "tied": "head" not in rows,
        "passages": len(records),
        "clean_half_b_accuracy": accuracy(model, tokenizer, half_b, task.template),
        "configuration": {"steps": budget.steps, "lr": budget.lr, "trained": sorted(rows)},
    }
    return AttackResult("embed_head", budget_dict(budget), metrics, None, details)


SPEC = register(
    AttackSpec(
        "embed_head",
        "retrain only the token rows (input embeddings and output head) on general text; "
        "re-score the forget set",
        EmbedHeadBudget,
        run,
    )
)
