"""``excise verify OUT``: recompute the sha256 of every file an output folder's manifest lists
(:func:`excise.verify.verify`); exit 0 when all match, else list what changed and exit 2."""

from __future__ import annotations

import argparse
from pathlib import Path

from excise.errors import ExciseError
from excise.verify import verify

SHOWN = 10  # files named per kind in the one-line error; all are printed above it


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "verify", help="recompute an output folder's sha256 hashes against its manifest.json"
    )
    parser.add_argument(
        "out", help="an output folder excise wrote (unlearn, run, audit, edit, erase, ...)"
    )
    parser.set_defaults(handler=run_verify)


def _names(kind: str, names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN]) + (
        f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    )
    return f"{len(names)} {kind} ({shown})"


def run_verify(args: argparse.Namespace) -> int:
    result = verify(args.out)
    kinds = (("changed", result.changed), ("missing", result.missing), ("extra", result.extra))
    for kind, names in kinds:
        for name in names:
            print(f"{kind:<8} {name}")
    if not result.ok:
        parts = [_names(kind, names) for kind, names in kinds if names]
        raise ExciseError(
            f"{args.out} does not match its manifest: {'; '.join(parts)}; "
            "do not trust this output: write it again or restore it from a copy"
        )
    print(f"ok: {result.checked} files match {Path(args.out) / 'manifest.json'}")
    return 0
