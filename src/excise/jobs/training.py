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
from excise.train import TrainConfig, checkpoint_settings, train
from excise.train.lora import LR_FACTOR, LoraSettings


def train_config(
    method: str, options: dict[str, Any] | None, *, lora: bool = False, model=None
) -> TrainConfig:
    """The method's tuned defaults, overridden by ``options`` (unknown keys rejected).

    With ``lora`` and no ``lr`` given, the default lr is ``excise.train.lora.LR_FACTOR`` times the
    method's (adapters start from zero and need larger steps than full fine-tuning). Given the
    ``model``, a default lr is also scaled by :func:`excise.arch.weight_scale` (the lrs were tuned
    on SmolLM2-135M) where the method's ``lr_from_weights``; an lr the user gives is kept."""
    defaults = dict(get_method(method).train_defaults)
    if lora:
        defaults["lr"] = defaults.get("lr", TrainConfig.lr) * LR_FACTOR
    if model is not None and scales_lr(method, options):
        defaults["lr"] = defaults.get("lr", TrainConfig.lr) * weight_scale(model)
    return make_config(TrainConfig, {**defaults, **(options or {})})


def scales_lr(method: str, options: dict[str, Any] | None) -> bool:
    """Whether the lr will be scaled to the model's weights: the method's default (not one the
    user gave) for a method whose ``lr_from_weights``."""
    return "lr" not in (options or {}) and get_method(method).lr_from_weights


def early_settings(
    method: str, options: dict[str, Any] | None, settings: TrainConfig, method_config
) -> dict[str, Any]:
    """What a checkpoint to resume must match, checked before the model loads: an lr scaled to
    the weights is known only once they do, and the training loop checks it then."""
    checked = checkpoint_settings(settings, method_config)
    if scales_lr(method, options):
        checked["later"] = ["train.lr"]
    return checked


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
