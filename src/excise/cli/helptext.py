"""Help texts several commands share, and the argparse classes that show every option's default.

Imports stay light: ``excise --help`` must not pay for torch.
"""

from __future__ import annotations

import argparse

OVERWRITE = (
    "replace an output folder that excise wrote earlier (its manifest lists every file) or an "
    "empty one; anything else is refused"
)
DTYPE = (
    "dtype to load the weights in (a changed model is saved in it too): float32 (exact), "
    "bfloat16 or float16 (half the memory; for GPUs)"
)
TEMPLATE = (
    "prompt format: raw (plain text) or chat (the tokenizer's chat template); auto: raw for a "
    "--task, chat for your own files when the tokenizer has a chat template"
)


def out_help(contents: str) -> str:
    """``--out``: a folder written whole or not at all, holding ``contents``."""
    return f"output folder to create, written whole or not at all: {contents}"


class HelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help when it has a default worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or not action.option_strings
            or default is None
            or default is False
            or default is argparse.SUPPRESS
        ):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose help shows defaults; sub-command parsers inherit it."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
