"""Benchmark tasks: TOFU, MUSE and WMDP, read from a local folder or the hub.

A benchmark task is named ``benchmark:split`` (``tofu:forget10``, ``muse:news``, ``wmdp:bio``)
and loads into an ordinary :class:`excise.data.tasks.Task` (training sets, QA evaluation sets)
whose ``benchmark`` field holds the benchmark's own evaluation sets. Each module (one per
benchmark) has ``SPLITS`` and ``load(split, data_dir)``, and optionally ``contrast(task)`` (its
own erasure contrast set, for ``excise erase --task``). Their metrics, as the benchmarks' authors
define them, are :mod:`excise.metrics.benchmarks`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from excise.data.benchmarks import muse, tofu, wmdp
from excise.errors import ExciseError

MODULES = {
    "tofu": "excise.data.benchmarks.tofu",
    "muse": "excise.data.benchmarks.muse",
    "wmdp": "excise.data.benchmarks.wmdp",
    # built-in use cases with their own metrics (no ``name:split`` form)
    "toxicity": "excise.data.usecases",
    "bias": "excise.data.usecases",
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


def benchmark_contrast(task) -> tuple[list[str], list[str]] | None:
    """The task's own (positive, negative) erasure contrast set, or None (then erase contrasts
    the forget and retain prompts)."""
    own = getattr(_module(task), "contrast", None)
    return None if own is None else own(task)


def benchmark_datasets(task_name: str | None) -> list[str]:
    """The hub dataset ids of a benchmark task (``tofu:forget10``), [] for other tasks."""
    benchmark, _, split = (task_name or "").partition(":")
    if benchmark == "tofu":
        return [tofu.HUB_ID]
    if benchmark == "muse":
        return [muse.HUB_IDS[split]] if split in muse.HUB_IDS else []
    if benchmark == "wmdp":
        questions, corpora = wmdp.QUESTIONS_HUB, wmdp.CORPORA_HUB
        return [questions, corpora] if split in ("bio", "cyber") else [questions]
    return []
