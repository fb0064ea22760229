"""Recompute the sha256 of every file an output folder's manifest lists (``excise verify OUT``).

Every output of ``unlearn``, ``run``, ``audit``, ``edit`` and ``erase`` ends with
``manifest.json`` (see :func:`excise.fsutil.write_manifest`). Verification passes when each
listed file exists with the same hash and no file was added; otherwise :func:`verify` lists the
changed, missing and extra files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from excise.errors import ExciseError
from excise.fsutil import files_below, sha256_file


@dataclass
class Verification:
    checked: int = 0
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.changed or self.missing or self.extra)


def verify(folder: str | Path) -> Verification:
    """Compare ``folder`` with its ``manifest.json``; a folder without one is an error."""
    folder = Path(folder)
    try:
        found = folder.is_dir()
    except OSError as error:  # a name longer than the file system allows, ...
        raise ExciseError(f"cannot read {str(folder)[:80]!r}: {error.strerror}") from None
    if not found:
        raise ExciseError(f"{folder} is not a folder; give an output folder of excise")
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise ExciseError(
            f"{folder} has no manifest.json, so it is not a complete excise output; verify "
            "folders written by excise unlearn, run or audit"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ExciseError(f"{manifest_path} is not valid JSON ({error}); it was damaged") from None
    if not isinstance(manifest, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in manifest.items()
    ):
        raise ExciseError(f"{manifest_path} is not a mapping of file -> sha256; it was damaged")
    result = Verification()
    root = folder.resolve()
    for name, expected in sorted(manifest.items()):
        path = folder / name
        if not path.resolve().is_relative_to(root):  # a damaged manifest must not read elsewhere
            raise ExciseError(f"{manifest_path} names {name!r}, outside {folder}; it was damaged")
        if not path.is_file():
            result.missing.append(name)
            continue
        result.checked += 1
        if sha256_file(path) != expected:
            result.changed.append(name)
    result.extra = sorted(files_below(folder) - set(manifest) - {"manifest.json"})
    return result
