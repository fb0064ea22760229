"""excise: remove, bound and edit what a language model knows, and audit that the change holds.

``unlearn``, ``audit``, ``edit`` and ``erase`` run a whole job and return its model and report
(:mod:`excise.api`); ``load_model``, ``load_task``, ``evaluate`` and ``save_model`` are the
building blocks. The algorithms on a model in memory stay in their modules:
:func:`excise.jobs.training.unlearn`, :func:`excise.editing.edit`, :func:`excise.erasure.erase`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__all__ = [
    "audit",
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
    from excise.api import audit, edit, erase, unlearn
    from excise.data.tasks import load_task
    from excise.metrics import evaluate
    from excise.models import load_model, save_model

LAZY = {
    "audit": "excise.api",
    "edit": "excise.api",
    "erase": "excise.api",
    "unlearn": "excise.api",
    "evaluate": "excise.metrics",
    "load_model": "excise.models",
    "save_model": "excise.models",
    "load_task": "excise.data.tasks",
}


def __getattr__(name: str):
    # lazy, so `excise --help` and error paths do not pay for importing torch and transformers
    if name not in LAZY:
        raise AttributeError(name)
    return getattr(importlib.import_module(LAZY[name]), name)
