"""Outputs appear whole or not at all, and never at the cost of a file excise did not write.

- :func:`check_output` runs before any long work: it refuses an output that is, holds or lies
  inside an input, an existing output without ``overwrite``, one that excise did not write (with
  ``overwrite``), and a place that cannot be written.
- :func:`atomic_dir` writes into a temporary sibling folder and renames it over ``out`` when
  complete; the folder gets the user's umask, not ``mkdtemp``'s 0700.
- An output folder is excise's when its ``manifest.json`` (:func:`write_manifest`) lists every
  file in it: a file the user added later makes it theirs again.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from excise.errors import ExciseError

CHECKPOINT_STEP = "step-"  # train.py's checkpoint folders: OUT.ckpt/step-N (and .step-N.tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def files_below(folder: Path) -> set[str]:
    """Every file (and link) below ``folder``, as paths relative to it."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def not_excise_output(path: Path) -> str | None:
    """Why ``path`` is not something excise wrote, or None when it is: an empty folder, a folder
    whose manifest lists every file in it, or a safetensors file excise marked (``written_by``)."""
    if not path.is_dir():
        if path.suffix == ".safetensors" and "written_by" in safetensors_metadata(path):
            return None
        return "it carries no excise metadata"
    if not any(path.iterdir()):
        return None
    try:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict):
        return "it has no excise manifest"
    unlisted = sorted(files_below(path) - set(manifest) - {"manifest.json"})
    if unlisted:
        return f"it holds files its manifest does not list ({', '.join(unlisted[:3])})"
    return None


def safetensors_header(path: Path) -> tuple[int, dict]:
    """(length of the header in bytes, the header) of a safetensors file, read without its
    tensors; ValueError (or OSError) when the file has no valid header."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if size < 8 or not 2 <= length <= size - 8:
            raise ValueError("no valid header")
        header = json.loads(handle.read(length))
    if not isinstance(header, dict):
        raise ValueError("the header is not a mapping")
    return length, header


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's header ({} when it has none or is no such
    file); reads the header only."""
    try:
        meta = safetensors_header(path)[1].get("__metadata__")
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def exists(path: Path) -> bool:
    """``path.exists()``, False where the system cannot even look the name up (too long)."""
    try:
        return path.exists()
    except OSError:
        return False


def _relation(out: Path, given: Path) -> str | None:
    if out == given:
        return "is"
    if given.is_relative_to(out):
        return "contains"
    if out.is_relative_to(given):
        return "lies inside"
    return None


def check_inputs_apart(out: Path, inputs: Mapping[str, str | os.PathLike | None]) -> None:
    """Refuse an output that is, contains or lies inside any input that is a local path."""
    target = out.expanduser().resolve()
    for label, value in inputs.items():
        if value is None or str(value) == "":
            continue
        given = Path(value).expanduser()
        if not exists(given):  # a hub id or a bundled name: nothing on disk to protect
            continue
        relation = _relation(target, given.resolve())
        if relation is not None:
            raise ExciseError(
                f"the output {out} {relation} the input {label} {value}; excise never writes "
                "over its inputs: choose another --out"
            )


def _writable(out: Path) -> None:
    """Try a file in the nearest existing folder of ``out`` (root ignores permission bits, so
    ``os.access`` is not enough)."""
    place = out.expanduser().absolute().parent
    while not place.exists():
        place = place.parent
    if not place.is_dir():
        raise ExciseError(
            f"cannot write {out}: {place} is a file, not a folder; choose another --out"
        )
    try:
        handle, probe = tempfile.mkstemp(prefix=".excise-probe-", dir=place)
    except OSError as error:
        raise ExciseError(
            f"cannot write {out} ({error.strerror or error}); choose a writable --out"
        ) from None
    os.close(handle)
    os.unlink(probe)


def check_output(
    out: str | os.PathLike,
    *,
    overwrite: bool,
    inputs: Mapping[str, str | os.PathLike | None] | None = None,
    kind: str = "folder",
) -> None:
    """Everything about ``out`` that can fail, checked before the long work (and again by
    :func:`atomic_dir` when the result is written)."""
    out = Path(out)
    resolved = out.expanduser().resolve()
    if Path.cwd().resolve().is_relative_to(resolved):
        raise ExciseError(
            f"the output {out} is the current folder or holds it; give a new folder for --out"
        )
    check_inputs_apart(out, inputs or {})
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise ExciseError(f"output {kind} {out} exists; pass --overwrite to replace it")
        if kind == "folder" and not out.is_dir():
            raise ExciseError(
                f"{out} is a file, not an output folder; --overwrite replaces only folders "
                "excise wrote: choose another --out"
            )
        if kind == "file" and not out.is_file():
            raise ExciseError(f"{out} is a folder; --out takes a file here: choose another")
        if out.is_symlink():
            raise ExciseError(f"{out} is a symbolic link; --overwrite does not follow links")
        if why := not_excise_output(out):
            raise ExciseError(
                f"{out} was not written by excise ({why}); --overwrite replaces only what excise "
                f"wrote or an empty folder: choose another --out or remove it yourself"
            )
    _writable(out)


def check_checkpoints(folder: Path) -> None:
    """``OUT.ckpt`` may hold only excise's checkpoints: it is emptied after a finished run."""
    if folder.exists() and (
        not folder.is_dir()
        or any(
            not p.name.startswith((CHECKPOINT_STEP, f".{CHECKPOINT_STEP}"))
            for p in folder.iterdir()
        )
    ):
        raise ExciseError(
            f"{folder} exists and is not an excise checkpoint folder (excise keeps a run's "
            "checkpoints there and removes them when it ends); move it away or choose another --out"
        )


def remove_checkpoints(folder: Path) -> None:
    """Remove the checkpoints of a finished run, and the folder once it is empty."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.is_dir() and entry.name.startswith((CHECKPOINT_STEP, f".{CHECKPOINT_STEP}")):
            shutil.rmtree(entry, ignore_errors=True)
    with contextlib.suppress(OSError):
        folder.rmdir()


def _discard(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


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
        os.chmod(tmp, 0o777 & ~_umask())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists() or out.is_symlink():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        _discard(old)
    else:
        os.replace(tmp, out)


@contextlib.contextmanager
def atomic_file(out: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to the file ``out``; renamed over it when the block ends."""
    out = Path(out)
    check_output(out, overwrite=overwrite, kind="file")
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)


def _disk_full(error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # safetensors reports write errors as its own type, with the OS message inside
    return "No space left on device" in str(error) or "StorageFull" in str(error)


@contextlib.contextmanager
def disk_errors(out: Path) -> Iterator[None]:
    """Turn a full disk or an unwritable folder into one clear error (the caller's temporary
    folder is already gone: use it around :func:`atomic_dir`)."""
    try:
        yield
    except Exception as error:
        if _disk_full(error):
            raise ExciseError(
                f"no space left on the device while writing {out}; nothing was written; "
                "free some space or choose another --out"
            ) from error
        if isinstance(error, OSError) and error.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise ExciseError(
                f"cannot write {out} ({error.strerror}); choose a writable --out"
            ) from error
        raise


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


def check_safetensors(path: Path, what: str) -> None:
    """Refuse a truncated or damaged safetensors file from its header and size alone (fast,
    before any long work): the header must parse and every tensor must lie inside the file."""
    try:
        size = path.stat().st_size
        length, header = safetensors_header(path)
        end = 0
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            start, stop = entry["data_offsets"]
            if not 0 <= start <= stop:
                raise ValueError(f"tensor {name} has bad offsets")
            end = max(end, stop)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ExciseError(
            f"{what} {path} is damaged ({str(error).splitlines()[0][:80]}); replace it with a "
            "complete copy"
        ) from None
    if 8 + length + end > size:
        raise ExciseError(
            f"{what} {path} is truncated ({size} bytes of {8 + length + end}); replace it with a "
            "complete copy"
        )
