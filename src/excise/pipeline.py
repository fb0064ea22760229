"""Compose the stages: load, (teach), evaluate, unlearn, evaluate, save, report.

Each stage is a plain function usable on its own; ``run_unlearn`` is what the CLI's ``unlearn`` and
``demo`` commands call.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from excise import tracking
from excise.data.encode import encode_records
from excise.data.records import QA, Text
from excise.data.tasks import Task, custom_task, filter_known, load_task
from excise.errors import ConfigError, DataError, ExciseError
from excise.fsutil import (
    atomic_dir,
    check_checkpoints,
    check_output,
    remove_checkpoints,
    write_manifest,
)
from excise.lora import LR_FACTOR, LoraSettings, merge_adapters
from excise.methods import get_method, make_config, typed_options
from excise.metrics import evaluate
from excise.metrics.generate import answer_sets
from excise.models import load_model, save_model, weights_sha256
from excise.progress import stage as progress_stage
from excise.train import (
    TrainConfig,
    check_resumable,
    checkpoint_settings,
    is_main_process,
    train,
)

MAX_TOKENS = 256  # the encoder's cut (excise.data.encode): longer items are cut to this
log = logging.getLogger("excise")


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
        with progress_stage(name):  # progress inside reads "[name] ..."
            yield
        self.seconds[name] = round(time.perf_counter() - start, 2)
        if self.echo:
            self.echo(f"[{name}] done in {self.seconds[name]:.1f} s")


def evaluate_task(model, tokenizer, task: Task, *, reference=None, utility=None, **options):
    """:func:`excise.metrics.evaluate`, plus the benchmark's own metrics for benchmark tasks
    (``reference``: the gold model's statistics, from ``benchmark_reference``) and lm-eval
    scores with ``utility`` (:class:`excise.lmeval.LmEvalUtility`)."""
    from excise.data.benchmarks import benchmark_metrics

    result = evaluate(model, tokenizer, task, **options)
    result.metrics.update(benchmark_metrics(model, tokenizer, task, reference))
    if utility is not None:
        from excise.lmeval import lm_eval_scores

        result.metrics.update(lm_eval_scores(model, tokenizer, utility))
    return result


def train_config(method: str, options: dict[str, Any] | None, *, lora: bool = False) -> TrainConfig:
    """The method's tuned defaults, overridden by ``options`` (unknown keys rejected).

    With ``lora`` and no ``lr`` given, the default lr is ``excise.lora.LR_FACTOR`` times the
    method's (adapters start from zero and need larger steps than full fine-tuning)."""
    defaults = dict(get_method(method).train_defaults)
    if lora:
        defaults["lr"] = defaults.get("lr", TrainConfig.lr) * LR_FACTOR
    return make_config(TrainConfig, {**defaults, **(options or {})})


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
    lora: LoraSettings | None = None,
) -> list[dict[str, float]]:
    """Apply ``method`` to ``model`` in place on ``task``'s forget/retain sets; return the loss log.

    With ``lora`` the model keeps its trained adapters; :func:`excise.lora.merge_adapters` folds
    them in and returns them."""
    spec = get_method(method)
    config = make_config(spec.config_cls, method_options)
    settings = train_config(method, train_options, lora=lora is not None)
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
        lora=lora,
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
    with progress_stage("filter known items"):
        return filter_known(chosen, model, tokenizer)


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
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    echo: Callable[[str], None] | None = None,
    lora: LoraSettings | None = None,
    merge: bool = False,
    data_dir: str | None = None,
    gold_spec: str | None = None,
    utility: str | None = None,
    bypass: bool = False,
    report_to: str | list[str] | None = None,
    logging_dir: str | None = None,
) -> dict[str, Any]:
    """The whole job: returns the report (also written, with the model, into ``out``).

    With ``bypass`` the unlearned model gets the bypass check (:mod:`excise.bypass`): is the
    behaviour's direction of the original model still in the weights and still causal? A method
    that only steers around it is flagged ``bypassed`` in the report.

    ``utility`` (``lm-eval:TASKS``) adds lm-evaluation-harness scores before and after.

    Benchmark tasks (``tofu:forget10``...) are read from ``data_dir`` (or the hub) and add their
    own metrics; ``gold_spec`` is a model never trained on the forget set (TOFU's retain model,
    MUSE's retrain model), which TOFU forget quality and MUSE PrivLeak are relative to.

    With ``lora`` the method trains LoRA adapters (:mod:`excise.lora`), saved in peft's format in
    ``OUT/adapter``; ``OUT/model`` (the merged weights, a plain checkpoint) is written only with
    ``merge``. Under ``accelerate launch`` every process trains its share; only the main process
    writes ``out``.

    With ``audit_attacks`` the unlearned model is audited against the original before saving.
    ``report_to`` (``tensorboard``, ``wandb``, ...: :mod:`excise.tracking`) logs the training
    losses per step, the metrics before and after and the audit's curves, locally into
    ``logging_dir`` (default ``OUT.runs``). The report's ``examples`` hold a few prompts of each
    set with the greedy answers before and after (:mod:`excise.report.examples`).
    Training checkpoints go to ``OUT.ckpt`` (every ``checkpoint_every`` steps, and on Ctrl-C);
    ``resume`` continues from the newest. ``out`` is written only at the end, into a temporary
    folder renamed when complete.
    """
    import yaml

    from excise.recipe import resolved_recipe
    from excise.report import build_report, examples, write_report

    out = Path(out)
    timer = Timer(echo)
    load = functools.partial(
        load_model, dtype=dtype, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code
    )
    # fail fast on an unknown method, option or attack, before any loading
    spec = get_method(method)
    method_options = typed_options(spec.config_cls, method_options)  # "1e-3" -> 0.001, checked
    settings = train_config(method, train_options, lora=lora is not None)
    if merge and lora is None:
        raise ConfigError("--merge merges LoRA adapters; it needs --lora R")
    if settings.steps < 1:
        raise ConfigError(f"steps must be >= 1 to unlearn anything, got {settings.steps}")
    if audit_attacks:
        check_attacks(audit_attacks)
    lm_eval = None
    if utility is not None:
        from excise.lmeval import check_utility, parse_utility

        lm_eval = parse_utility(utility)
        check_utility(lm_eval)
    inputs = {"--model": model_spec, "--forget": forget, "--retain": retain}
    inputs |= {"--data-dir": data_dir, "--gold": gold_spec}
    check_output(out, overwrite=overwrite, inputs=inputs)
    checkpoint_dir = out.with_name(out.name + ".ckpt")
    check_checkpoints(checkpoint_dir)
    trackers, runs = tracking.parse_report_to(report_to), None
    if trackers:
        runs = tracking.logging_dir(out, logging_dir)
        tracking.check_logging_dir(runs, {"--out": out, "OUT.ckpt": checkpoint_dir}, inputs)
    elif logging_dir:
        log.warning("excise: warning: --logging-dir without --report-to: nothing is logged there")
    saved = any(checkpoint_dir.glob("step-*/state.json"))
    if saved and not resume:
        raise ConfigError(
            f"{checkpoint_dir} holds a checkpoint of an interrupted run; pass --resume to "
            "continue it, or delete that folder to start again"
        )
    if resume and not saved:
        log.warning("excise: warning: no checkpoint in %s; starting from step 0", checkpoint_dir)
    if resume and saved:  # a damaged checkpoint or other settings: now, not after evaluation
        method_config = make_config(spec.config_cls, method_options)
        check_resumable(checkpoint_dir, checkpoint_settings(settings, method_config))
    with timer.stage("load model"):
        model, tokenizer = load(model_spec)
    with timer.stage("load task"):
        chosen = resolve_task(
            model,
            tokenizer,
            task=task,
            forget=forget,
            retain=retain,
            template=template,
            filter_items=filter_items,
            data_dir=data_dir,
        )
        chosen.check()
        if spec.uses_retain and not chosen.retain:
            raise ConfigError(
                f"method {method} needs a retain set and it is empty; give --retain FILE "
                "or choose a method without a retain term (ga)"
            )
        check_lengths(chosen, tokenizer, context_length(model))
        chosen, data_warnings = check_overlap(chosen)
        if bypass:  # too few items for the check fails now, not after training
            from excise.bypass import behaviour_from_task

            behaviour_from_task(chosen)
        for warning in data_warnings:
            log.warning("excise: warning: %s", warning)
    if echo:
        echo(f"template: {chosen.template}{' (chosen by --template auto)' * (template == 'auto')}")
    original_source, gold, gold_ratios = model_spec, None, None
    if chosen.metadata.get("needs_teaching"):
        with timer.stage("teach (cached)"):
            # the model to unlearn is the one taught every fact; gold saw only the retained
            original_source, gold_source = reference_sources(
                model_spec, chosen, dtype=dtype, echo=echo
            )
            model = load(original_source)[0]
            gold = load(gold_source)[0]
            gold_ratios = evaluate(gold, tokenizer, chosen).details.get("forget_truth_ratio")
            if not audit_attacks:
                gold = None  # no second model held through training unless the audit needs it
    reference = None
    if gold_spec is not None:
        from excise.data.benchmarks import benchmark_reference

        with timer.stage("score the gold model"):
            reference = benchmark_reference(load(gold_spec)[0], tokenizer, chosen)
    original_sha256 = weights_sha256(model)
    tracker = tracking.open_tracker(
        trackers,
        folder=runs,
        run_name=f"{method}-{time.strftime('%Y%m%d-%H%M%S')}",
        config={"model": model_spec, "task": chosen.name, "method": method}
        | {"options": method_options or {}, "train": dataclasses.asdict(settings)},
        main_process=is_main_process(),
    )
    if tracker and echo:
        echo(f"[tracking] {tracker.where()}")
    with timer.stage("evaluate before"):
        before = evaluate_task(
            model,
            tokenizer,
            chosen,
            reference=reference,
            utility=lm_eval,
            gold_truth_ratios=gold_ratios,
        )
        # the original's answers now: training changes the model in place
        shown = examples.pick(chosen)
        shown_before = answer_sets(model, tokenizer, shown, chosen.template)
    tracker.log_evaluation(before.metrics, step=0)
    setup = setup_warnings(before.metrics, chosen.template, requested=template)
    for warning in setup:
        log.warning("excise: warning: %s", warning)
    data_warnings += setup
    with timer.stage(f"unlearn ({method}, {settings.steps} steps)"):
        # checkpoints always have a folder: Ctrl-C saves one even without checkpoint_every
        loss_log = unlearn(
            model,
            tokenizer,
            chosen,
            method,
            method_options=method_options,
            train_options=train_options,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            lora=lora,
            on_step=tracker.log_step,
        )
        adapter = merge_adapters(model, model_spec) if lora is not None else None
    with timer.stage("evaluate after"):
        after = evaluate_task(
            model,
            tokenizer,
            chosen,
            reference=reference,
            utility=lm_eval,
            gold_truth_ratios=gold_ratios,
        )
        shown_after = answer_sets(model, tokenizer, shown, chosen.template)
    tracker.log_evaluation(after.metrics, step=settings.steps)
    bypass_result = None
    if bypass:
        from excise.bypass import check_task

        with timer.stage("bypass check"):
            # a model never trained on the forget set is the relearning control, where there is one
            control = gold
            if control is None and chosen.metadata.get("needs_teaching"):
                control = load(gold_source)[0]
            elif control is None and gold_spec is not None:
                control = load(gold_spec)[0]
            original = load(original_source)[0]
            bypass_result = check_task(original, model, tokenizer, chosen, control=control)
    audit_result = None
    if audit_attacks:
        from excise.attacks.scorecard import audit

        with timer.stage("audit"):
            # the original comes back from disk (``model`` changed in place); gold is reused
            original = load(original_source)[0]
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
        tracker.log_audit(audit_result, step=settings.steps)
    report = build_report(
        model_spec=model_spec,
        task=chosen,
        method=method,
        method_options=method_options or {},
        train=dataclasses.asdict(settings),
        before=before,
        after=after,
        log=loss_log,
        timings=timer.seconds,
    )
    report["model_sha256"] = weights_sha256(model)
    report["original_sha256"] = original_sha256
    report["warnings"] = data_warnings
    report["examples"] = examples.combine(shown, shown_before, shown_after)
    if tracker:
        report["tracking"] = {
            "report_to": trackers,
            "logging_dir": str(runs.resolve()),
            "run": tracker.run_name,
        }
    tracker.finish()
    if audit_result is not None:
        report["audit"] = audit_result
    if bypass_result is not None:
        report["bypass"] = bypass_result.to_dict()
    if adapter is not None:
        report["lora"] = {
            "rank": lora.rank,
            "alpha": lora.scale_alpha,
            "dropout": lora.dropout,
            "layers": adapter.layers,
            "merged": merge,
        }
    if not is_main_process():  # the other processes of `accelerate launch` hold the same model
        return report
    with disk_errors(out), atomic_dir(out, overwrite=overwrite) as tmp:
        with timer.stage("save"):
            if adapter is None or merge:
                save_model(model, tokenizer, tmp / "model")
            if adapter is not None:
                adapter.save(tmp / "adapter")
        write_report(report, tmp)
        recipe = resolved_recipe(
            model_spec=model_spec,
            method=method,
            out=out,
            task=task,
            forget=forget,
            retain=retain,
            template=chosen.template,
            dtype=dtype,
            filter_items=filter_items,
            method_options=method_options or {},
            train=dataclasses.asdict(settings),
            audit_attacks=audit_attacks,
            lora=lora,
            merge=merge,
            data_dir=data_dir,
            gold_spec=gold_spec,
            utility=utility,
        )
        # ``excise run OUT/recipe.yaml --out NEW`` repeats this run
        (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
        write_manifest(tmp)
    remove_checkpoints(checkpoint_dir)
    return report


KNOWN_FLOOR = 0.2  # forget accuracy of the original below this: it hardly knows the forget set


def setup_warnings(before: dict[str, Any], template: str, *, requested: str) -> list[str]:
    """What the original model's numbers say about the set-up: a model that does not know what it
    should forget (often the wrong template for the data) makes any removal look perfect."""
    accuracy = before.get("forget_accuracy")
    if accuracy is None or not accuracy < KNOWN_FLOOR:
        return []
    other = "raw" if template == "chat" else "chat"
    how = "chosen by --template auto" if requested == "auto" else "as given"
    return [
        f"the original model answers only {accuracy:.3f} of the forget set with the {template} "
        f"template ({how}), so there is little to forget; check the data, or try --template {other}"
    ]


def check_attacks(attacks: str | list[str]) -> None:
    """An unknown attack name is an error before any work, not after training."""
    from excise.attacks import get_attack

    names = [a.strip() for a in attacks.split(",")] if isinstance(attacks, str) else attacks
    for name in names:
        if name and name != "all":
            get_attack(name)


def context_length(model) -> int | None:
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    return None


def check_lengths(task: Task, tokenizer, context: int | None) -> None:
    """Records longer than the model's context are an error, not a silent truncation: cutting a
    forget item changes what is forgotten. Items between ``MAX_TOKENS`` and the context are cut
    to ``MAX_TOKENS`` tokens (the encoder's limit), with a warning."""
    long = 0
    for name, records in (("forget", task.forget), ("retain", task.retain)):
        examples = encode_records(tokenizer, records, task.template, max_length=1 << 30)
        for example in examples:
            size = len(example.input_ids)
            if context is not None and size > context:
                record = records[example.index]
                start = getattr(record, "prompt", None) or getattr(record, "text", "")
                raise DataError(
                    f"{name} item {example.index + 1} ({start[:30]!r}...) is {size} tokens, "
                    f"longer than the model's context of {context}; shorten it or split it "
                    "into several records"
                )
            long += size > MAX_TOKENS
    if long:
        log.warning(
            "excise: warning: %d forget/retain items are longer than %d tokens and are cut to %d",
            long,
            MAX_TOKENS,
            MAX_TOKENS,
        )


def _key(record) -> tuple[str, ...]:
    if isinstance(record, QA):
        return ("qa", record.prompt.strip(), record.completion.strip())
    if isinstance(record, Text):
        return ("text", record.text.strip())
    return ("other", repr(record))


def check_overlap(task: Task) -> tuple[Task, list[str]]:
    """Forget items also in the retain set pull training both ways. Not an error (users may mean
    it), but a warning, and the count goes into the report (``task.metadata``)."""
    retained = {_key(r) for r in task.retain}
    count = sum(_key(r) in retained for r in task.forget)
    metadata = {**task.metadata, "forget_retain_overlap": count}
    warnings = []
    if count:
        warnings.append(
            f"{count} forget item(s) also appear in the retain set and are pulled both ways; "
            "remove them from the retain set"
        )
    return dataclasses.replace(task, metadata=metadata), warnings


def _disk_full(error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # safetensors reports write errors as its own type, with the OS message inside
    return "No space left on device" in str(error) or "StorageFull" in str(error)


@contextmanager
def disk_errors(out: Path) -> Iterator[None]:
    """Turn a full disk or an unwritable folder into one clear error (the caller's temporary
    folder is already gone: use it around ``atomic_dir``)."""
    try:
        yield
    except Exception as error:
        if _disk_full(error):
            raise ExciseError(
                f"no space left on the device while writing {out}; nothing was written; "
                "free some space or choose another --out"
            ) from error
        if isinstance(error, OSError) and error.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise ExciseError(
                f"cannot write {out} ({error.strerror}); choose a writable --out"
            ) from error
        raise


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
    **load_options: bool,
):
    """(original, gold) models for an audit; gold is None where the task has none."""
    original, gold = reference_sources(original_spec, task, dtype=dtype, echo=echo)
    return (
        load_model(original, dtype=dtype, **load_options)[0],
        gold and load_model(gold, dtype=dtype, **load_options)[0],
    )


def expected_hash(value: str) -> str:
    """A sha256 to compare against: the full 64 hex digits or a prefix of at least 12."""
    wanted = value.strip().lower()
    if not 12 <= len(wanted) <= 64 or any(c not in "0123456789abcdef" for c in wanted):
        raise ConfigError(
            f"--expect-hash takes a sha256 (12 to 64 hex digits), got {value!r}; "
            "copy model_sha256 from a report"
        )
    return wanted


def check_hash(spec: str, actual: str, expected: str | None) -> None:
    """Refuse a model whose weights are not the ones the caller asked about."""
    if expected is not None and not actual.startswith(expected_hash(expected)):
        raise ExciseError(
            f"model {spec} has weights sha256 {actual[:16]}..., not the expected "
            f"{expected_hash(expected)[:16]}...; it is not the model you asked to audit: "
            "check --model (or drop --expect-hash)"
        )


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
    expect_hash: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    echo: Callable[[str], None] | None = None,
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Attack ``model_spec`` and write report.json / report.html into ``out``.

    The report records the sha256 of the audited weights (``model_sha256``); with
    ``expect_hash`` a model with other weights is refused before any attack runs.
    """
    from excise.attacks.scorecard import audit
    from excise.report import audit_report, write_report

    out = Path(out)
    if expect_hash is not None:  # a malformed hash is an error before loading anything
        expected_hash(expect_hash)
    check_attacks(attacks)
    inputs = {"--model": model_spec, "--original": original_spec, "--forget": forget}
    inputs |= {"--retain": retain, "--data-dir": data_dir}
    check_output(out, overwrite=overwrite, inputs=inputs)  # before the long work, not after it
    options = {"allow_pickle": allow_pickle, "trust_remote_code": trust_remote_code}
    timer = Timer(echo)
    with timer.stage("load models"):
        model, tokenizer = load_model(model_spec, dtype=dtype, **options)
        model_sha256 = weights_sha256(model)
        check_hash(model_spec, model_sha256, expect_hash)
        base, _ = load_model(original_spec, dtype=dtype, **options)
        original_sha256 = weights_sha256(base)
    with timer.stage("load task"):
        # items are filtered by what the original model knew, not by what is left
        chosen = resolve_task(
            base,
            tokenizer,
            task=task,
            forget=forget,
            retain=retain,
            template=template,
            data_dir=data_dir,
        )
        original, gold = references_for(original_spec, chosen, dtype=dtype, echo=echo, **options)
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
    report["model_sha256"] = model_sha256
    report["original_sha256"] = original_sha256
    with disk_errors(out), atomic_dir(out, overwrite=overwrite) as tmp:
        write_report(report, tmp)
        write_manifest(tmp)
    return report
