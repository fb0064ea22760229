"""Evaluation: what is forgotten, what is kept, and whether the model still works.

All likelihood metrics are teacher forced, and :func:`evaluate` scores every set in one pass
(:func:`excise.metrics.packed.score_examples`: an item's answer and its wrong answers, a question's
choices, share one row; rows sorted by length and batched by a token budget), then scatters the
per-item statistics back to each metric. Only ROUGE-L generates: greedy, batched, with a KV cache,
on a fixed sample (every ``len // generate``-th item, ``generate`` = 16, of the forget and the
retain set, in one left-padded batch). ``evaluate(..., quick=True)`` scores a fixed smaller sample
of every set (:data:`QUICK`, :func:`quick_task`); :mod:`excise.metrics.cache` keeps the original
model's evaluation on disk.

Metrics (flat names, every value in [0, 1] except perplexity):
- ``forget_accuracy`` / ``retain_accuracy`` / ``paraphrase_accuracy``: share of answers that are
  the model's greedy continuation, token for token.
- ``*_prob``: answer probability, P(answer|prompt)^(1/answer tokens), averaged.
- ``*_truth``: max(0, 1 - truth ratio), averaged (see :mod:`excise.metrics.quality`).
- ``*_rouge``: ROUGE-L recall of greedy generations against the answer (sample).
- ``mc_accuracy``: general multiple-choice accuracy, choice picked by log-likelihood.
- ``near_retain_accuracy`` / ``near_retain_prob``: the near-domain retain set (other domains'
  questions answered with the forget domain's words), where the task has one.
- ``forget_mc_accuracy``: the forget knowledge as 4-way multiple choice (chance 0.25), where the
  task has it.
- ``perplexity``: on generic prose (fluency).
- ``model_utility``: harmonic mean of retain prob, retain ROUGE, retain truth and mc accuracy.
- ``forget_quality``: KS p-value of forget truth ratios against a gold model's (when given).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from excise.data.encode import Example, encode_pair, encode_text
from excise.data.records import MC, QA
from excise.data.tasks import Task
from excise.metrics.generate import generate_answers
from excise.metrics.packed import score_examples
from excise.metrics.quality import forget_quality, harmonic_mean, truth_ratios, truth_score
from excise.metrics.rouge import rouge_l_recall
from excise.scoring import SequenceStats

HEADLINE = (
    "forget_accuracy",
    "paraphrase_accuracy",
    "retain_accuracy",
    "mc_accuracy",
    "perplexity",
)
# quick evaluation: at most this many items of each set, spread evenly (deterministic)
QUICK = {"qa": 32, "mc": 30, "fluency": 8, "generate": 8}
QA_SETS = (  # (metric prefix, task field, truth ratio)
    ("forget", "forget_eval", True),
    ("paraphrase", "paraphrases", False),
    ("retain", "retain_eval", True),
    ("near_retain", "near_retain_eval", False),
)


@dataclass
class Evaluation:
    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)  # per-item values, for tests and plots


def spread(items: list, count: int) -> list:
    """At most ``count`` of ``items``, evenly spread, in order (the same ones every time)."""
    if len(items) <= count:
        return list(items)
    return [items[i * len(items) // count] for i in range(count)]


def quick_task(task: Task, sizes: dict[str, int] | None = None) -> Task:
    """``task`` with its evaluation sets cut to :data:`QUICK`'s sizes (paraphrases follow their
    forget items; the training sets are kept)."""
    sizes = {**QUICK, **(sizes or {})}
    return replace(
        task,
        forget_eval=spread(task.forget_eval, sizes["qa"]),
        retain_eval=spread(task.retain_eval, sizes["qa"]),
        near_retain_eval=spread(task.near_retain_eval, sizes["qa"]),
        utility=spread(task.utility, sizes["mc"]),
        forget_mc=spread(task.forget_mc, sizes["mc"]),
        fluency=spread(task.fluency, sizes["fluency"]),
    )


class _Pass:
    """Examples of every metric, gathered for one scoring pass; each set keeps its slice."""

    def __init__(self) -> None:
        self.examples: list[Example] = []

    def add(self, examples: list[Example]) -> slice:
        start = len(self.examples)
        self.examples.extend(examples)
        return slice(start, len(self.examples))


def _qa_examples(tokenizer, items: list[QA], template: str, truth: bool, scoring: _Pass):
    main = scoring.add([encode_pair(tokenizer, q.prompt, q.completion, template) for q in items])
    with_wrong = [i for i, q in enumerate(items) if q.perturbed] if truth else []
    wrong = scoring.add(
        [
            encode_pair(tokenizer, items[i].prompt, w, template)
            for i in with_wrong
            for w in items[i].perturbed
        ]
    )
    return main, with_wrong, wrong


def _qa_values(
    stats: SequenceStats, items: list[QA], prefix: str, main: slice, with_wrong, wrong: slice
) -> tuple[dict[str, float], dict[str, Any]]:
    norm = stats.logprob[main] / stats.tokens[main].clamp(min=1)
    metrics = {
        f"{prefix}_accuracy": float(stats.correct[main].float().mean()),
        f"{prefix}_prob": float(torch.exp(norm).mean()),
    }
    details: dict[str, Any] = {f"{prefix}_correct": stats.correct[main].tolist()}
    if with_wrong:
        wrong_norm = stats.logprob[wrong] / stats.tokens[wrong].clamp(min=1)
        groups, start = [], 0
        for i in with_wrong:
            groups.append(wrong_norm[start : start + len(items[i].perturbed)])
            start += len(items[i].perturbed)
        ratios = truth_ratios(norm[with_wrong], groups)
        metrics[f"{prefix}_truth"] = truth_score(ratios)
        details[f"{prefix}_truth_ratio"] = ratios.tolist()
    return metrics, details


def _mc_examples(tokenizer, questions: list[MC], scoring: _Pass) -> slice:
    return scoring.add(
        [
            encode_pair(tokenizer, f"Question: {q.question}\nAnswer:", f" {c}", "raw")
            for q in questions
            for c in q.choices
        ]
    )


def _mc_value(stats: SequenceStats, questions: list[MC], span: slice) -> float:
    logprob = stats.logprob[span]
    right, start = 0, 0
    for q in questions:
        right += int(int(logprob[start : start + len(q.choices)].argmax()) == q.answer)
        start += len(q.choices)
    return right / len(questions)


def _perplexity_value(stats: SequenceStats, span: slice) -> float:
    return math.exp(-float(stats.logprob[span].sum()) / max(1, int(stats.tokens[span].sum())))


def _score(model, tokenizer, scoring: _Pass, batch_size: int | None) -> SequenceStats:
    return score_examples(model, scoring.examples, tokenizer.pad_token_id, batch_size=batch_size)


def qa_metrics(
    model,
    tokenizer,
    items: list[QA],
    template: str,
    prefix: str,
    *,
    truth: bool = True,
    batch_size: int | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Accuracy, probability (and truth ratio) of ``items``' answers, as ``{prefix}_*``."""
    if not items:
        return {}, {}
    scoring = _Pass()
    spans = _qa_examples(tokenizer, items, template, truth, scoring)
    return _qa_values(_score(model, tokenizer, scoring, batch_size), items, prefix, *spans)


def mc_accuracy(model, tokenizer, questions: list[MC], *, batch_size: int | None = None) -> float:
    """Share of questions whose most likely choice (summed log-probability) is the answer."""
    scoring = _Pass()
    span = _mc_examples(tokenizer, questions, scoring)
    return _mc_value(_score(model, tokenizer, scoring, batch_size), questions, span)


def perplexity(model, tokenizer, texts: list[str], *, batch_size: int | None = None) -> float:
    scoring = _Pass()
    span = scoring.add([encode_text(tokenizer, t, i) for i, t in enumerate(texts)])
    return _perplexity_value(_score(model, tokenizer, scoring, batch_size), span)


def rouge_sample(items: list[QA], sample: int) -> list[QA]:
    """The items ROUGE-L generates for: every ``len // sample``-th one, at most ``sample``."""
    return items[:: max(1, len(items) // sample)][:sample]


def rouge(model, tokenizer, items: list[QA], template: str, sample: int) -> float:
    chosen = rouge_sample(items, sample)
    answers = generate_answers(model, tokenizer, [q.prompt for q in chosen], template)
    return _rouge_value(chosen, answers)


def _rouge_value(chosen: list[QA], answers: list[str]) -> float:
    return float(
        np.mean([rouge_l_recall(q.completion, a) for q, a in zip(chosen, answers, strict=True)])
    )


def _plan(tokenizer, task: Task):
    scoring = _Pass()
    spans = {
        prefix: _qa_examples(tokenizer, getattr(task, name), task.template, truth, scoring)
        for prefix, name, truth in QA_SETS
    }
    mc_span = _mc_examples(tokenizer, task.utility, scoring)
    forget_mc_span = _mc_examples(tokenizer, task.forget_mc, scoring)
    texts = [encode_text(tokenizer, t.text, i) for i, t in enumerate(task.fluency)]
    return scoring, spans, mc_span, forget_mc_span, scoring.add(texts)


def scored_examples(tokenizer, task: Task) -> list[Example]:
    """Every teacher-forced sequence :func:`evaluate` scores on ``task`` (for benchmarks)."""
    return _plan(tokenizer, task)[0].examples


def evaluate(
    model,
    tokenizer,
    task: Task,
    *,
    gold_truth_ratios: list[float] | None = None,
    generate: int = 16,
    quick: bool = False,
    batch_size: int | None = None,
) -> Evaluation:
    """Every metric of ``task`` on ``model``; ``generate`` items of the forget and the retain set
    get a ROUGE-L generation. ``quick``: on :func:`quick_task`'s sample (and
    ``QUICK["generate"]`` generations per set). ``batch_size``: rows per forward pass at most
    (None: a token budget alone sizes the batches)."""
    if quick:
        task, generate = quick_task(task), min(generate, QUICK["generate"])
    scoring, spans, mc_span, forget_mc_span, fluency_span = _plan(tokenizer, task)
    stats = _score(model, tokenizer, scoring, batch_size)
    # ROUGE-L: the forget and retain samples generated in one batch
    samples = {
        prefix: rouge_sample(getattr(task, name), generate) if generate else []
        for prefix, name in (("forget", "forget_eval"), ("retain", "retain_eval"))
    }
    prompts = [q.prompt for chosen in samples.values() for q in chosen]
    answers = (
        generate_answers(model, tokenizer, prompts, task.template, batch_size=len(prompts))
        if prompts
        else []
    )
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {}
    start = 0
    for prefix, name, _truth in QA_SETS:
        items = getattr(task, name)
        if not items:
            continue
        values, per_item = _qa_values(stats, items, prefix, *spans[prefix])
        metrics.update(values)
        details.update(per_item)
        if samples.get(prefix):
            chosen = samples[prefix]
            metrics[f"{prefix}_rouge"] = _rouge_value(chosen, answers[start : start + len(chosen)])
            start += len(chosen)
    if task.utility:
        metrics["mc_accuracy"] = _mc_value(stats, task.utility, mc_span)
    if task.forget_mc:
        metrics["forget_mc_accuracy"] = _mc_value(stats, task.forget_mc, forget_mc_span)
    if task.fluency:
        metrics["perplexity"] = _perplexity_value(stats, fluency_span)
    parts = [
        metrics.get(k, float("nan"))
        for k in ("retain_prob", "retain_rouge", "retain_truth", "mc_accuracy")
    ]
    metrics["model_utility"] = harmonic_mean(parts)
    if gold_truth_ratios is not None and details.get("forget_truth_ratio"):
        metrics["forget_quality"] = forget_quality(
            np.asarray(details["forget_truth_ratio"]), np.asarray(gold_truth_ratios)
        )
    return Evaluation(metrics, details)
