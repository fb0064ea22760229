"""excise: remove, bound and edit what a language model knows, and audit that the change holds."""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = [
    "edit",
    "erase",
    "evaluate",
    "load_model",
    "load_task",
    "save_model",
    "unlearn",
    "ExciseError",
]

from excise.errors import ExciseError

if TYPE_CHECKING:
    from excise.data.tasks import load_task
    from excise.editing import edit
    from excise.erasure import erase
    from excise.metrics import evaluate
    from excise.models import load_model, save_model
    from excise.pipeline import unlearn


def __getattr__(name: str):
    # lazy, so `excise --help` and error paths do not pay for importing torch and transformers
    if name in ("load_model", "save_model"):
        from excise import models

        return getattr(models, name)
    if name == "load_task":
        from excise.data.tasks import load_task

        return load_task
    if name == "evaluate":
        from excise.metrics import evaluate

        return evaluate
    if name == "unlearn":
        from excise.pipeline import unlearn

        return unlearn
    if name == "edit":
        from excise.editing import edit

        return edit
    if name == "erase":
        from excise.erasure import erase

        return erase
    raise AttributeError(name)
