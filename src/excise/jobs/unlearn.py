"""``excise unlearn`` as data and one function: :class:`UnlearnJob` and :func:`run`.

The stages: check the options and the output (before anything loads), load the model, resolve and
check the task, (teach, for taught tasks), evaluate, unlearn, evaluate again, optionally check for
a bypass and audit, then write model + report into ``out`` whole or not at all.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from excise import models
from excise.attacks.bypass import check_task
from excise.errors import ConfigError
from excise.fsutil import (
    atomic_dir,
    disk_errors,
    remove_checkpoints,
    write_manifest,
)
from excise.jobs.checks import check_training_data, setup_warnings
from excise.jobs.common import (
    Echo,
    answers_before,
    audit_known,
    audit_or_quick,
    check_attacks,
    check_choices,
    check_eval,
    evaluate_original,
    evaluate_task,
    job_task,
    load,
    reference_sources,
    training_watch,
)
from excise.jobs.places import check_places
from excise.jobs.training import early_settings, scales_lr, train_config, unlearn
from excise.methods import check_model, get_method, make_config, typed_options
from excise.metrics import Evaluation, evaluate
from excise.metrics.benchmarks import benchmark_reference
from excise.metrics.generate import answer_sets
from excise.metrics.lmeval import check_utility, parse_utility
from excise.progress import Timer
from excise.report import build_report, examples, write_report
from excise.train import TrainConfig, is_main_process, tracking
from excise.train.lora import LoraSettings, check_lora, merge_adapters

log = logging.getLogger("excise")


@dataclass(kw_only=True)
class UnlearnJob:
    """Remove what a forget set holds from ``model`` and keep the retain set.

    The data is a ``task`` (built-in, or a benchmark read from ``data_dir`` or the hub) or the
    user's ``forget`` (and ``retain``) files. ``options`` are the method's (``excise methods``),
    ``train`` overrides its tuned training settings (:class:`excise.train.TrainConfig`). With
    ``lora`` the method trains LoRA adapters, saved in ``OUT/adapter``; ``merge`` also writes the
    merged weights in ``OUT/model``. ``audit`` (``"all"`` or attack names) audits the result,
    ``bypass_check`` checks whether the behaviour's direction survives (:mod:`excise.attacks.bypass`),
    ``gold`` is a model never trained on the forget set (TOFU forget quality, MUSE PrivLeak) and
    ``utility`` (``lm-eval:TASKS``) adds lm-evaluation-harness scores. ``report_to`` logs to
    experiment trackers (:mod:`excise.train.tracking`), locally into ``logging_dir`` (default
    ``OUT.runs``). ``out=None`` writes nothing (and keeps no checkpoints). ``eval``: "full",
    "quick" (a fixed sample, :data:`excise.metrics.QUICK`) or "none" (no evaluation, no example
    answers); ``eval_every`` N: quick evaluation every N steps, the best step's weights kept
    (:mod:`excise.metrics.watch`).
    """

    method: str
    model: str = "smollm2-135m"
    task: str | None = None
    forget: str | None = None
    retain: str | None = None
    data_dir: str | None = None
    template: str = "auto"
    filter_known: bool | None = None  # None: built-in tasks only
    dtype: str = "float32"
    options: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    lora: LoraSettings | None = None
    merge: bool = False
    audit: str | list[str] | None = None
    bypass_check: bool = False
    gold: str | None = None
    utility: str | None = None
    out: str | Path | None = None
    overwrite: bool = False
    resume: bool = False
    report_to: str | list[str] | None = None
    logging_dir: str | None = None
    allow_pickle: bool = False
    trust_remote_code: bool = False
    eval: str = "full"
    eval_every: int | None = None
    quick_audit: bool = False  # without ``audit``: one relearning configuration (QUICK_AUDIT)

    def __post_init__(self) -> None:
        # an unknown method, option or attack fails here, before any loading
        check_choices(self.template, self.dtype)
        check_eval(self.eval, self.eval_every)
        spec = get_method(self.method)
        self.options = typed_options(spec.config_cls, self.options)  # "1e-3" -> 0.001, checked
        settings = self.settings()
        check_lora(spec, spec.config_cls, self.lora)  # before any loading, as in the loop
        if self.merge and self.lora is None:
            raise ConfigError("--merge merges LoRA adapters; it needs --lora R")
        if settings.steps < 1:
            raise ConfigError(f"steps must be >= 1 to unlearn anything, got {settings.steps}")
        if self.audit:
            check_attacks(self.audit)
        if self.utility is not None:
            parse_utility(self.utility)  # its task names are checked when it runs
        if self.out is None and self.resume:
            raise ConfigError("resume continues from OUT.ckpt: give out")

    def settings(self, model=None) -> TrainConfig:
        """The training settings as they will run (with ``model``: its lr, see train_config)."""
        return train_config(self.method, self.train, lora=self.lora is not None, model=model)

    def plan(self) -> str:
        """What running the job does, with the training settings as resolved."""
        data = (
            f"task {self.task}" + (f" from {self.data_dir}" if self.data_dir else "")
            if self.task
            else f"forget {self.forget}, retain {self.retain or '-'}"
        )
        options = ", ".join(f"{k}={v!r}" for k, v in self.options.items()) or "defaults"
        lora = ""
        if self.lora:
            lora = f"; LoRA rank {self.lora.rank}{', merged' if self.merge else ''}"
        audit = ", ".join([self.audit] if isinstance(self.audit, str) else self.audit or ["none"])
        settings = dataclasses.asdict(self.settings())
        return "\n".join(
            [
                "plan:",
                f"  model   {self.model} ({self.dtype})",
                f"  data    {data} (template {self.template})",
                f"  method  {self.method} ({options}){lora}",
                "  train   "
                + ", ".join(f"{k}={v}" for k, v in settings.items())
                + " (lr x the model's weight scale)" * scales_lr(self.method, self.train),
                f"  eval    {self.eval}"
                + (f", quick every {self.eval_every} steps" if self.eval_every else ""),
                f"  audit   {audit}",
                f"  out     {self.out}{' (overwrite)' if self.overwrite else ''}",
            ]
        )

    def recipe(self, template: str, train: dict[str, Any]) -> dict[str, Any]:
        """The recipe that repeats this run (``OUT/recipe.yaml``): every training setting spelled
        out (``train``), the template as chosen, data paths made absolute."""

        def absolute(path: str | None) -> str | None:
            return str(Path(path).resolve()) if path and Path(path).exists() else path

        recipe: dict[str, Any] = {"model": absolute(self.model)}
        if self.task is not None:
            recipe["task"] = self.task
            if self.data_dir is not None:
                recipe["data_dir"] = absolute(self.data_dir)
            if self.gold is not None:
                recipe["gold"] = absolute(self.gold)
        else:
            recipe["data"] = {"forget": absolute(self.forget), "retain": absolute(self.retain)}
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        recipe.update(
            template=template,
            dtype=self.dtype,
            filter_known=self.filter_known,
            method={"name": self.method, "options": dict(self.options)},
            train={k: v for k, v in train.items() if k in fields},
        )
        if self.eval != "full" or self.eval_every:
            recipe["eval"] = {"mode": self.eval, "every": self.eval_every}
        if self.audit:
            recipe["audit"] = {"attacks": self.audit}
        if self.utility is not None:
            recipe["utility"] = self.utility
        if self.lora is not None:
            recipe["lora"] = {
                "rank": self.lora.rank,
                "alpha": self.lora.alpha,
                "targets": list(self.lora.targets) if self.lora.targets is not None else None,
                "dropout": self.lora.dropout,
                "merge": self.merge,
            }
        recipe["out"] = str(self.out)
        return json.loads(json.dumps(recipe))  # tuples -> lists: plain YAML

    def inputs(self) -> dict[str, str | None]:
        """What the job reads, by flag: ``out`` may be none of these, nor hold or lie inside one."""
        return {
            "--model": self.model,
            "--forget": self.forget,
            "--retain": self.retain,
            "--data-dir": self.data_dir,
            "--gold": self.gold,
        }


@dataclass
class UnlearnResult:
    """The unlearned model (with its tokenizer) and the report (also in ``OUT/report.json``)."""

    model: Any
    tokenizer: Any
    report: dict[str, Any]


def run(job: UnlearnJob, *, echo: Echo | None = None) -> UnlearnResult:
    """The whole job: returns the model and the report (also written, with the model, into
    ``job.out`` unless it is None). Training checkpoints go to ``OUT.ckpt`` (every
    ``checkpoint_every`` steps, and on Ctrl-C); ``resume`` continues from the newest. Under
    ``accelerate launch`` every process trains its share; only the main process writes."""
    settings = job.settings()
    lm_eval = parse_utility(job.utility) if job.utility is not None else None
    if lm_eval is not None:
        check_utility(lm_eval)
    method_config = make_config(get_method(job.method).config_cls, job.options)
    places = check_places(
        job.out,
        overwrite=job.overwrite,
        inputs=job.inputs(),
        report_to=job.report_to,
        logging_dir=job.logging_dir,
        resume=job.resume,
        settings=early_settings(job.method, job.train, settings, method_config),
    )
    timer = Timer(echo)
    with timer.stage("load model"):
        model, tokenizer = load(job.model, job)
    check_model(job.method, model)  # before the task's filter and the evaluation
    with timer.stage("load task"):
        task = job_task(job, model, tokenizer, filter_items=job.filter_known)
        task, data_warnings = check_training_data(
            task, model, tokenizer, method=job.method, bypass_check=job.bypass_check
        )
    if echo:
        echo(
            f"template: {task.template}{' (chosen by --template auto)' * (job.template == 'auto')}"
        )
    original_source, gold_source = job.model, None
    gold, gold_ratios = None, None
    if task.metadata.get("needs_teaching"):
        with timer.stage("teach (cached)"):
            # the model to unlearn is the one taught every fact; gold saw only the retained
            original_source, gold_source = reference_sources(
                job.model, task, dtype=job.dtype, echo=echo
            )
            model = load(original_source, job)[0]
            gold = load(gold_source, job)[0]
            if job.eval != "none":
                gold_eval = evaluate(gold, tokenizer, task, quick=job.eval == "quick")
                gold_ratios = gold_eval.details.get("forget_truth_ratio")
            if not job.audit:
                gold = None  # no second model held through training unless the audit needs it
    settings = job.settings(model)  # the lr as it will run: scaled to the model's weights
    reference = None
    if job.gold is not None:
        with timer.stage("score the gold model"):
            reference = benchmark_reference(load(job.gold, job)[0], tokenizer, task)
    original_sha256 = models.weights_sha256(model)
    tracker = tracking.open_tracker(
        places.trackers,
        folder=places.logs,
        run_name=f"{job.method}-{time.strftime('%Y%m%d-%H%M%S')}",
        config={"model": job.model, "task": task.name, "method": job.method}
        | {"options": job.options, "train": dataclasses.asdict(settings)},
        main_process=is_main_process(),
    )
    if tracker and echo:
        echo(f"[tracking] {tracker.where()}")
    scoring = {"reference": reference, "utility": lm_eval, "gold_truth_ratios": gold_ratios}
    shown, shown_before = (examples.pick(task) if job.eval != "none" else {}), {}
    before, from_cache = Evaluation({}, {}), False
    if job.eval != "none":
        with timer.stage("evaluate before"):
            before, from_cache = evaluate_original(
                model, tokenizer, task, mode=job.eval, weights=original_sha256, **scoring
            )
            # the original's answers now (cached): training changes the model in place
            shown_before = answers_before(model, tokenizer, shown, task.template, original_sha256)
    if echo and from_cache:
        echo("[evaluate before] the original's evaluation read from the cache")
    tracker.log_evaluation(before.metrics, step=0)
    watch = job.eval_every and training_watch(
        model, tokenizer, task, job.eval_every, settings.steps, original_sha256, tracker.log_step
    )
    setup = setup_warnings(before.metrics, task.template, requested=job.template)
    for warning in setup:
        log.warning("excise: warning: %s", warning)
    data_warnings += setup
    with timer.stage(f"unlearn ({job.method}, {settings.steps} steps)"):
        # checkpoints always have a folder: Ctrl-C saves one even without checkpoint_every
        loss_log = unlearn(
            model,
            tokenizer,
            task,
            job.method,
            method_options=job.options,
            train_options={**job.train, "lr": settings.lr},  # resolved once, above
            checkpoint_dir=places.checkpoints,
            resume=job.resume,
            lora=job.lora,
            on_step=watch or tracker.log_step,
        )
        eval_curve = watch.restore() if watch else None
        adapter = merge_adapters(model, job.model) if job.lora is not None else None
    after, shown_after = Evaluation({}, {}), {}
    if job.eval != "none":
        with timer.stage("evaluate after"):
            after = evaluate_task(model, tokenizer, task, quick=job.eval == "quick", **scoring)
            shown_after = answer_sets(model, tokenizer, shown, task.template)
    tracker.log_evaluation(after.metrics, step=settings.steps)
    bypass_result = None
    if job.bypass_check:
        with timer.stage("bypass check"):
            # a model never trained on the forget set is the relearning control, where there is one
            control = gold
            if control is None and gold_source is not None:
                control = load(gold_source, job)[0]
            elif control is None and job.gold is not None:
                control = load(job.gold, job)[0]
            original = load(original_source, job)[0]
            bypass_result = check_task(original, model, tokenizer, task, control=control)
    audit_result = None
    if job.audit or job.quick_audit:
        with timer.stage("audit" if job.audit else "quick audit (relearn)"):
            # the original from disk (``model`` changed in place), gold reused, evaluations read
            original = load(original_source, job)[0]
            known = audit_known(original, tokenizer, task, original_sha256, job.eval, before, after)
            audit_result = audit_or_quick(model, tokenizer, task, original, gold, job.audit, echo,
                                          known)  # fmt: skip
            del original, gold
        tracker.log_audit(audit_result, step=settings.steps)
    report = build_report(
        model_spec=job.model,
        task=task,
        method=job.method,
        method_options=job.options,
        train=dataclasses.asdict(settings),
        before=before,
        after=after,
        log=loss_log,
        timings=timer.seconds,
    )
    report["model_sha256"] = models.weights_sha256(model)
    report["original_sha256"] = original_sha256
    report["warnings"] = data_warnings
    report["examples"] = examples.combine(shown, shown_before, shown_after)
    report["evaluation"] = {"mode": job.eval, "before_from_cache": from_cache}
    if eval_curve is not None:
        report["eval_curve"] = eval_curve
    if tracker:
        report["tracking"] = {
            "report_to": places.trackers,
            "logging_dir": str(places.logs.resolve()),
            "run": tracker.run_name,
        }
    tracker.finish()
    if audit_result is not None:
        report["audit"] = audit_result
    if bypass_result is not None:
        report["bypass"] = bypass_result.to_dict()
    if adapter is not None:
        report["lora"] = {
            "rank": job.lora.rank,
            "alpha": job.lora.scale_alpha,
            "dropout": job.lora.dropout,
            "layers": adapter.layers,
            "merged": job.merge,
        }
    result = UnlearnResult(model, tokenizer, report)
    # the other processes of `accelerate launch` hold the same model; only the main one writes
    if job.out is None or not is_main_process():
        return result
    out = Path(job.out)
    with disk_errors(out), atomic_dir(out, overwrite=job.overwrite) as tmp:
        with timer.stage("save"):
            if adapter is None or job.merge:
                models.save_model(model, tokenizer, tmp / "model")
            if adapter is not None:
                adapter.save(tmp / "adapter")
        write_report(report, tmp)
        # ``excise run OUT/recipe.yaml --out NEW`` repeats this run
        recipe = job.recipe(task.template, dataclasses.asdict(settings))
        (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
        write_manifest(tmp)
    remove_checkpoints(places.checkpoints)
    return result
