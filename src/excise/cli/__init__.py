"""The ``excise`` command. It only parses: each command's module turns its options into a job
(:mod:`excise.jobs`), runs it and prints the result. User errors end in one line on stderr and
exit code 2. Imports stay light: a command loads torch and transformers only when it runs."""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import sys
from pathlib import Path

from excise import progress
from excise.cli import audit, bypass, edit, erase, listing, unlearn, verify
from excise.cli.helptext import Parser
from excise.errors import ConfigError, ExciseError


def _version() -> str:
    """The installed distribution's version ("unknown" when excise runs from a source tree that
    was never installed)."""
    try:
        return importlib.metadata.version("excise")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _describe(commands: argparse._SubParsersAction) -> None:
    """Each command's ``--help`` opens with the line ``excise --help`` shows for it."""
    for action in commands._choices_actions:
        command = commands.choices[action.dest]
        command.description = command.description or action.help


def parser() -> argparse.ArgumentParser:
    root = Parser(
        prog="excise",
        description="Remove, bound and edit what a language model knows; audit that it holds.",
    )
    root.add_argument("--version", action="version", version=f"excise {_version()}")
    root.add_argument("-v", "--verbose", action="store_true", help="log each stage's progress")
    commands = root.add_subparsers(dest="command", required=True)
    unlearn.add_parsers(commands)  # demo, unlearn
    audit.add_parsers(commands)  # audit, evaluate
    verify.add_parser(commands)
    edit.add_parsers(commands)  # edit, apply-delta, revert-delta, stats
    erase.add_parser(commands)
    bypass.add_parser(commands)
    unlearn.add_run_parser(commands)
    listing.add_parsers(commands)  # methods, attacks, tasks
    _describe(commands)
    return root


def interrupted(interrupt: KeyboardInterrupt, out: str | None) -> str:
    """What an interrupted run left, naming only a checkpoint that is on disk."""
    from excise.train import latest_checkpoint  # lazy: the training package imports torch

    folder = getattr(interrupt, "checkpoint", None)
    if folder is None and out:
        folder = Path(f"{out}.ckpt")
    saved = latest_checkpoint(folder) if folder is not None and folder.is_dir() else None
    step = getattr(interrupt, "step", None)
    where = f"interrupted after step {step}" if step is not None else "interrupted"
    if saved is None:
        return f"{where}; no checkpoint was saved and nothing was written"
    return f"{where}; checkpoint saved in {saved}; run the same command with --resume to continue"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s"
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # bars on a terminal, plain lines in a log, none with --quiet (excise.progress)
    progress.configure(quiet=getattr(args, "quiet", False))
    try:
        if getattr(args, "out", None) is not None and not str(args.out).strip():
            raise ConfigError("--out is empty; give the folder to write")
        return args.handler(args)
    except ExciseError as error:
        one_line = " ".join(str(error).replace("\r", "\n").splitlines())
        print(f"excise: error: {one_line}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `excise methods | head`: the reader left; nothing to report
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush stays quiet
        return 0
    except OSError as error:
        if error.filename is None:  # not about a path the user gave: a real fault, shown whole
            raise
        name = str(error.filename)
        shown = name if len(name) <= 80 else name[:40] + "..." + name[-20:]
        print(f"excise: error: {error.strerror or error}: {shown}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        print(f"excise: {interrupted(interrupt, getattr(args, 'out', None))}", file=sys.stderr)
        return 130
