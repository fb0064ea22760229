"""``excise erase`` as data and one function: :class:`EraseJob` and :func:`run`.

The model is changed in closed form (:mod:`excise.erasure`) and ``OUT`` gets ``model/``
(safetensors; plain ``from_pretrained`` loads it; runtime-hook forms add ``excise_hooks.*`` and a
note on attaching them), ``erasure.safetensors`` (directions, erasers), ``report.json`` and
``manifest.json``. With a task (built-in or forget/retain files) positives are the forget prompts
(with paraphrases), negatives the retain prompts, and the report gives forget/retain/multiple-
choice accuracy and perplexity before and after (a use case with a contrast set of its own,
``bias``, is fitted on that: :func:`excise.data.benchmarks.benchmark_contrast`); the layer of
``ablate``/``clamp`` is then chosen by held-out retain minus forget accuracy.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from excise import models
from excise.attacks.base import accuracy, utility_metrics
from excise.data.benchmarks import benchmark_contrast
from excise.data.records import QA, Text, load_records
from excise.data.task import Task
from excise.erasure import adapter
from excise.erasure.core import ErasureResult, erase, resolve_options
from excise.errors import ConfigError
from excise.fsutil import atomic_dir, check_output, write_manifest
from excise.jobs.common import check_choices, job_task, load, shipped_set
from excise.metrics import perplexity
from excise.metrics.benchmarks import benchmark_metrics
from excise.metrics.generate import answer_sets
from excise.report import clean, examples
from excise.report.erase import erase_card


@dataclass(kw_only=True)
class EraseJob:
    """Bound a concept in ``model`` with ``method`` (leace, ablate, clamp).

    The concept comes from a ``task`` (or ``forget``/``retain`` files) or from ``positive`` and
    ``negative`` prompt files (``builtin:harmful`` / ``builtin:harmless`` name shipped sets).
    ``options`` are the method's (``excise methods``); ``layer`` the layer to fit at (default:
    chosen, or a quarter of the depth). ``out=None`` writes nothing."""

    method: str
    model: str = "smollm2-135m"
    task: str | None = None
    forget: str | None = None
    retain: str | None = None
    data_dir: str | None = None
    positive: str | None = None
    negative: str | None = None
    template: str = "auto"
    filter_known: bool | None = None
    dtype: str = "float32"
    layer: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    out: str | Path | None = None
    overwrite: bool = False
    allow_pickle: bool = False
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        check_choices(self.template, self.dtype)
        if self.has_task == (self.positive is not None or self.negative is not None):
            raise ConfigError("give --task (or --forget/--retain), or --positive and --negative")
        if not self.has_task and (self.positive is None or self.negative is None):
            raise ConfigError("--positive and --negative go together")

    @property
    def has_task(self) -> bool:
        return self.task is not None or self.forget is not None

    def method_options(self) -> dict[str, Any]:
        """``options``, with ``layer`` when one is given."""
        return {**self.options, **({"layer": self.layer} if self.layer is not None else {})}

    def plan(self) -> str:
        """What running the job does."""
        options = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        data = self.task or f"forget={self.forget!r} retain={self.retain!r}"
        return "\n".join(
            [
                "plan:",
                f"  model   {self.model} ({self.dtype})",
                f"  data    task {data} (template {self.template})",
                f"  erase   {self.method} ({options or 'defaults'}), closed form",
                f"  out     {self.out}{' (overwrite)' if self.overwrite else ''}",
            ]
        )


@dataclass
class EraseResult:
    """The changed model (with its tokenizer), the report, and the erasure itself: a runtime form
    (not folded into the weights) is attached with :func:`excise.erasure.adapter.register` from
    ``erasure.adapter["hooks"]`` and ``erasure.tensors``."""

    model: Any
    tokenizer: Any
    report: dict[str, Any]
    erasure: ErasureResult


def read_prompts(path: str, name: str) -> list[list[str]]:
    """Prompt groups of a records file; ``builtin:harmful`` / ``builtin:harmless`` name the
    shipped contrast sets (excise/data/builtin/contrast)."""
    path = shipped_set(path, "contrast")
    items = []
    for record in load_records(path, name=name):
        if isinstance(record, QA):
            items.append([record.prompt, *record.paraphrases])
        elif isinstance(record, Text):
            items.append([record.text])
    if not items:
        raise ConfigError(f"{path}: the {name} set has no prompt or text records")
    return items


def task_scores(model, tokenizer, task: Task) -> dict[str, float]:
    """Forget/retain/multiple-choice accuracy, perplexity and the task's own metrics."""
    scores = utility_metrics(model, tokenizer, task)
    scores["perplexity"] = perplexity(model, tokenizer, [t.text for t in task.fluency])
    scores.update(benchmark_metrics(model, tokenizer, task))  # a use case's own (bias: stereotype)
    return scores


def layer_scorer(tokenizer, task: Task):
    """Held-out retain minus forget accuracy under a candidate change (chooses the layer)."""

    def score(model, held_out_positive: list[int]) -> float:
        forget = [task.forget_eval[i] for i in held_out_positive]
        forget_accuracy = accuracy(model, tokenizer, forget, task.template)
        return accuracy(model, tokenizer, task.retain_eval, task.template) - forget_accuracy

    return score


def example_prompts(
    task: Task | None, positive, negative, count: int = 5
) -> dict[str, list[tuple[str, str]]]:
    """The report's example prompts: a task's sets with their answers, else the first
    ``--positive`` and ``--negative`` prompts (no expected answer)."""
    if task is not None:
        return examples.pick(task, count)
    sets = {"positive": positive or [], "negative": negative or []}
    return {k: [(group[0], "") for group in v[:count]] for k, v in sets.items() if v}


def run(job: EraseJob) -> EraseResult:
    """Fit and apply the erasure; write ``job.out`` (unless None) whole or not at all."""
    options = job.method_options()
    if job.out is not None:
        inputs = {"--model": job.model, "--forget": job.forget, "--retain": job.retain}
        inputs |= {"--positive": job.positive, "--negative": job.negative}
        check_output(Path(job.out), overwrite=job.overwrite, inputs=inputs)
    positive = negative = None
    if not job.has_task:  # read the files before loading a model: errors come fast
        positive = read_prompts(job.positive, "positive")
        negative = read_prompts(job.negative, "negative")
    started = time.perf_counter()
    model, tokenizer = load(job.model, job)
    options = resolve_options(model, job.method, options)  # before the task and its statistics
    template = job.template
    scorer, task, before = None, None, {}
    if job.has_task:
        task = job_task(job, model, tokenizer, filter_items=True if job.filter_known else None)
        template = task.template
        positive = [[q.prompt, *q.paraphrases] for q in task.forget_eval]
        negative = [[r.prompt, *r.paraphrases] for r in task.retain if isinstance(r, QA)]
        negative = negative or [[q.prompt, *q.paraphrases] for q in task.retain_eval]
        own = benchmark_contrast(task)  # a task with a contrast set of its own (bias)
        if own is not None:  # its items are not forget_eval's: the layer goes by separation
            positive, negative = own
        else:
            scorer = layer_scorer(tokenizer, task)
        before = task_scores(model, tokenizer, task)
    elif template == "auto":
        template = "chat" if getattr(tokenizer, "chat_template", None) else "raw"
    texts = [t.text for t in task.fluency] if task is not None else None
    shown = example_prompts(task, positive, negative)
    shown_before = answer_sets(model, tokenizer, shown, template)  # before it changes
    model, result = erase(
        model, tokenizer, job.method, positive, negative,
        template=template, texts=texts, scorer=scorer, **options,
    )  # fmt: skip
    hooks = []  # a runtime form is scored with its hooks on, as it is meant to be used
    for hook in (result.adapter or {}).get("hooks", []):
        hooks += adapter.register(model, hook, result.tensors)
    after = task_scores(model, tokenizer, task) if task is not None else {}
    shown_after = answer_sets(model, tokenizer, shown, template)
    for handle in hooks:
        handle.remove()
    report = {
        "schema_version": 1,
        "kind": "erase",
        "model": job.model,
        "method": {"name": job.method, "options": options},
        "task": task.name if task is not None else None,
        "inputs": {"positive": job.positive, "negative": job.negative, "template": template},
        "layer": result.layer,
        "folded": result.folded,
        "erasure": result.metrics,
        "details": result.details,
        "notes": result.notes,
        "before": before,
        "after": after,
        "examples": examples.combine(shown, shown_before, shown_after),
        "seconds": round(time.perf_counter() - started, 1),
    }
    if job.out is not None:
        with atomic_dir(Path(job.out), overwrite=job.overwrite) as tmp:
            models.save_model(model, tokenizer, tmp / "model")
            tensors = {k: v.detach().float().cpu().clone() for k, v in result.tensors.items()}
            if result.adapter is not None:
                adapter.save(tmp / "model", result.adapter["hooks"], tensors)
            save_file(tensors or {"empty": torch.zeros(0)}, tmp / "erasure.safetensors")
            (tmp / "model" / "README.md").write_text(erase_card(report))
            (tmp / "report.json").write_text(json.dumps(clean(report), indent=2) + "\n")
            write_manifest(tmp)
    return EraseResult(model, tokenizer, report, result)
