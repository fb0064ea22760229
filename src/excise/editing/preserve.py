"""Preservation sets: texts whose keys an edit must keep (MEMIT's and AlphaEdit's ``K0``).

Key statistics (:mod:`excise.editing.stats`) weigh ordinary text as a whole: 50k tokens count
as much as ``mom2_weight`` edited keys. A preservation set is sharper: each key of its texts
(every token) weighs as much as one edited key (up to a total mass; ``preserve_weight`` sets
it), so the update leaves the outputs of those keys nearly where they were, and of keys like
them.

On the bundled model, holding the keys of 161 chem-symbols facts cut the loss of the other 160
over 50 sequential alphaedit edits from 14 to 6 points (bench/README.md). ``facts`` is a
built-in set: 1,924 cloze prompts of world facts (cities, landmarks, companies, people, books,
countries; ``counterfact_mini/preserve.jsonl``) none of which names a chem-symbols subject, so
an edit report's retain figure stays held out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from excise.editing.stats import compute
from excise.errors import ConfigError, DataError

FACTS = Path(__file__).parents[1] / "data" / "builtin" / "counterfact_mini" / "preserve.jsonl"
BUILTIN = ("facts",)
METHODS = ("memit", "alphaedit")  # the editors that take a preservation set
DEFAULTS = {"alphaedit": "facts"}  # a method's set when none is named ("none": no set)


def naming(names: Iterable[str]) -> re.Pattern[str] | None:
    """A pattern that finds any of ``names`` as a whole word (None for no names)."""
    ordered = sorted({n for n in names if n}, key=len, reverse=True)
    if not ordered:
        return None
    return re.compile("|".join(rf"(?<!\w){re.escape(n)}(?!\w)" for n in ordered))


def request_prompts(requests: Sequence) -> list[str]:
    """Every prompt a request is measured on: the edit, paraphrases, neighbours and probes."""
    return [
        text
        for r in requests
        for text in (
            r.text(),
            *r.paraphrases,
            *(p.prompt for p in r.neighborhood),
            *(p.prompt for p in r.probes),
        )
    ]


def builtin_facts(requests: Sequence = ()) -> list[str]:
    """The built-in ``facts`` prompts, less those about a subject that ``requests`` edit or
    measure (named in an edit, paraphrase, neighbour or probe prompt): the set protects facts
    like the measured ones, never the measured ones themselves."""
    rows = [json.loads(line) for line in FACTS.read_text(encoding="utf-8").splitlines() if line]
    measured = "\n".join(request_prompts(requests))
    subjects = naming(r["subject"] for r in rows)
    named = set(subjects.findall(measured)) if subjects and measured else set()
    return [r["text"] for r in rows if r["subject"] not in named]


def preservation_texts(source: str, requests: Sequence = ()) -> list[str]:
    """Texts to preserve: ``facts`` (built in), else a records file (a QA's prompt and
    completion, a text, an MC's question; .jsonl, .json, .csv, .parquet). Texts that name a
    subject of ``requests`` are dropped: a fact about an edited subject is the edit's to change."""
    from excise.data.records import MC, QA, Text, load_records

    if source in BUILTIN:
        texts = builtin_facts(requests)
    else:
        texts = []
        for record in load_records(source, name="preservation"):
            if isinstance(record, QA):
                gap = "" if not record.completion or record.completion[:1].isspace() else " "
                texts.append(record.prompt + gap + record.completion)
            elif isinstance(record, Text):
                texts.append(record.text)
            elif isinstance(record, MC):
                texts.append(record.question)
    edited = naming(r.subject for r in requests)
    kept = [t for t in texts if not (edited and edited.search(t))]
    if not kept:
        raise DataError(f"the preservation set {source} holds no text once edited subjects are out")
    return kept


def resolve(method: str, preserve: str | Sequence[str] | None, requests: Sequence) -> list[str]:
    """The texts ``method`` preserves: ``None`` is the method's default (``DEFAULTS``),
    ``"none"`` no set, another string a source for :func:`preservation_texts`, a list the texts
    themselves. An empty list means no set."""
    if preserve is None:
        preserve = DEFAULTS.get(method, "none")
    if isinstance(preserve, str):
        if preserve == "none":
            return []
        if method not in METHODS:
            raise ConfigError(
                f"a preservation set works with {' and '.join(METHODS)}, not {method!r}"
            )
        return preservation_texts(preserve, requests)
    texts = list(preserve)
    if texts and method not in METHODS:
        raise ConfigError(f"a preservation set works with {' and '.join(METHODS)}, not {method!r}")
    return texts


def preserved_moments(
    model, tokenizer, layers: Sequence[int], texts: Sequence[str], *, progress: bool = True
) -> tuple[dict[int, torch.Tensor], int]:
    """Per layer, the sum of k k^T over every token of ``texts``, and the number of tokens. A
    sum, not a mean: each key weighs as much as one edited key (times the preservation
    weight, :func:`excise.editing.memit.preserved`)."""
    if not texts:
        raise DataError("the preservation set holds no text")
    budget = sum(len(t) for t in texts) + len(texts)  # characters bound tokens from above
    means, count = compute(model, tokenizer, layers, texts=texts, tokens=budget, progress=progress)
    return {layer: moment * count for layer, moment in means.items()}, count
