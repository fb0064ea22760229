"""Records and loaders: question/answer pairs, plain text, multiple choice.

Files: ``.jsonl``, ``.json`` (a list), ``.csv``, ``.parquet``, a folder saved by
``datasets.save_to_disk``, or a Hugging Face dataset id. The record kind is read from its fields:
``prompt``+``completion`` (QA), ``text`` (Text), ``question``+``choices``+``answer`` (MC);
``prompt``+``chosen``+``rejected`` is a preference pair (a QA, see :mod:`excise.data.preference`).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from excise.data.files import json_problem, load_saved, not_text, read_text
from excise.errors import DataError


@dataclass(frozen=True)
class QA:
    """A prompt and the completion the model should (or should no longer) produce."""

    prompt: str
    completion: str
    paraphrases: tuple[str, ...] = ()  # other prompts with the same completion
    perturbed: tuple[str, ...] = ()  # wrong completions of the same type (truth ratio)
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Text:
    text: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class MC:
    question: str
    choices: tuple[str, ...]
    answer: int
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


Record = QA | Text | MC


def _strings(value: Any, where: str, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        # csv cells hold lists as JSON or as "|"-separated text
        if value.startswith("["):
            try:
                value = json.loads(value)
            except (ValueError, RecursionError):
                raise DataError(f"{where}: '{name}' is not a valid JSON list") from None
        else:
            value = [v for v in value.split("|") if v]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{where}: '{name}' must be a list of strings")
    return tuple(value)


def to_record(row: dict[str, Any], where: str) -> Record:
    """Validate one raw row and turn it into a record; ``where`` names it in error messages."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object with fields, got {type(row).__name__}")
    bad = not_text(row)
    if bad is not None:
        raise DataError(
            f"{where}: {bad[:30]!r} is not valid text (a lone UTF-16 surrogate, as a \\ud800 "
            "escape writes it); fix the escape in the file"
        )
    known = {
        "prompt",
        "completion",
        "paraphrases",
        "perturbed",
        "text",
        "question",
        "choices",
        "answer",
    }
    if is_pair_row(row):
        return pair_record(row, where)
    meta = {k: v for k, v in row.items() if k not in known}
    if "prompt" in row or "completion" in row:
        prompt, completion = row.get("prompt"), row.get("completion")
        if not isinstance(prompt, str) or not isinstance(completion, str) or not completion.strip():
            raise DataError(f"{where}: 'prompt' and 'completion' must both be non-empty strings")
        return QA(
            prompt,
            completion,
            _strings(row.get("paraphrases"), where, "paraphrases"),
            _strings(row.get("perturbed"), where, "perturbed"),
            meta,
        )
    if "text" in row:
        if not isinstance(row["text"], str) or not row["text"].strip():
            raise DataError(f"{where}: 'text' must be a non-empty string")
        return Text(row["text"], meta)
    if "question" in row:
        choices = _strings(row.get("choices"), where, "choices")
        answer = row.get("answer")
        if isinstance(answer, str) and answer.isdecimal() and len(answer) < 100:
            answer = int(answer)  # (longer: more digits than int() may convert; no index anyway)
        if not isinstance(row["question"], str):
            raise DataError(f"{where}: 'question' must be a string")
        index = isinstance(answer, int) and not isinstance(answer, bool)
        if len(choices) < 2 or not index or not 0 <= answer < len(choices):
            raise DataError(f"{where}: needs >= 2 'choices' and an 'answer' index into them")
        return MC(row["question"], choices, answer, meta)
    fields = ", ".join(sorted(repr(str(key))[1:-1] for key in row)) or "none"  # one line
    raise DataError(
        f"{where}: unknown record with fields {fields}; "
        "give fields prompt+completion, text, or question+choices+answer"
    )


def _kind(path: Path, source: str) -> str:
    """``"file"``, ``"dir"`` or ``""`` (neither); a path the system cannot look up (a name
    longer than the file system allows) is a DataError, not an OSError."""
    try:
        return "file" if path.is_file() else "dir" if path.is_dir() else ""
    except OSError as error:
        raise DataError(
            f"cannot read {source[:80]!r}: {error.strerror or error}; give an existing .jsonl, "
            ".json, .csv or .parquet file"
        ) from None


def _read_rows(source: str) -> list[tuple[str, dict[str, Any]]]:
    path = Path(source).expanduser()
    kind = _kind(path, source)
    if kind == "file":
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            rows = []
            for number, line in enumerate(read_text(path).split("\n"), 1):
                if not line.strip():
                    continue
                try:
                    rows.append((f"{path}:{number}", json.loads(line)))
                except (ValueError, RecursionError) as error:
                    raise DataError(
                        f"{path}:{number}: not valid JSON ({json_problem(error)}); "
                        "each line must be one JSON object"
                    ) from None
            return rows
        if suffix == ".json":
            try:
                data = json.loads(read_text(path))
            except (ValueError, RecursionError) as error:
                line = f":{error.lineno}" if isinstance(error, json.JSONDecodeError) else ""
                raise DataError(
                    f"{path}{line}: not valid JSON ({json_problem(error)}); fix the file"
                ) from None
            if not isinstance(data, list):
                raise DataError(f"{path}: expected a JSON list of records, [{{...}}, ...]")
            return [(f"{path}[{i}]", row) for i, row in enumerate(data)]
        if suffix == ".csv":
            try:
                reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
                return [(f"{path}:{i + 2}", dict(row)) for i, row in enumerate(reader)]
            except csv.Error as error:
                raise DataError(
                    f"{path}: not a readable CSV file ({error}); fix the file"
                ) from None
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(path).to_pylist()
            except Exception as error:  # pyarrow raises several error types for a bad file
                first = str(error).strip().splitlines()[0] if str(error).strip() else "unreadable"
                raise DataError(f"{path}: not a readable parquet file ({first})") from None
            return [(f"{path}[{i}]", row) for i, row in enumerate(table)]
        raise DataError(
            f"{path}: unsupported file type {suffix!r}; use .jsonl, .json, .csv or .parquet"
        )
    if kind == "dir":
        return [(f"{path}[{i}]", row) for i, row in enumerate(load_saved(path))]
    if source.count("/") == 1 and not source.startswith((".", "/", "~")):
        import datasets

        try:
            dataset = datasets.load_dataset(source, split="train")
        except Exception as error:  # hub errors have many types
            raise DataError(
                f"cannot load dataset {source!r}: {str(error).splitlines()[0]}"
            ) from error
        return [(f"{source}[{i}]", row) for i, row in enumerate(dataset)]
    raise DataError(
        f"data file not found: {source}; give an existing .jsonl, .json, .csv or .parquet file"
    )


def load_records(source: str, *, name: str = "data") -> list[Record]:
    """Read every record from ``source``; an empty set is an error."""
    records = [to_record(row, where) for where, row in _read_rows(source)]
    if not records:
        raise DataError(f"the {name} set {source} is empty; add at least one record")
    return records


CHOSEN = "chosen"  # the meta key of a pair's preferred continuation


PAIR_FIELDS = ("prompt", "chosen", "rejected")


def is_pair_row(row: dict[str, Any]) -> bool:
    """A row meant as a preference pair: it has ``rejected``, or ``chosen`` without ``completion``."""
    return "rejected" in row or ("chosen" in row and "completion" not in row)


def pair_record(row: dict[str, Any], where: str) -> QA:
    """Validate one pair row and turn it into a QA record (completion = rejected)."""
    if "completion" in row:
        raise DataError(
            f"{where}: a preference pair has 'chosen' and 'rejected' instead of 'completion'; "
            "drop 'completion' (or 'rejected' if this is a plain question/answer record)"
        )
    missing = [name for name in PAIR_FIELDS if name not in row]
    if missing:
        raise DataError(
            f"{where}: a preference pair needs the fields prompt, chosen and rejected; "
            f"missing {', '.join(missing)}"
        )
    prompt, chosen, rejected = (row[name] for name in PAIR_FIELDS)
    for name, value in zip(PAIR_FIELDS, (prompt, chosen, rejected), strict=True):
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{where}: '{name}' must be a non-empty string")
    if chosen.strip() == rejected.strip():
        raise DataError(f"{where}: 'chosen' and 'rejected' are the same text; a pair must differ")
    meta = {k: v for k, v in row.items() if k not in PAIR_FIELDS}
    return QA(prompt, rejected, meta={**meta, CHOSEN: chosen})


def chosen_of(record: QA) -> str | None:
    """The preferred continuation of a pair record, or None for a plain QA record."""
    value = record.meta.get(CHOSEN)
    return value if isinstance(value, str) and value.strip() else None
