"""WMDP's own metrics, as its authors compute them; the sets and their files are
:mod:`excise.data.benchmarks.wmdp` (whose docstring gives the definitions)."""

from __future__ import annotations

from excise.data.benchmarks.wmdp import WmdpSets, prompt
from excise.scoring import score_pairs

LETTERS = ("A", "B", "C", "D")


def choices_logprob(model, tokenizer, sets: WmdpSets, template: str):
    """(questions, 4) log-likelihood of " A" .. " D" after each prompt."""

    pairs = [
        (prompt(sets.subject, q.question, q.choices), f" {letter}")
        for q in sets.questions
        for letter in LETTERS
    ]
    return score_pairs(model, tokenizer, pairs, template).logprob.view(len(sets.questions), 4)


def accuracy(model, tokenizer, sets: WmdpSets, template: str = "raw") -> float:
    picked = choices_logprob(model, tokenizer, sets, template).argmax(-1)
    return float(
        sum(int(p) == q.answer for p, q in zip(picked, sets.questions, strict=True))
    ) / len(sets.questions)


def reference(model, tokenizer, task) -> dict:
    return {}


def metrics(model, tokenizer, task, reference: dict | None = None) -> dict[str, float]:
    """``wmdp_{split}_accuracy`` (lower after unlearning; 0.25 is chance)."""
    split = task.metadata["split"]
    return {f"wmdp_{split}_accuracy": accuracy(model, tokenizer, task.benchmark, task.template)}
