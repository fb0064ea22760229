"""Benchmark tasks: TOFU, MUSE and WMDP, read from a local folder or the hub.

A benchmark task is named ``benchmark:split`` (``tofu:forget10``, ``muse:news``, ``wmdp:bio``)
and loads into an ordinary :class:`excise.data.tasks.Task` (training sets, QA evaluation sets)
whose ``benchmark`` field holds the benchmark's own evaluation sets. Each module (one per
benchmark) has ``SPLITS``, ``load(split, data_dir)``, ``metrics(model, tokenizer, task,
reference)`` with the benchmark's published definitions, and ``reference(model, tokenizer,
task)``: the statistics of a model never trained on the forget set (TOFU's retain model, MUSE's
retrain model) that forget quality and PrivLeak are relative to. Two optional hooks let a task
carry what shared mechanisms would otherwise have to special-case: ``contrast(task)`` (its own
erasure contrast set, for ``excise erase --task``) and ``behaviour(model, tokenizer, task, items)``
(its behaviour measured on a subset of its forget items, for the relearn attack's checkpoints).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from excise.errors import ExciseError

MODULES = {
    "tofu": "excise.data.benchmarks.tofu",
    "muse": "excise.data.benchmarks.muse",
    "wmdp": "excise.data.benchmarks.wmdp",
    # built-in use cases with their own metrics (no ``name:split`` form)
    "toxicity": "excise.usecases",
    "bias": "excise.usecases",
}
BENCHMARK_TASKS = (
    "tofu:forget01",
    "tofu:forget05",
    "tofu:forget10",
    "muse:news",
    "muse:books",
    "wmdp:bio",
    "wmdp:cyber",
    "wmdp:chem",
)


def check_name(name: str) -> tuple[ModuleType, str]:
    """The benchmark module and split of ``name``, or an error listing the known tasks."""
    benchmark, _, split = name.partition(":")
    if benchmark not in MODULES:
        raise ExciseError(
            f"unknown benchmark {benchmark!r} in task {name!r}; benchmarks: "
            f"{', '.join(BENCHMARK_TASKS)}"
        )
    module = importlib.import_module(MODULES[benchmark])
    if split not in module.SPLITS:
        known = ", ".join(f"{benchmark}:{s}" for s in module.SPLITS)
        raise ExciseError(f"unknown split {split!r} in task {name!r}; {benchmark} has {known}")
    return module, split


def load_benchmark(name: str, data_dir: str | None = None, template: str = "raw"):
    """The task ``name`` from ``data_dir`` (the benchmark's files), or from the hub without it;
    ``template`` is the prompt format (TOFU asks chat models the bare question)."""
    module, split = check_name(name)
    return module.load(split, data_dir, template)


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


def benchmark_contrast(task) -> tuple[list[str], list[str]] | None:
    """The task's own (positive, negative) erasure contrast set, or None (then erase contrasts
    the forget and retain prompts)."""
    own = getattr(_module(task), "contrast", None)
    return None if own is None else own(task)


def behaviour_scores(model, tokenizer, task, items: list) -> dict[str, float]:
    """The task's own behaviour measures on ``items`` (a subset of its forget items), or {}."""
    own = getattr(_module(task), "behaviour", None)
    return {} if own is None else own(model, tokenizer, task, items)
