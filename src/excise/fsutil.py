"""Outputs appear whole or not at all: write into a temporary sibling folder, then rename."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from excise.errors import ExciseError


def check_output(out: Path, *, overwrite: bool) -> None:
    """Refuse an existing output folder unless ``overwrite``; call it before long work too."""
    if out.exists() and not overwrite:
        raise ExciseError(f"output folder {out} exists; pass --overwrite to replace it")


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``out``; on success it replaces ``out`` in one rename.

    On any error the temporary folder is removed and ``out`` is left as it was.
    """
    out = Path(out)
    check_output(out, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path) -> None:
    """``manifest.json``: sha256 of every file below ``folder``."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json")
    manifest = {str(p.relative_to(folder)): sha256_file(p) for p in files}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
