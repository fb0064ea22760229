"""Edit requests: which fact to change, into what, and the prompts that check the change.

A request names a fact by a cloze template with ``{}`` for the subject ("The capital of {} is"),
the subject ("France") and the new answer ("Rome"). Beside it travel the prompts an evaluation
needs: paraphrases (their answer should become ``target_new`` too), neighbourhood prompts about
other subjects (their answers must not change) and probes, whose ``category`` says what they test:

- ``portability``: a consequence of the edit phrased another way ("People in Lyon speak" after
  moving Lyon to Italy);
- ``logical``: an inverse or equivalent relation ("Rome is the capital of" -> France);
- ``compositional``: a two-hop question through the edited fact ("The capital of the country
  where Lyon is located is" -> Rome);
- ``alias``: the edited prompt with another name of the subject ("the French Republic");
- ``relation_specificity``: another relation of the same subject, which must NOT change (its
  target is the original answer).

The first four (``FORWARD_CATEGORIES``) expect the answer that follows from the edit.

:func:`load_requests` reads, record by record, excise's own JSON lines, CounterFact
(``counterfact.json``, Meng et al. 2022), zsRE as used by MEND/ROME/MEMIT (``zsre_mem_eval.json``)
and MQuAKE (Zhong et al. 2023). :func:`builtin_requests` gives the shipped ``counterfact-mini``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from excise.data.files import json_problem, not_text, read_text
from excise.errors import ConfigError, DataError

PROBE_CATEGORIES = (
    "paraphrase",
    "neighborhood",
    "portability",
    "logical",
    "compositional",
    "alias",
    "relation_specificity",
)
FORWARD_CATEGORIES = ("portability", "logical", "compositional", "alias")
log = logging.getLogger("excise")
BUILTIN = {
    "counterfact-mini": Path(__file__).resolve().parent.parent
    / "data"
    / "builtin"
    / "counterfact_mini"
    / "requests.jsonl"
}


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{what} must be a non-empty string, got {value!r}")
    return value.strip()


@dataclass(frozen=True)
class Probe:
    """A full prompt (no ``{}``) and the answer expected after it, following a space."""

    prompt: str
    target: str
    category: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt", _text(self.prompt, "probe 'prompt'"))
        object.__setattr__(self, "target", _text(self.target, "probe 'target'"))
        if "{}" in self.prompt:
            raise DataError(f"probe prompt {self.prompt!r} still has a '{{}}' subject slot")
        if self.category not in PROBE_CATEGORIES:
            raise DataError(
                f"probe category {self.category!r} is unknown; use one of "
                + ", ".join(PROBE_CATEGORIES)
            )


@dataclass(frozen=True)
class EditRequest:
    """Change the answer of ``prompt`` (with ``subject`` in its ``{}``) to ``target_new``."""

    case_id: str
    prompt: str  # template with "{}" for the subject: "The capital of {} is"
    subject: str
    target_new: str  # no leading space
    target_true: str | None = None
    paraphrases: tuple[str, ...] = ()  # full prompts whose answer should become target_new
    neighborhood: tuple[Probe, ...] = ()  # other subjects' prompts and their unchanged answers
    probes: tuple[Probe, ...] = ()  # portability and ripple probes; targets as after the edit
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "case_id", _text(str(self.case_id), "'case_id'"))
        object.__setattr__(self, "subject", _text(self.subject, "'subject'"))
        object.__setattr__(self, "target_new", _text(self.target_new, "'target_new'"))
        if self.target_true is not None:
            object.__setattr__(self, "target_true", _text(self.target_true, "'target_true'"))
        if not isinstance(self.prompt, str) or self.prompt.count("{}") != 1:
            hint = ""
            if isinstance(self.prompt, str) and self.subject in self.prompt:
                hint = f"; write it as {self.prompt.replace(self.subject, '{}', 1)!r}"
            raise DataError(
                f"prompt {self.prompt!r} must mark the subject with exactly one '{{}}'{hint}"
            )
        if self.target_new == self.target_true:
            raise DataError(f"'target_new' equals 'target_true' ({self.target_new!r})")
        paraphrases = tuple(_text(p, "a paraphrase") for p in self.paraphrases)
        object.__setattr__(self, "paraphrases", paraphrases)
        object.__setattr__(self, "neighborhood", tuple(self.neighborhood))
        object.__setattr__(self, "probes", tuple(self.probes))

    def text(self) -> str:
        """The prompt with the subject filled in."""
        return self.prompt.replace("{}", self.subject)


def answer(target: str, template: str) -> str:
    """The completion to score after a prompt: " target" for raw text, "target" for chat."""
    if template == "raw":
        return " " + target.lstrip()
    if template == "chat":
        return target.strip()
    raise ConfigError(f"unknown template {template!r}; use 'raw' or 'chat'")


# --- readers, one per format --------------------------------------------------------------


def _strings(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise DataError(f"'{what}' must be a list of strings")
    return list(value)


def _target(value: Any, what: str) -> str:
    """A target given as a string or as CounterFact's {"str": ...}."""
    if isinstance(value, Mapping):
        value = value.get("str")
    return _text(value, f"'{what}'")


def _probe_list(value: Any, what: str, default_category: str, default_target: str | None):
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise DataError(f"'{what}' must be a list")
    probes = []
    for entry in value:
        if isinstance(entry, str):
            if default_target is None:
                raise DataError(
                    f"'{what}' entry {entry!r} has no target and the request has no "
                    '\'target_true\'; give {{"prompt", "target"}}'
                )
            probes.append(Probe(entry, default_target, default_category))
        elif isinstance(entry, Mapping):
            if "prompt" not in entry or "target" not in entry:
                raise DataError(f"'{what}' entries need 'prompt' and 'target'")
            probes.append(
                Probe(entry["prompt"], entry["target"], entry.get("category", default_category))
            )
        else:
            raise DataError(f"'{what}' entries must be strings or objects, got {entry!r}")
    return tuple(probes)


EXCISE_FIELDS = {
    "case_id",
    "prompt",
    "subject",
    "target_new",
    "target_true",
    "paraphrases",
    "neighborhood",
    "probes",
    "portability",
}


def _from_excise(row: Mapping[str, Any], index: int) -> list[EditRequest]:
    target_true = row.get("target_true")
    target_true = _target(target_true, "target_true") if target_true is not None else None
    probes = _probe_list(row.get("probes"), "probes", "portability", None)
    probes += _probe_list(row.get("portability"), "portability", "portability", None)
    return [
        EditRequest(
            case_id=str(row.get("case_id", index)),
            prompt=row.get("prompt"),
            subject=row.get("subject"),
            target_new=_target(row.get("target_new"), "target_new"),
            target_true=target_true,
            paraphrases=tuple(_strings(row.get("paraphrases"), "paraphrases")),
            neighborhood=_probe_list(
                row.get("neighborhood"), "neighborhood", "neighborhood", target_true
            ),
            probes=probes,
            meta={k: v for k, v in row.items() if k not in EXCISE_FIELDS} | {"format": "excise"},
        )
    ]


def _from_counterfact(row: Mapping[str, Any], index: int) -> list[EditRequest]:
    rewrite = row["requested_rewrite"]
    if isinstance(rewrite, list):
        if len(rewrite) != 1:
            return _from_mquake(row, index)
        rewrite = rewrite[0]
    if not isinstance(rewrite, Mapping):
        raise DataError("'requested_rewrite' must be an object")
    target_true = _target(rewrite.get("target_true"), "target_true")
    if "questions" in row:
        return _from_mquake({**row, "requested_rewrite": [rewrite]}, index)
    return [
        EditRequest(
            case_id=str(row.get("case_id", index)),
            prompt=rewrite.get("prompt"),
            subject=rewrite.get("subject"),
            target_new=_target(rewrite.get("target_new"), "target_new"),
            target_true=target_true,
            paraphrases=tuple(_strings(row.get("paraphrase_prompts"), "paraphrase_prompts")),
            neighborhood=_probe_list(
                row.get("neighborhood_prompts"), "neighborhood_prompts", "neighborhood", target_true
            ),
            meta={
                "format": "counterfact",
                "relation": rewrite.get("relation_id"),
                "attribute_prompts": _strings(row.get("attribute_prompts"), "attribute_prompts"),
                "generation_prompts": _strings(row.get("generation_prompts"), "generation_prompts"),
            },
        )
    ]


def _from_zsre(row: Mapping[str, Any], index: int) -> list[EditRequest]:
    if isinstance(row.get("alt"), str) and not row["alt"].strip():
        log.warning("zsRE record %s has no alternative answer ('alt'); skipped", index)
        return []
    subject = _text(row.get("subject"), "'subject'")
    question = _text(row.get("src"), "'src'")
    if subject not in question:
        raise DataError(f"subject {subject!r} does not occur in the question {question!r}")
    answers = _strings(row.get("answers"), "answers")
    neighborhood = ()
    if row.get("loc") is not None:
        loc = _text(row.get("loc"), "'loc'").removeprefix("nq question:").strip()
        loc = loc[:1].upper() + loc[1:]
        neighborhood = (
            Probe(loc if loc.endswith("?") else loc + "?", row.get("loc_ans"), "neighborhood"),
        )
    return [
        EditRequest(
            case_id=str(row.get("case_id", index)),
            prompt=question.replace(subject, "{}", 1),
            subject=subject,
            target_new=_target(row.get("alt"), "alt"),
            # a few zsRE alternatives equal the answer: then there is no true target to beat
            target_true=answers[0] if answers and answers[0] != row.get("alt") else None,
            paraphrases=tuple(_strings(row.get("rephrase"), "rephrase")),
            neighborhood=neighborhood,
            meta={"format": "zsre", "answers": answers},
        )
    ]


def _from_mquake(row: Mapping[str, Any], index: int) -> list[EditRequest]:
    """One request per rewrite; the multi-hop questions go with the case's last rewrite.

    They hold only once every rewrite of the case is applied, which ``meta["needs"]`` lists.
    """
    rewrites = row["requested_rewrite"]
    case = str(row.get("case_id", index))
    ids = [case if len(rewrites) == 1 else f"{case}.{k}" for k in range(len(rewrites))]
    questions = _strings(row.get("questions"), "questions")
    new_answer = row.get("new_answer")
    requests = []
    for k, rewrite in enumerate(rewrites):
        if not isinstance(rewrite, Mapping):
            raise DataError("'requested_rewrite' entries must be objects")
        last = k == len(rewrites) - 1
        probes = (
            tuple(Probe(q, new_answer, "compositional") for q in questions)
            if last and new_answer
            else ()
        )
        requests.append(
            EditRequest(
                case_id=ids[k],
                prompt=rewrite.get("prompt"),
                subject=rewrite.get("subject"),
                target_new=_target(rewrite.get("target_new"), "target_new"),
                target_true=_target(rewrite.get("target_true"), "target_true"),
                paraphrases=tuple(_strings(rewrite.get("question"), "question")),
                probes=probes,
                meta={
                    "format": "mquake",
                    "case": case,
                    "relation": rewrite.get("relation_id"),
                    "needs": ids if last else [ids[k]],
                    "new_answer_alias": _strings(row.get("new_answer_alias"), "new_answer_alias"),
                },
            )
        )
    return requests


def _requests_from_row(row: Any, index: int) -> list[EditRequest]:
    if not isinstance(row, Mapping):
        raise DataError(f"expected an object, got {type(row).__name__}")
    if "requested_rewrite" in row:
        return _from_counterfact(row, index)
    if "src" in row and "alt" in row:
        return _from_zsre(row, index)
    if "prompt" in row or "target_new" in row:
        return _from_excise(row, index)
    raise DataError(
        "unknown record: expected excise fields (prompt, subject, target_new), "
        f"CounterFact (requested_rewrite) or zsRE (src, alt); got fields {sorted(row)}"
    )


def _rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(place for error messages, raw record) for every record of the file."""
    text = read_text(path)
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{error.lineno}: invalid JSON ({error.msg})") from None
        except (ValueError, RecursionError) as error:
            raise DataError(f"{path}: invalid JSON ({json_problem(error)})") from None
        if isinstance(data, Mapping):
            data = data.get("requests", data.get("data"))
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of requests")
        for index, row in enumerate(data):
            yield f"{path}: record {index}", row
        return
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as error:
            raise DataError(f"{path}:{number}: invalid JSON ({json_problem(error)})") from None
        if (bad := not_text(row)) is not None:
            raise DataError(f"{path}:{number}: {bad[:30]!r} is not valid text (a lone surrogate)")
        yield f"{path}:{number}", row


def load_requests(path: str | Path) -> list[EditRequest]:
    """Read edit requests from a ``.jsonl`` or ``.json`` file (formats: see the module doc)."""
    path = Path(path)
    if path.suffix not in (".jsonl", ".json"):
        raise DataError(f"{path}: edit requests must be a .jsonl or .json file")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    requests: list[EditRequest] = []
    seen: dict[str, str] = {}
    index = 0  # position among the records that are not a header: the default case_id
    for where, row in _rows(path):
        if isinstance(row, Mapping) and set(row) == {"meta"}:  # a header (counterfact-mini's)
            continue
        try:
            batch = _requests_from_row(row, index)
        except DataError as error:
            raise DataError(f"{where}: {error}") from None
        for request in batch:
            if request.case_id in seen:
                raise DataError(
                    f"{where}: case_id {request.case_id!r} repeats {seen[request.case_id]}"
                )
            seen[request.case_id] = where
            requests.append(request)
        index += 1
    if not requests:
        raise DataError(f"{path}: no edit requests in the file")
    return requests


def builtin_requests(name: str = "counterfact-mini") -> list[EditRequest]:
    """A request set shipped with excise (no model needed to load it)."""
    if name not in BUILTIN:
        raise ConfigError(f"unknown request set {name!r}; built-in: {', '.join(BUILTIN)}")
    return load_requests(BUILTIN[name])
