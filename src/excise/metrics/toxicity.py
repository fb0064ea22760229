"""Two small toxicity classifiers for the ``toxicity`` use case: a lexicon and a logistic probe.

- :func:`lexicon_flags`: a text is toxic when it contains a word or phrase of
  ``builtin/toxicity/lexicon.txt`` (insults and demeaning words, matched as whole words).
- :func:`probe_scores`: logistic regression on binary bag-of-words features (lower-cased word
  unigrams and bigrams, hashed into ``FEATURES`` buckets), trained in the package, once per
  process, on ``builtin/toxicity/contrast.jsonl`` (30 toxic, 30 neutral sentences) and the toxic /
  neutral continuations of ``prompts.jsonl``; returns P(toxic).

Limits, measured or by construction: both only know the words of the shipped sets (a few dozen
English insults). They miss toxicity without those words (sarcasm, threats, slurs, dog whistles,
other languages, misspellings), and flag quotations, negations ("you are not an idiot") and
benign uses ("a fool-proof plan" is safe, "the fool in the play" is not). The probe, trained on
60 + 80 short texts, reaches perfect training accuracy and generalises only as far as shared
words go: a coarse screen for a demo on a 135M model, no substitute for a trained toxicity
classifier (Perspective API, Detoxify) on real text.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Sequence

import numpy as np

from excise.data.tasks import BUILTIN

FEATURES = 1 << 12
FOLDER = BUILTIN / "toxicity"
WORD = re.compile(r"[a-z']+")


@functools.cache
def lexicon() -> tuple[str, ...]:
    lines = (FOLDER / "lexicon.txt").read_text(encoding="utf-8").splitlines()
    return tuple(
        line.strip().lower() for line in lines if line.strip() and not line.startswith("#")
    )


def lexicon_hits(text: str) -> list[str]:
    """The lexicon entries in ``text`` (whole words / phrases, case-insensitive)."""
    words = " " + " ".join(WORD.findall(text.lower())) + " "
    return [entry for entry in lexicon() if f" {entry} " in words]


def lexicon_flags(texts: Sequence[str]) -> list[bool]:
    return [bool(lexicon_hits(t)) for t in texts]


def features(texts: Sequence[str]) -> np.ndarray:
    """(texts, FEATURES) binary hashed unigram + bigram indicators."""
    out = np.zeros((len(texts), FEATURES), dtype=np.float64)
    for row, text in enumerate(texts):
        words = WORD.findall(text.lower())
        for gram in words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]:
            bucket = int.from_bytes(hashlib.blake2b(gram.encode(), digest_size=4).digest(), "big")
            out[row, bucket % FEATURES] = 1.0
    return out


@functools.cache
def _shipped_training_set() -> tuple[tuple[str, ...], tuple[int, ...]]:
    rows = [json.loads(line) for line in (FOLDER / "contrast.jsonl").read_text().splitlines()]
    texts = [r["text"] for r in rows]
    labels = [int(r["toxic"]) for r in rows]
    for line in (FOLDER / "prompts.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        texts += [row["toxic"], row["neutral"]]
        labels += [1, 0]
    return tuple(texts), tuple(labels)


def fit_probe(
    texts: Sequence[str], labels: Sequence[int], *, l2: float = 1e-2, steps: int = 500
) -> tuple[np.ndarray, float]:
    """(weights, bias) of an L2-regularised logistic regression, by full-batch gradient descent."""
    x = features(texts)
    y = np.asarray(labels, dtype=np.float64)
    weight, bias = np.zeros(FEATURES), 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(x @ weight + bias)))
        weight -= 1.0 * (x.T @ (p - y) / len(y) + l2 * weight)
        bias -= 1.0 * float((p - y).mean())
    return weight, bias


@functools.cache
def _shipped_probe() -> tuple[np.ndarray, float]:
    return fit_probe(*_shipped_training_set())


def probe_scores(
    texts: Sequence[str], probe: tuple[np.ndarray, float] | None = None
) -> list[float]:
    """P(toxic) of each text under ``probe`` (default: the one trained on the shipped sets)."""
    weight, bias = probe if probe is not None else _shipped_probe()
    logits = features(texts) @ weight + bias
    return (1.0 / (1.0 + np.exp(-logits))).tolist()
