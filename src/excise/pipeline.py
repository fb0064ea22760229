"""Compose the stages: load, (teach), evaluate, unlearn, evaluate, save, report.

Each stage is a plain function usable on its own; ``run_unlearn`` is what the CLI's ``unlearn`` and
``demo`` commands call.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from excise.data.encode import encode_records
from excise.data.tasks import Task, custom_task, filter_known, load_task
from excise.errors import ConfigError
from excise.fsutil import atomic_dir, check_output, write_manifest
from excise.methods import get_method, make_config
from excise.metrics import evaluate
from excise.models import load_model, save_model
from excise.train import TrainConfig, train


class Timer:
    """Wall time of each named stage, in order."""

    def __init__(self, echo: Callable[[str], None] | None = None) -> None:
        self.seconds: dict[str, float] = {}
        self.echo = echo

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.echo:
            self.echo(f"[{name}] ...")
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 2)
        if self.echo:
            self.echo(f"[{name}] done in {self.seconds[name]:.1f} s")


def train_config(method: str, options: dict[str, Any] | None) -> TrainConfig:
    """The method's tuned defaults, overridden by ``options`` (unknown keys rejected)."""
    merged = {**get_method(method).train_defaults, **(options or {})}
    return make_config(TrainConfig, merged)


def unlearn(
    model,
    tokenizer,
    task: Task,
    method: str,
    *,
    method_options: dict[str, Any] | None = None,
    train_options: dict[str, Any] | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Apply ``method`` to ``model`` in place on ``task``'s forget/retain sets; return the loss log."""
    spec = get_method(method)
    config = make_config(spec.config_cls, method_options)
    settings = train_config(method, train_options)
    task.check()
    return train(
        model,
        tokenizer,
        spec,
        config,
        forget=encode_records(tokenizer, task.forget, task.template),
        retain=encode_records(tokenizer, task.retain, task.template),
        forget_records=task.forget,
        template=task.template,
        config=settings,
        uses_retain=spec.uses_retain,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        on_step=on_step,
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
) -> Task:
    """A built-in task or one made of the user's files.

    Built-in tasks are filtered to the items ``model`` knows; the user's files only when
    ``filter_items`` is true (their answers may be long, or only partly known, by design).
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
        chosen = dataclasses.replace(load_task(task), template=template)
        if chosen.metadata.get("needs_teaching"):
            return chosen
    else:
        chosen = custom_task(forget, retain, template=template)
    if filter_items is None:
        filter_items = task is not None
    return filter_known(chosen, model, tokenizer) if filter_items else chosen


def run_unlearn(
    *,
    model_spec: str,
    method: str,
    out: Path,
    task: str | None = None,
    forget: str | None = None,
    retain: str | None = None,
    template: str = "auto",
    filter_items: bool | None = None,
    method_options: dict[str, Any] | None = None,
    train_options: dict[str, Any] | None = None,
    overwrite: bool = False,
    resume: bool = False,
    dtype: str = "float32",
    audit_attacks: str | list[str] | None = None,
    echo: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The whole job: returns the report (also written, with the model, into ``out``).

    With ``audit_attacks`` the unlearned model is audited against the original before saving.
    """
    from excise.report import build_report, write_report

    out = Path(out)
    timer = Timer(echo)
    # fail fast on an unknown method or option, before any loading
    make_config(get_method(method).config_cls, method_options)
    settings = train_config(method, train_options)
    check_output(out, overwrite=overwrite)
    with timer.stage("load model"):
        model, tokenizer = load_model(model_spec, dtype=dtype)
    with timer.stage("load task"):
        chosen = resolve_task(
            model,
            tokenizer,
            task=task,
            forget=forget,
            retain=retain,
            template=template,
            filter_items=filter_items,
        )
    original_source, gold, gold_ratios = model_spec, None, None
    if chosen.metadata.get("needs_teaching"):
        with timer.stage("teach (cached)"):
            # the model to unlearn is the one taught every fact; gold saw only the retained
            original_source, gold_source = reference_sources(
                model_spec, chosen, dtype=dtype, echo=echo
            )
            model = load_model(original_source, dtype=dtype)[0]
            gold = load_model(gold_source, dtype=dtype)[0]
            gold_ratios = evaluate(gold, tokenizer, chosen).details.get("forget_truth_ratio")
            if not audit_attacks:
                gold = None  # no second model held through training unless the audit needs it
    with timer.stage("evaluate before"):
        before = evaluate(model, tokenizer, chosen, gold_truth_ratios=gold_ratios)
    checkpoint_dir = out.with_name(out.name + ".ckpt")
    with atomic_dir(out, overwrite=overwrite) as tmp:
        with timer.stage(f"unlearn ({method}, {settings.steps} steps)"):
            log = unlearn(
                model,
                tokenizer,
                chosen,
                method,
                method_options=method_options,
                train_options=train_options,
                checkpoint_dir=checkpoint_dir if settings.checkpoint_every else None,
                resume=resume,
            )
        with timer.stage("evaluate after"):
            after = evaluate(model, tokenizer, chosen, gold_truth_ratios=gold_ratios)
        audit_result = None
        if audit_attacks:
            from excise.attacks.scorecard import audit

            with timer.stage("audit"):
                # the original comes back from disk (``model`` changed in place); gold is reused
                original = load_model(original_source, dtype=dtype)[0]
                audit_result = audit(
                    model,
                    tokenizer,
                    chosen,
                    original=original,
                    gold=gold,
                    attacks=audit_attacks,
                    echo=echo,
                )
                del original, gold
        with timer.stage("save"):
            save_model(model, tokenizer, tmp / "model")
        report = build_report(
            model_spec=model_spec,
            task=chosen,
            method=method,
            method_options=method_options or {},
            train=dataclasses.asdict(settings),
            before=before,
            after=after,
            log=log,
            timings=timer.seconds,
        )
        if audit_result is not None:
            report["audit"] = audit_result
        write_report(report, tmp)
        write_manifest(tmp)
    if checkpoint_dir.exists():
        import shutil

        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return report


def reference_sources(
    original_spec: str,
    task: Task,
    *,
    dtype: str = "float32",
    echo: Callable[[str], None] | None = None,
) -> tuple[str, str | None]:
    """Where the original and the gold model load from: for taught tasks the taught and gold
    checkpoints (taught once, cached), otherwise ``original_spec`` and no gold."""
    if task.metadata.get("needs_teaching"):
        from excise.fictitious import taught_models

        taught, gold = taught_models(original_spec, task, dtype=dtype, echo=echo)
        return str(taught), str(gold)
    return original_spec, None


def references_for(
    original_spec: str,
    task: Task,
    *,
    dtype: str = "float32",
    echo: Callable[[str], None] | None = None,
):
    """(original, gold) models for an audit; gold is None where the task has none."""
    original, gold = reference_sources(original_spec, task, dtype=dtype, echo=echo)
    return load_model(original, dtype=dtype)[0], gold and load_model(gold, dtype=dtype)[0]


def run_audit(
    *,
    model_spec: str,
    original_spec: str,
    out: Path,
    task: str | None = None,
    forget: str | None = None,
    retain: str | None = None,
    template: str = "auto",
    attacks: str | list[str] = "all",
    budgets: dict[str, Any] | None = None,
    overwrite: bool = False,
    dtype: str = "float32",
    echo: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Attack ``model_spec`` and write report.json / report.html into ``out``."""
    from excise.attacks.scorecard import audit
    from excise.report import audit_report, write_report

    out = Path(out)
    check_output(out, overwrite=overwrite)  # fail before the long work, not after it
    timer = Timer(echo)
    with timer.stage("load models"):
        model, tokenizer = load_model(model_spec, dtype=dtype)
        base, _ = load_model(original_spec, dtype=dtype)
    with timer.stage("load task"):
        # items are filtered by what the original model knew, not by what is left
        chosen = resolve_task(
            base, tokenizer, task=task, forget=forget, retain=retain, template=template
        )
        original, gold = references_for(original_spec, chosen, dtype=dtype, echo=echo)
        del base
    with timer.stage("audit"):
        result = audit(
            model,
            tokenizer,
            chosen,
            original=original,
            gold=gold,
            attacks=attacks,
            budgets=budgets,
            echo=echo,
        )
    report = audit_report(
        model_spec=model_spec,
        original_spec=original_spec,
        task=chosen,
        audit=result,
        timings=timer.seconds,
    )
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_report(report, tmp)
        write_manifest(tmp)
    return report
