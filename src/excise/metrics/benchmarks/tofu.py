"""TOFU's own metrics, as its authors compute them; the sets and their files are
:mod:`excise.data.benchmarks.tofu` (whose docstring gives the definitions)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from excise.data.benchmarks.tofu import Item, TofuSets, completion, prompt
from excise.metrics.generate import generate_answers
from excise.metrics.quality import forget_quality, harmonic_mean
from excise.metrics.rouge import rouge_l_recall
from excise.scoring import score_pairs

MAX_NEW_TOKENS = 128  # TOFU generates up to 200 tokens in total, prompt included


@dataclass
class Scores:
    """Per-item losses and generations of one evaluation set."""

    answer_loss: np.ndarray  # (items,)
    base_loss: np.ndarray  # (items,)
    perturbed_loss: list[np.ndarray]  # per item, (wrong answers,)
    rouge: np.ndarray  # (items,)

    @property
    def truth_statistic(self) -> np.ndarray:
        """s = exp(mean_j L(q, a'_j) - L(q, b)): large when the model prefers b over wrong ones."""
        wrong = np.array([losses.mean() for losses in self.perturbed_loss])
        return np.exp(wrong - self.base_loss)


def _losses(model, tokenizer, pairs: list[tuple[str, str]], template: str) -> np.ndarray:

    stats = score_pairs(model, tokenizer, pairs, template)
    return (-stats.logprob / stats.tokens.clamp(min=1)).numpy().astype(np.float64)


def score_set(
    model, tokenizer, items: list[Item], template: str, *, max_new_tokens: int = MAX_NEW_TOKENS
) -> Scores:

    questions = [prompt(i.question, template) for i in items]
    answer = _losses(
        model,
        tokenizer,
        [(q, completion(i.answer)) for q, i in zip(questions, items, strict=True)],
        template,
    )
    base = _losses(
        model,
        tokenizer,
        [(q, completion(i.base)) for q, i in zip(questions, items, strict=True)],
        template,
    )
    flat = _losses(
        model,
        tokenizer,
        [(q, completion(p)) for q, i in zip(questions, items, strict=True) for p in i.perturbed],
        template,
    )
    perturbed, start = [], 0
    for item in items:
        perturbed.append(flat[start : start + len(item.perturbed)])
        start += len(item.perturbed)
    rouge = np.full(len(items), np.nan)  # not generated: no ROUGE, and no Model Utility
    if max_new_tokens:
        generated = generate_answers(
            model, tokenizer, questions, template, max_new_tokens=max_new_tokens
        )
        rouge = np.array(
            [rouge_l_recall(i.answer, g) for i, g in zip(items, generated, strict=True)]
        )
    return Scores(answer, base, perturbed, rouge)


def set_metrics(scores: Scores, kind: str) -> dict[str, float]:
    """Prob, ROUGE and Truth Ratio of one set (``kind``: forget, retain, real_authors, world_facts)."""
    truth = np.exp(-scores.answer_loss)
    if kind in ("forget", "retain"):
        prob = float(truth.mean())
    else:
        wrong = np.array([np.exp(-losses).sum() for losses in scores.perturbed_loss])
        prob = float((truth / (truth + wrong)).mean())
    statistic = scores.truth_statistic
    if kind == "forget":
        ratio = float(np.minimum(statistic, 1 / statistic).mean())
    else:
        ratio = float(np.maximum(0.0, 1 - 1 / statistic).mean())
    return {"prob": prob, "rouge": float(scores.rouge.mean()), "truth_ratio": ratio}


def reference(model, tokenizer, task, *, max_new_tokens: int = 0) -> dict:
    """What Forget Quality compares against: the retain model's forget truth statistics."""
    scores = score_set(
        model, tokenizer, task.benchmark.forget, task.template, max_new_tokens=max_new_tokens
    )
    return {"forget_truth_statistic": scores.truth_statistic.tolist()}


def metrics(
    model, tokenizer, task, reference: dict | None = None, *, max_new_tokens: int = MAX_NEW_TOKENS
) -> dict[str, float]:
    """TOFU's metrics (see the module docstring), as ``tofu_*`` keys."""

    sets: TofuSets = task.benchmark
    out: dict[str, float] = {}
    utility = []
    forget_scores = None
    for kind in ("forget", "retain", "real_authors", "world_facts"):
        scores = score_set(
            model, tokenizer, getattr(sets, kind), task.template, max_new_tokens=max_new_tokens
        )
        forget_scores = scores if kind == "forget" else forget_scores
        for name, value in set_metrics(scores, kind).items():
            out[f"tofu_{name}_{kind}"] = value
            if kind != "forget":
                utility.append(value)
    out["tofu_model_utility"] = (
        float("nan") if any(np.isnan(v) for v in utility) else harmonic_mean(utility)
    )
    if reference is not None:
        out["tofu_forget_quality"] = forget_quality(
            forget_scores.truth_statistic, np.asarray(reference["forget_truth_statistic"])
        )
    return out
