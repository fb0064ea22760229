"""Reading the user's files safely: UTF-8 text with the line of a bad byte, why a JSON text was
refused, text that no tokenizer takes, and folders written by ``datasets.save_to_disk``. Every
failure is a one-line :class:`~excise.errors.DataError`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from excise.errors import DataError


def json_problem(error: ValueError | RecursionError) -> str:
    """Why ``json.loads`` refused a text: bad syntax, and two ways valid syntax breaks it."""
    if isinstance(error, json.JSONDecodeError):
        return error.msg
    if isinstance(error, RecursionError):
        return "nested too deeply"
    return "an integer too long to read"  # more digits than int() converts (4300 by default)


def not_text(value: Any) -> str | None:
    """A string in ``value`` (a row, however nested) that is no valid text, or None: JSON's
    ``\\ud800`` escapes can spell half of a UTF-16 pair, which no tokenizer takes."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return item
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return None


def read_text(path: Path) -> str:
    """The file as UTF-8 text, or a DataError naming the line of the first bad byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[error.start]:02x}); "
            "re-save the file as UTF-8"
        ) from None


def load_saved(path: Path) -> list[Any]:
    """The rows of a folder written by ``datasets.save_to_disk`` (its first split, or ``train``)."""
    import datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except Exception as error:  # missing or damaged state/info files raise several types
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(
            f"{path}: not a folder written by datasets.save_to_disk ({first})"
        ) from None
    if isinstance(dataset, datasets.DatasetDict):
        if not dataset:
            raise DataError(f"{path}: the saved dataset has no split")
        dataset = dataset["train"] if "train" in dataset else next(iter(dataset.values()))
    return list(dataset)
