"""The original model's evaluation, computed once: kept under ``excise_home()/"evaluations"``.

A model's metrics on a task depend only on its weights, the task's items, the template and the
evaluation settings, so a second ``excise unlearn`` or ``excise demo`` on the same model reads
"evaluate before" (and the report's answers before) from disk. The key hashes the weights' sha256
(:func:`excise.models.weights_sha256`, which the unlearn job computes anyway; an exact identity,
where :func:`excise.models.fingerprint` samples), every item of every evaluation set, the template,
the settings and :data:`METRICS_VERSION` (raise it when a metric's definition changes). Files are
written whole (a temporary file renamed), so concurrent runs never read half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, TypeVar

from excise.data.tasks import Task
from excise.models import excise_home

METRICS_VERSION = 2  # 2: text scored after the tokenizer's leading special tokens (Gemma's <bos>)
T = TypeVar("T")


def task_items(task: Task) -> dict[str, Any]:
    """Everything of ``task`` an evaluation reads (its training sets aside)."""
    return {
        "name": task.name,
        "template": task.template,
        "forget_eval": [asdict(q) for q in task.forget_eval],
        "retain_eval": [asdict(q) for q in task.retain_eval],
        "near_retain_eval": [asdict(q) for q in task.near_retain_eval],
        "utility": [asdict(q) for q in task.utility],
        "forget_mc": [asdict(q) for q in task.forget_mc],
        "fluency": [t.text for t in task.fluency],
    }


def cache_key(kind: str, weights: str, parts: Any) -> str:
    text = json.dumps([METRICS_VERSION, kind, weights, parts], sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cached(
    kind: str,
    weights: str,
    parts: Any,
    compute: Callable[[], T],
    *,
    dump: Callable[[T], Any] = lambda value: value,
    load: Callable[[Any], T] = lambda value: value,
) -> tuple[T, bool]:
    """``(value, from_cache)``: ``compute()``'s result for these weights and ``parts``, read from
    the cache when there, else computed and written (``dump``/``load`` convert to/from JSON)."""
    path = excise_home() / "evaluations" / f"{kind}-{cache_key(kind, weights, parts)}.json"
    if path.is_file():
        try:
            return load(json.loads(path.read_text())), True
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable: computed again and rewritten
    value = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(dump(value)))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home costs the next run this evaluation, nothing else
    return value, False
