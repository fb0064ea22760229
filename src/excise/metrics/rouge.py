"""ROUGE-L recall (Lin 2004) on words: the longest common subsequence over the reference length.

TOFU reports the recall form, since a generated answer may go on past the reference.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def lcs_length(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l_recall(reference: str, generated: str) -> float:
    ref = words(reference)
    if not ref:
        return 0.0
    return lcs_length(ref, words(generated)) / len(ref)
