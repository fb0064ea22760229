"""A removal method applied to a model in memory: :func:`unlearn` (what ``excise unlearn`` runs
between its two evaluations) and :func:`train_config`, the method's tuned training settings with
the user's overrides."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from excise.arch import weight_scale
from excise.data.encode import encode_records
from excise.data.tasks import Task
from excise.methods import get_method, make_config
from excise.train import TrainConfig, train
from excise.train.lora import LR_FACTOR, LoraSettings


def train_config(
    method: str, options: dict[str, Any] | None, *, lora: bool = False, model=None
) -> TrainConfig:
    """The method's tuned defaults, overridden by ``options`` (unknown keys rejected).

    With ``lora`` and no ``lr`` given, the default lr is ``excise.train.lora.LR_FACTOR`` times the
    method's (adapters start from zero and need larger steps than full fine-tuning). Given the
    ``model``, a default lr is also scaled by :func:`excise.arch.weight_scale` (the lrs were tuned
    on SmolLM2-135M) where the method's ``lr_from_weights``; an lr the user gives is kept."""
    spec = get_method(method)
    defaults = dict(spec.train_defaults)
    if lora:
        defaults["lr"] = defaults.get("lr", TrainConfig.lr) * LR_FACTOR
    if model is not None and spec.lr_from_weights:
        defaults["lr"] = defaults.get("lr", TrainConfig.lr) * weight_scale(model)
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

    With ``lora`` the model keeps its trained adapters; :func:`excise.train.lora.merge_adapters`
    folds them in and returns them."""
    spec = get_method(method)
    config = make_config(spec.config_cls, method_options)
    settings = train_config(method, train_options, lora=lora is not None, model=model)
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
