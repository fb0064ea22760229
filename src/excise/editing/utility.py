"""What editing must leave alone: unrelated knowledge and utility, measured the same way before,
during (a sequential run's monitor) and after an edit."""

from __future__ import annotations

from collections.abc import Callable

from excise.data.tasks import filter_known, load_task
from excise.editing.preserve import naming
from excise.errors import ExciseError
from excise.metrics import mc_accuracy, perplexity, qa_metrics

Probe = Callable[[object], dict[str, float]]


def unrelated(facts: list, requests: list) -> list:
    """The facts whose prompt names no subject of ``requests``: what editing must leave alone.

    A fact about an edited subject is the edit's business (an edit may change it on purpose, or
    spread to it: relation specificity, reported with the edit metrics), not unrelated knowledge.
    Subjects match as whole words."""
    pattern = naming(r.subject for r in requests)
    if pattern is None:
        return list(facts)
    return [f for f in facts if not pattern.search(f.prompt)]


def utility_probe(model, tokenizer, requests: list | None = None) -> tuple[Probe, Probe, int]:
    """Unrelated knowledge and utility, measured the same way before, during and after editing.

    Knowledge is the ``chem-symbols`` facts (element facts and world facts) the model answers,
    less those that name a subject of ``requests`` (all of them, so a sequential trace measures
    one fixed set). Returns the quick probe (retain accuracy, for monitoring), the full one
    (plus multiple choice and perplexity) and the number of facts measured."""
    task = load_task("chem-symbols")
    try:
        known = filter_known(task, model, tokenizer)
        facts = unrelated(known.forget_eval + known.retain_eval, requests or [])
    except ExciseError:  # a model that knows none of them (a tiny test model, say)
        facts = []
    texts = [t.text for t in task.fluency]
    # multiple choice as a whole, and on the questions that name no edited subject (a question
    # about an edited country is the edit's business, as a fact is): each question scored once
    pattern = naming(r.subject for r in requests or [])
    named = [
        bool(pattern and pattern.search(" ".join([q.question, *q.choices]))) for q in task.utility
    ]
    about = [q for q, hit in zip(task.utility, named, strict=True) if hit]
    apart = [q for q, hit in zip(task.utility, named, strict=True) if not hit]

    def quick(current) -> dict[str, float]:
        if not facts:
            return {}
        values, _ = qa_metrics(current, tokenizer, facts, "raw", "retain", truth=False)
        return {"retain_accuracy": values["retain_accuracy"]}

    def full(current) -> dict[str, float]:
        right_about, right_apart = (
            mc_accuracy(current, tokenizer, part) * len(part) if part else 0.0
            for part in (about, apart)
        )
        return {
            **quick(current),
            "mc_accuracy": (right_about + right_apart) / len(task.utility),
            "mc_unrelated_accuracy": right_apart / len(apart) if apart else float("nan"),
            "perplexity": perplexity(current, tokenizer, texts),
        }

    return quick, full, len(facts)
