"""Truth ratio, forget quality (KS test against a gold model) and model utility, as TOFU defines them.

Maini et al. 2024, "TOFU: a task of fictitious unlearning for LLMs".
- truth ratio R = mean_j P(wrong_j | q)^(1/|wrong_j|) / P(true | q)^(1/|true|); the reported
  "truth" score is max(0, 1 - R): how much the model prefers the true answer over wrong ones.
- forget quality: p-value of the two-sample Kolmogorov-Smirnov test between the truth ratios of the
  evaluated model and of a gold model never trained on the forget set (high = indistinguishable).
- model utility: harmonic mean of retain answer probability, retain ROUGE-L, retain truth score and
  general multiple-choice accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import ks_2samp


def truth_ratios(
    true_norm_logprob: torch.Tensor, wrong_norm_logprob: list[torch.Tensor]
) -> np.ndarray:
    """Per-item R from length-normalised log-probabilities (true: (n,), wrong: n tensors)."""
    ratios = []
    for true, wrong in zip(true_norm_logprob.tolist(), wrong_norm_logprob, strict=True):
        ratios.append(float(torch.exp(wrong).mean()) / math.exp(true))
    return np.asarray(ratios)


def truth_score(ratios: np.ndarray) -> float:
    return float(np.clip(1.0 - ratios, 0.0, None).mean()) if len(ratios) else float("nan")


def forget_quality(ratios: np.ndarray, gold_ratios: np.ndarray) -> float:
    """KS-test p-value: 1.0 means the truth-ratio distributions are indistinguishable."""
    return float(ks_2samp(ratios, gold_ratios).pvalue)


def harmonic_mean(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return float("nan")
    if min(values) <= 0:
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


def auc(members: Sequence[float], nonmembers: Sequence[float]) -> float:
    """P(member score > non-member score) + 0.5 P(equal): the Mann-Whitney U statistic / (m n)."""
    scores = np.concatenate([np.asarray(members, float), np.asarray(nonmembers, float)])
    if not len(members) or not len(nonmembers):
        return float("nan")
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # ties share their mean rank
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    m, n = len(members), len(nonmembers)
    return float((ranks[:m].sum() - m * (m + 1) / 2) / (m * n))
