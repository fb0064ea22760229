"""The benchmarks' own metrics (TOFU, MUSE, WMDP) and the use cases' (toxicity, bias), found from
a task's ``metadata["benchmark"]``. Each module has ``metrics(model, tokenizer, task, reference)``
with the published definitions and ``reference(model, tokenizer, task)``: the statistics of a
model never trained on the forget set (TOFU's retain model, MUSE's retrain model) that forget
quality and PrivLeak are relative to; optionally ``behaviour(model, tokenizer, task, items)``
(the task's behaviour measured on a subset of its forget items, for the relearn attack's
checkpoints)."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

MODULES = {
    "tofu": "excise.metrics.benchmarks.tofu",
    "muse": "excise.metrics.benchmarks.muse",
    "wmdp": "excise.metrics.benchmarks.wmdp",
    "toxicity": "excise.metrics.usecases",
    "bias": "excise.metrics.usecases",
}


def _module(task) -> ModuleType | None:
    benchmark = task.metadata.get("benchmark")
    if benchmark is None or task.benchmark is None:
        return None
    return importlib.import_module(MODULES[benchmark])


def benchmark_reference(model, tokenizer, task) -> dict[str, Any] | None:
    """The gold model's statistics for ``task`` (None for tasks that are no benchmark)."""
    module = _module(task)
    return None if module is None else module.reference(model, tokenizer, task)


def benchmark_metrics(
    model, tokenizer, task, reference: dict[str, Any] | None = None
) -> dict[str, float]:
    """The benchmark's own metrics for ``task`` ({} for tasks that are no benchmark)."""
    module = _module(task)
    return {} if module is None else module.metrics(model, tokenizer, task, reference)


def has_behaviour(task) -> bool:
    """Whether ``task`` has a behaviour measure of its own (:func:`behaviour_scores` not {})."""
    return getattr(_module(task), "behaviour", None) is not None


def behaviour_scores(model, tokenizer, task, items: list) -> dict[str, float]:
    """The task's own behaviour measures on ``items`` (a subset of its forget items), or {}."""
    own = getattr(_module(task), "behaviour", None)
    return {} if own is None else own(model, tokenizer, task, items)
