"""Ripple-aware editing: edit the facts an edit implies together with it (``--ripple``).

An edit rarely stands alone: moving a city to another country implies that country's capital,
language, continent and currency for the city (Cohen et al. 2024, "Evaluating the ripple
effects of knowledge editing"; Zhong et al. 2023, MQuAKE). Editors that write one fact leave
those unchanged. Here, for every request whose relation kind has templates, the model itself is
asked about the NEW object ("The capital of Iceland is" -> greedy " Reykjavik") and each answer
becomes an extra request on the same subject ("Lyon is in the country whose capital is" ->
Reykjavik), edited in the same batch as the request. Nothing is read from a benchmark's answer
key: the implied facts are the model's own knowledge, so this works on any request file.

Relation templates are data: ``data/builtin/ripple/relations.json`` (shipped) or a file of the
same shape (``--ripple FILE``). A request's kind is its ``relation`` field, else the relation
whose ``match`` list holds its prompt. Per implied fact: ``ask`` (``{object}`` is the request's
``target_new``) and ``edit`` (``{}`` is the subject; a string or a list of phrasings).

Hyper-parameters: ``min_confidence`` 0.1 (an answer is used when its mean token probability
under ``ask`` is at least this); answers are cut at punctuation, linking words and repeated
words, 4 words at most. An implied fact the model already states for the subject is not edited again.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from excise.editing.requests import EditRequest, answer
from excise.errors import DataError

RELATIONS = Path(__file__).parents[1] / "data" / "builtin" / "ripple" / "relations.json"
MIN_CONFIDENCE = 0.1
MAX_WORDS = 4
# words that end an answer phrase: "Paris and the ..." -> "Paris"
LINKS = {"and", "or", "but", "which", "who", "where", "that", "is", "was", "are", "in", "with"}
LINKS |= {"of", "on", "for", "to", "from", "as", "at", "by", "it", "its", "while", "since"}


@dataclass(frozen=True)
class Implication:
    ask: str  # about the new object: "The capital of {object} is"
    edits: tuple[str, ...]  # about the subject: "{} is in the country whose capital is"


@dataclass(frozen=True)
class Relation:
    name: str
    match: tuple[str, ...]
    implied: tuple[Implication, ...]


def _relation(name: str, entry: Any, where: str) -> Relation:
    if not isinstance(entry, Mapping) or not isinstance(entry.get("implied"), list):
        raise DataError(f"{where}: relation {name!r} needs an 'implied' list")
    implied = []
    for item in entry["implied"]:
        edits = item.get("edit") if isinstance(item, Mapping) else None
        edits = [edits] if isinstance(edits, str) else edits
        ask = item.get("ask") if isinstance(item, Mapping) else None
        if not isinstance(ask, str) or "{object}" not in ask or not edits:
            raise DataError(f"{where}: {name!r}: each implied fact needs 'ask' with {{object}}")
        if not all(isinstance(e, str) and e.count("{}") == 1 for e in edits):
            raise DataError(f"{where}: {name!r}: each 'edit' needs exactly one '{{}}' (subject)")
        implied.append(Implication(ask, tuple(edits)))
    match = entry.get("match", [])
    if not isinstance(match, list) or not all(isinstance(m, str) for m in match):
        raise DataError(f"{where}: relation {name!r}: 'match' must be a list of prompts")
    return Relation(name, tuple(match), tuple(implied))


def load_relations(path: str | Path | None = None) -> dict[str, Relation]:
    """Relation templates from ``path`` (None: the shipped file)."""
    path = Path(path) if path is not None else RELATIONS
    if not path.is_file():
        raise DataError(f"ripple relations file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as error:
        raise DataError(f"{path}: not valid JSON ({str(error).splitlines()[0]})") from None
    entries = data.get("relations") if isinstance(data, Mapping) else None
    if not isinstance(entries, Mapping) or not entries:
        raise DataError(f'{path}: expected {{"relations": {{kind: {{implied: [...]}}}}}}')
    return {name: _relation(name, entry, str(path)) for name, entry in entries.items()}


def relation_of(request: EditRequest, relations: Mapping[str, Relation]) -> Relation | None:
    """The request's relation kind: its ``relation`` field, else a relation matching its prompt."""
    kind = request.meta.get("relation")
    if isinstance(kind, str) and kind in relations:
        return relations[kind]
    return next((r for r in relations.values() if request.prompt in r.match), None)


def first_answer(generated: str, max_words: int = MAX_WORDS) -> str:
    """The answer phrase at the start of a greedy continuation ("" when there is none)."""
    text = re.split(r"[.,;:!?()\[\]\"\n]", generated.strip(), maxsplit=1)[0]
    words = text.split()
    if words and words[0].lower() in ("the", "a", "an"):
        words = words[1:]
    kept: list[str] = []
    for word in words[:max_words]:
        if word.lower() in LINKS or word in kept:  # a repeated word: the answer has ended
            break
        kept.append(word)
    return " ".join(kept)


@dataclass(frozen=True)
class Implied:
    """One implied fact turned into an extra request, and where it came from."""

    parent: str  # the case_id of the request it follows from
    request: EditRequest
    asked: str  # the question put to the model about the new object
    confidence: float  # mean token probability of the answer under ``asked``


def implied_requests(
    model,
    tokenizer,
    requests: Sequence[EditRequest],
    relations: Mapping[str, Relation],
    *,
    template: str = "raw",
    min_confidence: float = MIN_CONFIDENCE,
    batch_size: int = 32,
) -> list[Implied]:
    """The implied facts of ``requests``, read from ``model`` (greedy answers)."""
    from excise.metrics.generate import generate_answers
    from excise.scoring import score_pairs

    asks = []  # (request, implication, question)
    for request in requests:
        relation = relation_of(request, relations)
        for implication in relation.implied if relation else ():
            asks.append(
                (request, implication, implication.ask.replace("{object}", request.target_new))
            )
    if not asks:
        return []
    questions = [q for _, _, q in asks]
    answers = [first_answer(a) for a in generate_answers(model, tokenizer, questions, template)]
    scored = [(q, answer(a, template)) for q, a in zip(questions, answers, strict=True) if a]
    stats = (
        score_pairs(model, tokenizer, scored, template, batch_size=batch_size) if scored else None
    )
    candidates = []  # (request, edit prompt, answer, question, confidence)
    position = 0
    for (request, implication, question), got in zip(asks, answers, strict=True):
        if not got:
            continue
        mean = float(stats.logprob[position] / stats.tokens[position].clamp(min=1))
        position += 1
        if math.exp(mean) >= min_confidence:
            candidates += [(request, e, got, question, math.exp(mean)) for e in implication.edits]
    if not candidates:
        return []
    # what the model says now about the subject: the implied request's true target
    current = generate_answers(
        model, tokenizer, [e.replace("{}", r.subject) for r, e, *_ in candidates], template
    )
    implied = []
    for index, ((request, prompt, got, question, confidence), now) in enumerate(
        zip(candidates, current, strict=True)
    ):
        now = first_answer(now)
        if now.lower() == got.lower():
            continue  # already true of the subject: nothing to write
        extra = EditRequest(
            case_id=f"{request.case_id}+ripple{index}",
            prompt=prompt,
            subject=request.subject,
            target_new=got,
            target_true=now or None,
            meta={"ripple_of": request.case_id},
        )
        implied.append(Implied(request.case_id, extra, question, round(confidence, 4)))
    return implied


def with_implied(batch: Sequence[EditRequest], implied: Sequence[Implied]) -> list[EditRequest]:
    """``batch`` followed by the implied requests of its members."""
    members = {r.case_id for r in batch}
    return list(batch) + [i.request for i in implied if i.parent in members]
