"""Reading a benchmark's files: a local folder (``--data-dir``) first, else its hub dataset.

A local folder holds one file per split, named as the upstream repository names it
(``forget10_perturbed.json``); JSON arrays, JSON lines (TOFU's ``.json`` files are JSON lines),
``.jsonl`` and ``.parquet`` are read, and so is a sub-folder written by
``datasets.save_to_disk``. Without a folder the split is read from the hub with
``datasets.load_dataset(hub_id, config, split=...)``: it works only where the hub (or the local
``datasets`` cache) is reachable, and fails with a message naming the files to put in a folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from excise.data.files import json_problem, load_saved, read_text
from excise.errors import DataError

SUFFIXES = (".json", ".jsonl", ".parquet")


def _read_file(path: Path) -> list[Any]:

    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as error:  # pyarrow raises several error types for a bad file
            first = str(error).strip().splitlines()[0] if str(error).strip() else "unreadable"
            raise DataError(f"{path}: not a readable parquet file ({first})") from None
    text = read_text(path)
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as error:
            raise DataError(
                f"{path}: not valid JSON ({json_problem(error)}); fix the file"
            ) from None
        return list(data)
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except (ValueError, RecursionError) as error:
                raise DataError(
                    f"{path}:{number}: not valid JSON ({json_problem(error)})"
                ) from None
    return rows


def find_local(data_dir: str | Path, names: tuple[str, ...]) -> Path | None:
    """The first of ``names`` (with any known suffix, or as a saved-dataset folder) in the folder."""
    folder = Path(data_dir).expanduser()
    for name in names:
        for suffix in SUFFIXES:
            if (folder / f"{name}{suffix}").is_file():
                return folder / f"{name}{suffix}"
        if (folder / name).is_dir() and (folder / name / "dataset_info.json").is_file():
            return folder / name
    return None


def read_rows(
    data_dir: str | Path | None,
    names: tuple[str, ...],
    *,
    hub_id: str,
    config: str | None,
    split: str,
    required: bool = True,
) -> list[Any]:
    """Rows of one split: from ``data_dir`` (the first file of ``names`` found) or the hub."""
    if data_dir is not None:
        folder = Path(data_dir).expanduser()
        try:
            found = folder.is_dir()
        except OSError as error:  # a name longer than the file system allows, ...
            raise DataError(f"--data-dir {str(folder)[:80]!r}: {error.strerror}") from None
        if not found:
            raise DataError(f"--data-dir {folder} is not a folder")
        path = find_local(folder, names)
        if path is None:
            if not required:
                return []
            raise DataError(
                f"{folder} has no {names[0]}.json (or .jsonl/.parquet); download it from "
                f"the {hub_id} dataset and put it there"
            )
        if path.is_dir():
            return load_saved(path)
        rows = _read_file(path)
        if required and not rows:
            raise DataError(f"{path} is empty")
        return rows
    import datasets

    try:
        return list(datasets.load_dataset(hub_id, config, split=split))
    except Exception as error:  # hub, network and cache errors have many types
        if not required:
            return []
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(
            f"cannot load {hub_id} ({config}, {split}): {first}; without network, download "
            f"{names[0]}.json into a folder and pass --data-dir FOLDER"
        ) from error


def field(row: Any, name: str, where: str) -> Any:
    if not isinstance(row, dict) or name not in row:
        raise DataError(f"{where}: each record needs a {name!r} field")
    return row[name]


def text_of(row: Any, where: str) -> str:
    """A text record: a plain string (MUSE's JSON lists) or a row with a ``text`` field."""
    text = row if isinstance(row, str) else field(row, "text", where)
    if not isinstance(text, str):
        raise DataError(f"{where}: 'text' must be a string")
    return text


def chunk_words(text: str, size: int) -> list[str]:
    """``text`` cut into pieces of at most ``size`` words (whitespace kept inside a piece)."""
    words = text.split()
    return [" ".join(words[i : i + size]) for i in range(0, len(words), size)]
