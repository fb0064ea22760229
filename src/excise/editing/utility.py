"""What editing must leave alone: unrelated knowledge and utility, measured the same way before,
during (a sequential run's monitor) and after an edit."""

from __future__ import annotations

from collections.abc import Callable

from excise.data.tasks import filter_known, load_task
from excise.editing.preserve import naming
from excise.errors import ExciseError
from excise.metrics import mc_accuracy, perplexity, qa_metrics

Probe = Callable[[object], dict[str, float]]  # (question counts are ints)


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
    # multiple choice as a whole and in three parts, each question scored once: the questions
    # that name no edited subject; those whose answer an edit replaces (an edit of a subject they
    # name has the answer as its old target: "Who wrote Romeo and Juliet?" after Romeo and
    # Juliet -> Mark Twain), which a landed edit should move; and the other questions naming an
    # edited subject (another relation of it, or it among the choices), which it should not
    parts = _mc_parts(task.utility, requests or [])

    def quick(current) -> dict[str, float]:
        if not facts:
            return {}
        values, _ = qa_metrics(current, tokenizer, facts, "raw", "retain", truth=False)
        return {"retain_accuracy": values["retain_accuracy"]}

    def full(current) -> dict[str, float]:
        right = {
            k: mc_accuracy(current, tokenizer, qs) * len(qs) if qs else 0.0
            for k, qs in parts.items()
        }
        share = {k: right[k] / len(qs) if qs else float("nan") for k, qs in parts.items()}
        return {
            **quick(current),
            "mc_accuracy": sum(right.values()) / len(task.utility),
            "mc_unrelated_accuracy": share["unrelated"],
            "mc_replaced_accuracy": share["replaced"],
            "mc_same_subject_accuracy": share["same_subject"],
            **{f"mc_{k}_questions": len(qs) for k, qs in parts.items()},
            "perplexity": perplexity(current, tokenizer, texts),
        }

    return quick, full, len(facts)


def _mc_parts(questions: list, requests: list) -> dict[str, list]:
    """``questions`` split: ``unrelated`` (naming no subject of ``requests``), ``replaced`` (an
    edit of a subject they name has their answer as its old target) and ``same_subject``."""
    pattern = naming(r.subject for r in requests)
    parts: dict[str, list] = {"unrelated": [], "replaced": [], "same_subject": []}
    for q in questions:
        text = " ".join([q.question, *q.choices])
        named = set(pattern.findall(text)) if pattern else set()
        if not named:
            parts["unrelated"].append(q)
            continue
        right = _plain(q.choices[q.answer])
        replaced = any(
            r.subject in named and r.target_true and _plain(r.target_true) == right
            for r in requests
        )
        parts["replaced" if replaced else "same_subject"].append(q)
    return parts


def _plain(text: str) -> str:
    return " ".join(text.lower().removeprefix("the ").split())
