"""YAML recipes: one file names the model, the data, the method, the training and the audit.

```yaml
model: smollm2-135m            # bundled name, local folder, .gguf file or hub id
task: chem-symbols             # a built-in task or a benchmark (tofu:forget10, with data_dir), or:
# data: {forget: forget.jsonl, retain: retain.jsonl}
# data_dir: data/TOFU          # a benchmark's files (else read from the hub)
# gold: a/retain-model         # benchmarks: a model never trained on the forget set
# utility: lm-eval:mmlu        # optional lm-evaluation-harness tasks (excise[lmeval])
template: auto                 # auto | raw | chat
method:
  name: rmu                    # see `excise methods`
  options: {alpha: 1000}       # the method's options (checked against its config)
train: {steps: 150, lr: 5.0e-4}  # overrides of the method's tuned training defaults
audit: {attacks: [relearn, quantize]}  # optional; "all" runs every attack
eval: {mode: quick, every: 10}  # optional; evaluation none|quick|full, quick every N steps
lora: {rank: 8, merge: true}   # optional: train LoRA adapters (alpha, targets, dropout too)
out: runs/chem-symbols-rmu     # a folder that must not exist (or overwrite: true)
# report_to: tensorboard       # optional experiment trackers; logs in logging_dir (OUT.runs)
```

Relative paths are read from the current directory, as on the command line. Every key is
checked: an unknown key, a wrong type or an out-of-range value is a :class:`ConfigError` with one
line naming the key and what it accepts. A recipe parses into the job the command line builds:
an :class:`~excise.jobs.unlearn.UnlearnJob`, or an :class:`~excise.jobs.erase.EraseJob` for the
closed-form erasers. :func:`parse_recipe` checks a mapping without touching files;
:func:`load_recipe` reads the YAML and also reads the data files.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Strict, ValidationError

from excise.data.records import load_records
from excise.data.tasks import check_task_name
from excise.erasure import ERASERS
from excise.errors import ConfigError, ExciseError
from excise.fsutil import check_output
from excise.jobs.common import check_attacks
from excise.jobs.erase import EraseJob
from excise.jobs.training import train_config
from excise.jobs.unlearn import UnlearnJob
from excise.methods import get_method
from excise.metrics.lmeval import parse_utility
from excise.registry import make_config, typed_options
from excise.train.lora import LoraSettings


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a number, not true/false")
    return value


def _none_is_empty(value: Any) -> Any:
    return {} if value is None else value


Integer = Annotated[int, Strict()]
Number = Annotated[
    float, BeforeValidator(_no_bool)
]  # also reads "5e-4", which YAML leaves a string


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSection(Section):
    forget: str
    retain: str | None = None


class MethodSection(Section):
    name: str
    options: Annotated[dict[str, Any], BeforeValidator(_none_is_empty)] = {}


class TrainSection(Section):
    """Overrides of :class:`excise.train.TrainConfig`; unset keys keep the method's defaults."""

    steps: Integer | None = None
    batch_size: Integer | None = None
    grad_accum: Integer | None = None
    lr: Number | None = None
    weight_decay: Number | None = None
    warmup_steps: Integer | None = None
    schedule: Literal["constant", "linear", "cosine"] | None = None
    max_grad_norm: Number | None = None
    seed: Integer | None = None
    checkpoint_every: Integer | None = None
    progress: bool | None = None
    optimizer_in_backward: bool | None = None
    optimizer_states: Literal["fp32", "bf16", "8bit"] | None = None
    gradient_checkpointing: bool | None = None
    optimizer: Literal["adamw", "sgd"] | None = None


class AuditSection(Section):
    attacks: Literal["all"] | list[str] = "all"


class EvalSection(Section):
    """Evaluation before and after (none, quick, full) and quick evaluation every N steps."""

    mode: Literal["none", "quick", "full"] = "full"
    every: Integer | None = None


class LoraSection(Section):
    """LoRA adapters (:mod:`excise.train.lora`); ``merge`` also writes the merged weights."""

    rank: Integer
    alpha: Number | None = None
    targets: list[str] | None = None
    dropout: Number = 0.0
    merge: bool = False

    def settings(self) -> LoraSettings:
        targets = tuple(self.targets) if self.targets is not None else None
        return LoraSettings(self.rank, self.alpha, targets, self.dropout)


class Recipe(Section):
    model: str = "smollm2-135m"
    task: str | None = None
    data: DataSection | None = None
    data_dir: str | None = None
    gold: str | None = None
    utility: str | None = None
    template: Literal["auto", "raw", "chat"] = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    filter_known: bool | None = None
    method: MethodSection
    train: Annotated[TrainSection, BeforeValidator(_none_is_empty)] = TrainSection()
    audit: AuditSection | None = None
    eval: EvalSection | None = None
    lora: LoraSection | None = None
    out: str
    overwrite: bool = False
    report_to: str | list[str] | None = None  # experiment trackers (excise.train.tracking)
    logging_dir: str | None = None

    @property
    def erasure(self) -> bool:
        """A closed-form concept erasure (leace, ablate, clamp), run as ``excise erase``."""
        return self.method.name in ERASERS.names()

    def train_options(self) -> dict[str, Any]:
        return self.train.model_dump(exclude_none=True)

    def job(self) -> UnlearnJob | EraseJob:
        """The job this recipe describes, as the command line would build it."""
        data = {"forget": self.data.forget, "retain": self.data.retain} if self.data else {}
        common = {
            "method": self.method.name,
            "model": self.model,
            "task": self.task,
            **data,
            "data_dir": self.data_dir,
            "template": self.template,
            "filter_known": self.filter_known,
            "dtype": self.dtype,
            "options": dict(self.method.options),
            "out": self.out,
            "overwrite": self.overwrite,
        }
        if self.erasure:
            return EraseJob(**common)
        return UnlearnJob(
            **common,
            train=self.train_options(),
            audit=self.audit.attacks if self.audit else None,
            eval=self.eval.mode if self.eval else "full",
            eval_every=self.eval.every if self.eval else None,
            lora=self.lora.settings() if self.lora else None,
            merge=bool(self.lora and self.lora.merge),
            gold=self.gold,
            utility=self.utility,
            report_to=self.report_to,
            logging_dir=self.logging_dir,
        )


def _section(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The schema class that holds the key at ``loc`` (for listing its allowed keys)."""
    model: type[BaseModel] | None = Recipe
    for part in loc[:-1]:
        if model is None or part not in model.model_fields:
            return None
        model = _model_in(model.model_fields[part].annotation)
    return model


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, typing.Annotated):
        for arg in typing.get_args(annotation):
            if found := _model_in(arg):
                return found
    return None


def _message(error: ValidationError, source: str) -> str:
    """The first problem on one line, naming the key and what it accepts."""
    problems = error.errors()
    first = problems[0]
    loc = tuple(part for part in first["loc"] if not isinstance(part, int) or part >= 0)
    key = ".".join(str(part) for part in loc) or "(top level)"
    more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
    if first["type"] in ("extra_forbidden", "invalid_key"):
        section = _section(loc)
        allowed = ", ".join(section.model_fields) if section else "?"
        where = f" in {'.'.join(map(str, loc[:-1]))}" if len(loc) > 1 else ""
        return f"{source}: unknown key {str(loc[-1])!r}{where}; allowed keys: {allowed}{more}"
    if first["type"] == "missing":
        return f"{source}: {key} is required{more}"
    value = first.get("input")
    shown = repr(value) if not isinstance(value, dict | list) else type(value).__name__
    return f"{source}: {key}: {first['msg']}, got {shown[:60]}{more}"


def _config_class(name: str) -> type:
    if name in ERASERS.names():
        return ERASERS.get(name).config_cls
    return get_method(name).config_cls


def _method_options(name: str, options: dict[str, Any], source: str) -> dict[str, Any]:
    """The method's options, typed and checked as ``--set`` is (values as the config reads them,
    "5" -> 5, so the job sees the checked types)."""
    config_cls = _config_class(name)
    make_config(config_cls, {})  # the defaults themselves must be valid
    return typed_options(config_cls, options, label=f"{source}: method.options")


def parse_recipe(data: Any, source: str = "recipe") -> UnlearnJob | EraseJob:
    """The job a recipe given as a mapping describes; every problem is a one-line
    :class:`ConfigError` that starts with ``source``."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: a recipe is a mapping of keys (model, task, method, out, ...), "
            f"got {type(data).__name__}"
        )
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_message(error, source)) from None
    if (recipe.task is None) == (recipe.data is None):
        raise ConfigError(
            f"{source}: give either task (built-in or benchmark) or data (forget/retain files)"
        )
    if recipe.data_dir is not None and recipe.task is None:
        raise ConfigError(f"{source}: data_dir holds a benchmark's files; it needs a task")
    try:
        if recipe.task is not None:
            check_task_name(recipe.task)
        recipe.method.options = _method_options(recipe.method.name, recipe.method.options, source)
        if recipe.erasure:
            if recipe.train_options() or recipe.lora or recipe.audit or recipe.utility:
                raise ConfigError(
                    f"{recipe.method.name} is closed-form erasure (`excise erase`): drop the "
                    "train, lora, audit and utility sections"
                )
            return recipe.job()
        steps = train_config(
            recipe.method.name, recipe.train_options(), lora=recipe.lora is not None
        ).steps
        if recipe.lora is not None:
            recipe.lora.settings()  # rank, alpha, dropout in range
        if recipe.utility is not None:
            parse_utility(recipe.utility)  # task names are checked when it runs (lm-eval)
        if steps < 1:
            raise ConfigError(f"train.steps must be >= 1 to unlearn anything, got {steps}")
        if recipe.audit is not None:
            if not recipe.audit.attacks:
                raise ConfigError("audit.attacks is empty; list attacks or write all")
            check_attacks(recipe.audit.attacks)
        return recipe.job()
    except ExciseError as error:
        message = str(error)
        raise ConfigError(
            message if message.startswith(source) else f"{source}: {message}"
        ) from None


def load_recipe(path: str | Path) -> UnlearnJob | EraseJob:
    """The job of the recipe at ``path``, checked; its data files are read too."""
    path = Path(path)
    try:
        found = path.is_file()
    except OSError as error:  # a name longer than the file system allows, ...
        raise ConfigError(f"cannot read the recipe {str(path)[:80]!r}: {error.strerror}") from None
    if not found:
        raise ConfigError(f"recipe not found: {path}; give the path of a .yaml recipe")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; re-save the recipe as UTF-8") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(error, "problem", None) or "cannot parse"
        raise ConfigError(f"{where}: not valid YAML ({problem}); fix the syntax") from None
    job = parse_recipe(data, str(path))
    if job.forget is not None:
        load_records(job.forget, name="forget")
        if job.retain:
            load_records(job.retain, name="retain")
    return job


def override(job: UnlearnJob | EraseJob, **changes: Any) -> UnlearnJob | EraseJob:
    """``job`` with the command line's ``changes`` to the fields it has; a change of None keeps
    the recipe's value (``excise run --out``, ``--resume``, ``--report-to``, ...)."""
    names = {f.name for f in dataclasses.fields(job)}
    kept = {key: value for key, value in changes.items() if key in names and value is not None}
    return dataclasses.replace(job, **kept)


def check_recipe_out(job: UnlearnJob | EraseJob, recipe: str, *, dry_run: bool) -> str | None:
    """Everything about the recipe's ``out`` that can fail (ownership, inputs, writability)
    fails now; a dry run only warns (returned) that an existing ``out`` will be refused."""
    out = Path(job.out)
    if dry_run and out.exists() and not job.overwrite:
        return f"{out} exists; the run will refuse it unless you pass --overwrite"
    check_output(out, overwrite=job.overwrite, inputs={"the recipe": recipe})
    return None
