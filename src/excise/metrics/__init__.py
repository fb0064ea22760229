"""Evaluation: what is forgotten, what is kept, and whether the model still works.

All likelihood metrics are teacher forced and batched (one forward pass per batch gives answer
probability and greedy exact match together); only ROUGE-L generates, on a small sample.

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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from excise.data.encode import encode_text
from excise.data.records import MC, QA
from excise.data.tasks import Task
from excise.metrics.generate import generate_answers
from excise.metrics.quality import forget_quality, harmonic_mean, truth_ratios, truth_score
from excise.metrics.rouge import rouge_l_recall
from excise.scoring import score_pairs, stats_for_examples

HEADLINE = (
    "forget_accuracy",
    "paraphrase_accuracy",
    "retain_accuracy",
    "mc_accuracy",
    "perplexity",
)


@dataclass
class Evaluation:
    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)  # per-item values, for tests and plots


def qa_metrics(
    model,
    tokenizer,
    items: list[QA],
    template: str,
    prefix: str,
    *,
    truth: bool = True,
    batch_size: int = 32,
) -> tuple[dict[str, float], dict[str, Any]]:
    if not items:
        return {}, {}
    stats = score_pairs(
        model, tokenizer, [(q.prompt, q.completion) for q in items], template, batch_size=batch_size
    )
    norm = stats.logprob / stats.tokens.clamp(min=1)
    metrics = {
        f"{prefix}_accuracy": float(stats.correct.float().mean()),
        f"{prefix}_prob": float(torch.exp(norm).mean()),
    }
    details: dict[str, Any] = {f"{prefix}_correct": stats.correct.tolist()}
    with_wrong = [i for i, q in enumerate(items) if q.perturbed]
    if truth and with_wrong:
        pairs = [(items[i].prompt, w) for i in with_wrong for w in items[i].perturbed]
        wrong = score_pairs(model, tokenizer, pairs, template, batch_size=batch_size)
        wrong_norm = wrong.logprob / wrong.tokens.clamp(min=1)
        groups, start = [], 0
        for i in with_wrong:
            groups.append(wrong_norm[start : start + len(items[i].perturbed)])
            start += len(items[i].perturbed)
        ratios = truth_ratios(norm[with_wrong], groups)
        metrics[f"{prefix}_truth"] = truth_score(ratios)
        details[f"{prefix}_truth_ratio"] = ratios.tolist()
    return metrics, details


def mc_accuracy(model, tokenizer, questions: list[MC], *, batch_size: int = 32) -> float:
    pairs = [(f"Question: {q.question}\nAnswer:", f" {c}") for q in questions for c in q.choices]
    stats = score_pairs(model, tokenizer, pairs, "raw", batch_size=batch_size)
    right, start = 0, 0
    for q in questions:
        scores = stats.logprob[start : start + len(q.choices)]
        right += int(int(scores.argmax()) == q.answer)
        start += len(q.choices)
    return right / len(questions)


def perplexity(model, tokenizer, texts: list[str], *, batch_size: int = 16) -> float:
    examples = [encode_text(tokenizer, t, i) for i, t in enumerate(texts)]
    stats = stats_for_examples(model, examples, tokenizer.pad_token_id, batch_size=batch_size)
    return math.exp(-float(stats.logprob.sum()) / max(1, int(stats.tokens.sum())))


def rouge(model, tokenizer, items: list[QA], template: str, sample: int) -> float:
    chosen = items[:: max(1, len(items) // sample)][:sample]
    answers = generate_answers(model, tokenizer, [q.prompt for q in chosen], template)
    return float(
        np.mean([rouge_l_recall(q.completion, a) for q, a in zip(chosen, answers, strict=True)])
    )


def evaluate(
    model,
    tokenizer,
    task: Task,
    *,
    gold_truth_ratios: list[float] | None = None,
    generate: int = 16,
    batch_size: int = 32,
) -> Evaluation:
    """Every metric of ``task`` on ``model``; ``generate`` items per set get a ROUGE-L generation."""
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {}
    for prefix, items, truth in (
        ("forget", task.forget_eval, True),
        ("paraphrase", task.paraphrases, False),
        ("retain", task.retain_eval, True),
        ("near_retain", task.near_retain_eval, False),
    ):
        values, per_item = qa_metrics(
            model, tokenizer, items, task.template, prefix, truth=truth, batch_size=batch_size
        )
        metrics.update(values)
        details.update(per_item)
        if generate and items and prefix in ("forget", "retain"):
            metrics[f"{prefix}_rouge"] = rouge(model, tokenizer, items, task.template, generate)
    if task.utility:
        metrics["mc_accuracy"] = mc_accuracy(model, tokenizer, task.utility, batch_size=batch_size)
    if task.forget_mc:
        metrics["forget_mc_accuracy"] = mc_accuracy(
            model, tokenizer, task.forget_mc, batch_size=batch_size
        )
    if task.fluency:
        metrics["perplexity"] = perplexity(model, tokenizer, [t.text for t in task.fluency])
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
