"""Preference pairs: a prompt, a ``chosen`` and a ``rejected`` continuation (for ``dpo``).

A pair file is any records file (``.jsonl``, ``.json``, ``.csv``, ...) whose rows have the fields
``prompt``, ``chosen`` and ``rejected`` (other fields are kept as metadata). A pair becomes an
ordinary :class:`~excise.data.records.QA` record whose ``completion`` is the *rejected* answer (the
behaviour to remove: what the forget set's metrics score) and whose ``meta["chosen"]`` holds the
preferred one, so every part of excise that reads forget sets (encoding, metrics, audits) reads
pair files unchanged, and ``dpo`` finds the preferred answer beside each forget item.
``builtin:preference`` names the pairs shipped in ``data/builtin/preference/pairs.jsonl``.
(The pair rows themselves are read by :mod:`excise.data.records`: ``is_pair_row``,
``pair_record``, ``chosen_of``.)
"""

from __future__ import annotations

from pathlib import Path

from excise.data.records import (
    QA,
    chosen_of,
    load_records,
)
from excise.errors import DataError

BUILTIN_PAIRS = {"preference": Path(__file__).parent / "builtin" / "preference" / "pairs.jsonl"}


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
