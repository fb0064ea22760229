"""Preference pairs: a prompt, a ``chosen`` and a ``rejected`` continuation (for ``dpo``).

A pair file is any records file (``.jsonl``, ``.json``, ``.csv``, ...) whose rows have the fields
``prompt``, ``chosen`` and ``rejected`` (other fields are kept as metadata). A pair becomes an
ordinary :class:`~excise.data.records.QA` record whose ``completion`` is the *rejected* answer (the
behaviour to remove: what the forget set's metrics score) and whose ``meta["chosen"]`` holds the
preferred one, so every part of excise that reads forget sets (encoding, metrics, audits) reads
pair files unchanged, and ``dpo`` finds the preferred answer beside each forget item.
``builtin:preference`` names the pairs shipped in ``data/builtin/preference/pairs.jsonl``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from excise.data.records import QA, load_records
from excise.errors import DataError

CHOSEN = "chosen"  # the meta key of a pair's preferred continuation
PAIR_FIELDS = ("prompt", "chosen", "rejected")
BUILTIN_PAIRS = {"preference": Path(__file__).parent / "builtin" / "preference" / "pairs.jsonl"}


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


def resolve(source: str) -> str:
    """``builtin:preference`` -> the shipped pair file; any other source unchanged."""
    if not source.startswith("builtin:"):
        return source
    name = source.removeprefix("builtin:")
    if name not in BUILTIN_PAIRS:
        raise DataError(
            f"no built-in pair set {source!r}; known: "
            + ", ".join(f"builtin:{n}" for n in sorted(BUILTIN_PAIRS))
        )
    return str(BUILTIN_PAIRS[name])


def load_pairs(source: str) -> list[QA]:
    """Every record of ``source``, each of which must be a preference pair."""
    records = load_records(resolve(source), name="preference")
    plain = [i for i, r in enumerate(records) if not (isinstance(r, QA) and chosen_of(r))]
    if plain:
        raise DataError(
            f"{source}: record {plain[0] + 1} is not a preference pair; every row needs "
            "prompt, chosen and rejected"
        )
    return records
