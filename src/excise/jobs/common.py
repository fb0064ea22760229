"""What the jobs share: loading a model as a job asks, resolving its task, evaluating a model on
it, the original and gold models a comparison needs, and the checks of a job's choices."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any, Protocol

from excise import models
from excise.attacks import get_attack
from excise.attacks.known import Known, known_from_evaluation, known_utility
from excise.data.task import BUILTIN
from excise.data.tasks import Task, custom_task, filter_known, load_task
from excise.errors import ConfigError
from excise.jobs.fictitious import taught_models
from excise.metrics import Evaluation, evaluate, quick_task
from excise.metrics.benchmarks import benchmark_metrics
from excise.metrics.cache import cached, task_items
from excise.metrics.lmeval import lm_eval_scores
from excise.progress import stage

TEMPLATES = ("auto", "raw", "chat")
EVAL_MODES = ("none", "quick", "full")
DTYPES = ("float32", "bfloat16", "float16")
Echo = Callable[[str], None]


class Loading(Protocol):
    """The fields of a job that say how its models load."""

    dtype: str
    allow_pickle: bool
    trust_remote_code: bool


def check_choices(template: str = "auto", dtype: str = "float32") -> None:
    """A template or dtype outside the choices the CLI offers is an error when a job is built."""
    if template not in TEMPLATES:
        raise ConfigError(f"unknown template {template!r}: auto, raw or chat")
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")


def shipped_set(source: str, kind: str) -> str:
    """``source``, or for ``builtin:NAME`` the shipped contrast set of that name
    (``excise/data/builtin/contrast/NAME.jsonl``; ``kind`` names it in the error)."""
    if not source.startswith("builtin:"):
        return source
    shipped = BUILTIN / "contrast" / f"{source.removeprefix('builtin:')}.jsonl"
    if not shipped.is_file():
        raise ConfigError(f"no built-in {kind} set {source!r}: builtin:harmful, builtin:harmless")
    return str(shipped)


def load(spec: str, job: Loading):
    """``(model, tokenizer)`` from ``spec``, in the job's dtype and with its loading permissions.

    Read through :mod:`excise.models` at call time, so a test can replace ``load_model`` there."""
    return models.load_model(
        spec,
        dtype=job.dtype,
        allow_pickle=job.allow_pickle,
        trust_remote_code=job.trust_remote_code,
    )


def resolve_task(
    model,
    tokenizer,
    *,
    task: str | None = None,
    forget: str | None = None,
    retain: str | None = None,
    template: str = "auto",
    filter_items: bool | None = None,
    data_dir: str | None = None,
) -> Task:
    """A built-in task, a benchmark task (read from ``data_dir`` or the hub) or one made of the
    user's files.

    Built-in tasks are filtered to the items ``model`` knows; benchmarks and the user's files
    only when ``filter_items`` is true (benchmark metrics are defined on every item; the user's
    answers may be long, or only partly known, by design).
    """
    if (task is None) == (forget is None):
        raise ConfigError("give either --task or --forget (with --retain)")
    if template == "auto":
        template = (
            "raw" if task else ("chat" if getattr(tokenizer, "chat_template", None) else "raw")
        )
    if template not in ("raw", "chat"):
        raise ConfigError(f"unknown template {template!r}: auto, raw or chat")
    if task is not None:
        chosen = dataclasses.replace(load_task(task, data_dir, template), template=template)
        if chosen.metadata.get("needs_teaching"):
            return chosen
        if chosen.metadata.get("benchmark") and not filter_items:
            return chosen
    else:
        chosen = custom_task(forget, retain, template=template)
    if filter_items is None:
        filter_items = task is not None
    if not filter_items:
        return chosen
    with stage("filter known items"):
        return filter_known(chosen, model, tokenizer)


class TaskSource(Protocol):
    """The fields of a job that name its data."""

    task: str | None
    forget: str | None
    retain: str | None
    template: str
    data_dir: str | None


def job_task(job: TaskSource, model, tokenizer, *, filter_items: bool | None = None) -> Task:
    """The task ``job`` names (:func:`resolve_task`), its items filtered by what ``model`` knows
    as :func:`resolve_task` says."""
    return resolve_task(
        model,
        tokenizer,
        task=job.task,
        forget=job.forget,
        retain=job.retain,
        template=job.template,
        filter_items=filter_items,
        data_dir=job.data_dir,
    )


def evaluate_task(
    model, tokenizer, task: Task, *, reference=None, utility=None, **options: Any
) -> Evaluation:
    """:func:`excise.metrics.evaluate`, plus the benchmark's own metrics for benchmark tasks
    (``reference``: the gold model's statistics, from ``benchmark_reference``) and lm-eval
    scores with ``utility`` (:class:`excise.metrics.lmeval.LmEvalUtility`)."""
    result = evaluate(model, tokenizer, task, **options)
    result.metrics.update(benchmark_metrics(model, tokenizer, task, reference))
    if utility is not None:
        result.metrics.update(lm_eval_scores(model, tokenizer, utility))
    return result


def check_eval(mode: str, every: int | None) -> None:
    """``--eval`` is none, quick or full; ``--eval-every`` a positive number of steps."""
    if mode not in EVAL_MODES:
        raise ConfigError(f"unknown eval {mode!r}: none, quick or full")
    if every is not None and every < 1:
        raise ConfigError(f"eval_every must be >= 1 step, got {every}")
    if every is not None and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        # a sharded or replicated model is evaluated whole in one process only
        raise ConfigError("--eval-every runs in one process; under accelerate launch leave it out")


def evaluate_original(
    model,
    tokenizer,
    task: Task,
    *,
    mode: str,
    weights: str,
    reference=None,
    utility=None,
    gold_truth_ratios: list[float] | None = None,
) -> tuple[Evaluation, bool]:
    """:func:`evaluate_task` of the original model (``weights``: its sha256), read from
    :mod:`excise.metrics.cache` when this model, task and settings were evaluated before
    (``(evaluation, from_cache)``); ``mode`` "none" measures nothing, "quick" a fixed sample."""
    if mode == "none":
        return Evaluation({}, {}), False
    options = {"quick": mode == "quick", "gold_truth_ratios": gold_truth_ratios}

    def compute() -> Evaluation:
        return evaluate_task(
            model, tokenizer, task, reference=reference, utility=utility, **options
        )

    if reference is not None:  # a gold model's statistics: not part of the key, not cached
        return compute(), False
    return cached(
        "evaluation",
        weights,
        _original_parts(task, options, utility),
        compute,
        dump=lambda e: {"metrics": e.metrics, "details": e.details},
        load=lambda d: Evaluation(d["metrics"], d["details"]),
    )


def _original_parts(task: Task, options: dict[str, Any], utility) -> dict[str, Any]:
    """What the cached evaluation of an original model is keyed by, beside its weights."""
    return {"task": task_items(task), "options": options, "utility": repr(utility)}


class _NotCached(Exception):
    pass


def cached_known(task: Task, weights: str) -> Known | None:
    """What the cache holds of the original model's answers on ``task`` (its full evaluation,
    else its quick one), without evaluating anything; None when neither was ever computed."""

    def missing() -> dict[str, Any]:
        raise _NotCached

    for mode in ("full", "quick"):
        options = {"quick": mode == "quick", "gold_truth_ratios": None}
        try:
            found, _ = cached("evaluation", weights, _original_parts(task, options, None), missing)
        except _NotCached:
            continue
        evaluated = quick_task(task) if mode == "quick" else task
        return known_from_evaluation(found["metrics"], found["details"], evaluated)
    return None


def original_known(original, tokenizer, task: Task, weights: str, given: Known | None) -> Known:
    """The original model's answers on every set the audit reads (forget, retain, MC), ``given``
    completed, kept in :mod:`excise.metrics.cache` by its weights (``weights``: sha256): the
    next audit of a model unlearned from it scores none of them."""

    def compute() -> Known:
        known = given or Known()
        known_utility(original, tokenizer, task, known)
        return known

    def dump(known: Known) -> dict[str, Any]:
        pairs = [[p, c, v] for (p, c), v in known.correct.items()]
        return {"correct": pairs, "mc_accuracy": known.mc_accuracy}

    def load(data: dict[str, Any]) -> Known:
        correct = {(p, c): bool(v) for p, c, v in data["correct"]}
        mc = data["mc_accuracy"]
        return Known(correct, tuple(task.utility) if mc is not None else None, mc)

    parts = {"task": task_items(task), "sets": "forget_eval, retain_eval, utility"}
    return cached("audit-clean", weights, parts, compute, dump=dump, load=load)[0]


def audit_known(
    original, tokenizer, task: Task, weights: str, mode: str = "none", before=None, after=None
) -> dict[str, Known]:
    """What an audit of a model unlearned from ``original`` (sha256 ``weights``) need not score:
    the job's evaluations (``before`` of the original, ``after`` of the unlearned model, as
    ``--eval mode`` ran them; else the original's cached evaluation) and the original's answers
    kept from an earlier audit (:func:`original_known`)."""
    known = evaluations_known(task, mode, **{"unlearned": after, "original": before})
    given = known.get("original") or cached_known(task, weights)
    known["original"] = original_known(original, tokenizer, task, weights, given)
    return known


def evaluations_known(task: Task, mode: str, **evaluations: Evaluation | None) -> dict[str, Known]:
    """The job's evaluations (``unlearned=after, original=before``, as ``--eval`` ran them) as
    what an audit need not score again (:mod:`excise.attacks.known`)."""
    if mode == "none":
        return {}
    evaluated = quick_task(task) if mode == "quick" else task
    return {
        role: known_from_evaluation(e.metrics, e.details, evaluated)
        for role, e in evaluations.items()
        if e is not None and e.details
    }


def answers_before(model, tokenizer, shown, template: str, weights: str):
    """The original model's answers to the report's example prompts (cached as the evaluation)."""
    from excise.metrics.generate import answer_sets

    return cached(
        "answers",
        weights,
        {"shown": shown, "template": template},
        lambda: answer_sets(model, tokenizer, shown, template),
    )[0]


def training_watch(model, tokenizer, task: Task, every: int, steps: int, weights: str, then=None):
    """The ``on_step`` callback of ``--eval-every`` (:mod:`excise.metrics.watch`); its retain
    floor is the original's on the quick sample (cached: free when ``--eval quick`` ran)."""
    from excise.metrics.watch import TrainingWatch

    quick = evaluate_original(model, tokenizer, task, mode="quick", weights=weights)[0]
    retain = quick.metrics.get("retain_accuracy")
    return TrainingWatch(model, tokenizer, task, every=every, steps=steps, original_retain=retain)


# the demo's quick audit: one relearning configuration, full fine-tuning at 1e-4 on half A of the
# forget set (the variant and rate that recovered most on chem-symbols: bench/README.md,
# Robustness), 20 steps of 8, watched at 0, 5, 10, 20 steps on half B; no reference curves (the
# original's clean accuracy on half B is what recovery is measured against)
QUICK_AUDIT = {
    "relearn": {
        "variants": ["forget_full"],
        "reference_variants": [],
        "lr_grid": [1e-4],
        "steps": [0, 5, 10, 20],
        "batch_size": 8,
    }
}


def audit_or_quick(model, tokenizer, task: Task, original, gold, attacks, echo=None, known=None):
    """The audit of ``attacks`` (:func:`excise.attacks.scorecard.audit`), or with none the quick
    audit (:data:`QUICK_AUDIT`); ``known``: what the job's evaluations already scored
    (:func:`evaluations_known`), read instead of scored again."""
    from excise.attacks.scorecard import audit

    if attacks:
        return audit(
            model, tokenizer, task, original=original, gold=gold, attacks=attacks, echo=echo,
            known=known,
        )  # fmt: skip
    return audit(
        model, tokenizer, task, original=original, attacks="relearn", budgets=QUICK_AUDIT,
        echo=echo, known=known,
    )  # fmt: skip


def check_attacks(attacks: str | list[str]) -> None:
    """An unknown attack name is an error before any work, not after training."""
    names = [a.strip() for a in attacks.split(",")] if isinstance(attacks, str) else attacks
    for name in names:
        if name and name != "all":
            get_attack(name)


def reference_sources(
    original_spec: str, task: Task, *, dtype: str = "float32", echo: Echo | None = None
) -> tuple[str, str | None]:
    """Where the original and the gold model load from: for taught tasks the taught and gold
    checkpoints (taught once, cached), otherwise ``original_spec`` and no gold."""
    if task.metadata.get("needs_teaching"):
        taught, gold = taught_models(original_spec, task, dtype=dtype, echo=echo)
        return str(taught), str(gold)
    return original_spec, None


def references_for(original_spec: str, task: Task, job: Loading, *, echo: Echo | None = None):
    """(original, gold) models for an audit; gold is None where the task has none."""
    original, gold = reference_sources(original_spec, task, dtype=job.dtype, echo=echo)
    return load(original, job)[0], gold and load(gold, job)[0]
