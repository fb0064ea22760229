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
whose ``match`` list holds its prompt. Per implied fact:

- ``edit``: the prompt(s) to write (``{}`` is the entity edited; a string or a list of
  phrasings, each an extra request with the same target).
- ``ask``: the question(s) whose answer is the target: ``{object}`` is the request's
  ``target_new``, ``{subject}`` its subject. A list is a chain (multi-hop): each later question's
  ``{object}`` is the previous answer ("The city of {object} is in the country of" -> Greece,
  then "The capital of {object} is" -> Athens). Without ``ask``, ``target`` names it directly:
  ``"{object}"`` (the request's new object) or ``"{subject}"`` (its subject: the reverse
  direction, with ``about`` ``"{object}"``).
- ``about`` (optional): the entity edited. Default the request's subject; ``"{object}"`` the new
  object; or a question about the subject answered by the unedited model ("The capital of
  {subject} is" -> Brussels: an edit moving Belgium to Asia moves Brussels too).

Hyper-parameters: ``min_confidence`` 0.1 (an answer is used when its mean token probability
under its question is at least this); answers are cut at punctuation, linking words and repeated
words, 4 words at most; an entity read from the model must be a name (capitalised). An implied
fact the model already states is not edited again; the same prompt about the same entity is
written once.
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
    asks: tuple[str, ...]  # the chain of questions whose last answer is the target ("" none)
    edits: tuple[str, ...]  # about the entity: "{} is in the country whose capital is"
    about: str | None = None  # the entity: None the subject, "{object}", or a question
    target: str | None = None  # without asks: "{object}" or "{subject}"


@dataclass(frozen=True)
class Relation:
    name: str
    match: tuple[str, ...]
    implied: tuple[Implication, ...]


SLOTS = ("{object}", "{subject}")


def _implication(name: str, item: Any, where: str) -> Implication:
    if not isinstance(item, Mapping):
        raise DataError(f"{where}: {name!r}: each implied fact must be an object")
    edits, asks = item.get("edit"), item.get("ask", [])
    edits = [edits] if isinstance(edits, str) else edits
    asks = [asks] if isinstance(asks, str) else asks
    if not edits or not all(isinstance(e, str) and e.count("{}") == 1 for e in edits):
        raise DataError(f"{where}: {name!r}: each 'edit' needs exactly one '{{}}' (the entity)")
    if not isinstance(asks, list) or not all(
        isinstance(q, str) and any(s in q for s in SLOTS) for q in asks
    ):
        raise DataError(f"{where}: {name!r}: each 'ask' needs {{object}} or {{subject}}")
    target, about = item.get("target"), item.get("about")
    if not asks and target not in SLOTS:
        raise DataError(f"{where}: {name!r}: an implied fact needs 'ask' or a 'target' of {SLOTS}")
    if about is not None and not (isinstance(about, str) and any(s in about for s in SLOTS)):
        raise DataError(f"{where}: {name!r}: 'about' needs {{object}} or {{subject}}")
    return Implication(tuple(asks), tuple(edits), about, None if asks else target)


def _relation(name: str, entry: Any, where: str) -> Relation:
    if not isinstance(entry, Mapping) or not isinstance(entry.get("implied"), list):
        raise DataError(f"{where}: relation {name!r} needs an 'implied' list")
    implied = [_implication(name, item, where) for item in entry["implied"]]
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


def _fill(text: str, request: EditRequest, value: str | None = None) -> str:
    """``text`` with ``{object}`` (``value``, default the new object) and ``{subject}``."""
    value = request.target_new if value is None else value
    return text.replace("{object}", value).replace("{subject}", request.subject)


def _answer_all(model, tokenizer, questions, cache, template, min_confidence, batch_size) -> None:
    """The model's confident greedy answer (else "") and its confidence for each new question,
    into ``cache``."""
    from excise.metrics.generate import generate_answers
    from excise.scoring import score_pairs

    todo = sorted({q for q in questions if q not in cache})
    if not todo:
        return
    answers = [first_answer(a) for a in generate_answers(model, tokenizer, todo, template)]
    scored = [(q, answer(a, template)) for q, a in zip(todo, answers, strict=True) if a]
    stats = (
        score_pairs(model, tokenizer, scored, template, batch_size=batch_size) if scored else None
    )
    position = 0
    for question, got in zip(todo, answers, strict=True):
        if not got:
            cache[question] = ("", 0.0)
            continue
        confidence = math.exp(float(stats.logprob[position] / stats.tokens[position].clamp(min=1)))
        position += 1
        cache[question] = (got if confidence >= min_confidence else "", confidence)


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

    pairs = [
        (request, implication)
        for request in requests
        for implication in getattr(relation_of(request, relations), "implied", ())
    ]
    cache: dict[str, tuple[str, float]] = {}
    args = (template, min_confidence, batch_size)
    questions = [_fill(i.about, r) for r, i in pairs if i.about and i.about != "{object}"]
    _answer_all(model, tokenizer, questions, cache, *args)
    entities, targets, asked, confidence = [], [], [], []
    for request, implication in pairs:
        about = implication.about
        entity = request.subject if about is None else _fill(about, request)
        if entity in cache:  # read from the model: a name ("city" is not one)
            entity = cache[entity][0] if cache[entity][0][:1].isupper() else ""
        entities.append(entity)
        targets.append(_fill(implication.target or "{object}", request))
        asked.append(None if about in (None, "{object}") else _fill(about, request))
        confidence.append(cache[asked[-1]][1] if asked[-1] else 1.0)
    for step in range(max((len(i.asks) for _, i in pairs), default=0)):  # the chains, a hop a round
        live = [n for n, (_, i) in enumerate(pairs) if step < len(i.asks) and targets[n]]
        values = {n: targets[n] if step else None for n in live}
        hop = {n: _fill(pairs[n][1].asks[step], pairs[n][0], values[n]) for n in live}
        _answer_all(model, tokenizer, list(hop.values()), cache, *args)
        for n, question in hop.items():
            targets[n], sure = cache[question]
            asked[n] = " / ".join(filter(None, [asked[n], question]))
            confidence[n] = min(confidence[n], sure)
    candidates = []  # (request, edit prompt, entity, target, question, confidence)
    seen: set[tuple[str, str]] = set()
    for n, (request, implication) in enumerate(pairs):
        entity, got = entities[n], targets[n]
        if not entity or not got or entity.lower() == got.lower():
            continue
        for prompt in implication.edits:
            if (prompt, entity.lower()) not in seen:
                seen.add((prompt, entity.lower()))
                candidates.append((request, prompt, entity, got, asked[n] or "", confidence[n]))
    if not candidates:
        return []
    # what the model says now about the entity: the implied request's true target
    current = generate_answers(
        model, tokenizer, [p.replace("{}", e) for _, p, e, *_ in candidates], template
    )
    implied = []
    for index, ((request, prompt, entity, got, question, sure), now) in enumerate(
        zip(candidates, current, strict=True)
    ):
        now = first_answer(now)
        if now.lower() == got.lower():
            continue  # already true of the entity: nothing to write
        extra = EditRequest(
            case_id=f"{request.case_id}+ripple{index}",
            prompt=prompt,
            subject=entity,
            target_new=got,
            target_true=now or None,
            meta={"ripple_of": request.case_id},
        )
        implied.append(Implied(request.case_id, extra, question, round(sure, 4)))
    return implied


def with_implied(batch: Sequence[EditRequest], implied: Sequence[Implied]) -> list[EditRequest]:
    """``batch`` followed by the implied requests of its members."""
    members = {r.case_id for r in batch}
    return list(batch) + [i.request for i in implied if i.parent in members]
