"""Gradient-based removal methods: a registry from name to (config, prepare, loss).

A method registers itself with :func:`register`; the training loop in :mod:`excise.train` is the
same for all of them.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from excise.errors import ConfigError, ExciseError

UNLEARNING = ("ga", "graddiff", "npo", "simnpo", "idk", "dpo", "rmu", "rr", "tar", "distill")
MODULES = (*UNLEARNING, "finetune")


@dataclass(frozen=True)
class MethodSpec:
    name: str
    summary: str  # one line for `excise methods`
    config_cls: type
    prepare: Callable[[Any], None]
    loss: Callable[[Any, Any], tuple[torch.Tensor, dict[str, float]]]
    uses_retain: bool = True
    train_defaults: dict[str, Any] = field(default_factory=dict)  # tuned on the bundled model
    finish: Callable[[Any], None] | None = None  # after the last step (e.g. merge LoRA weights)
    shardable: bool = True  # False: cannot train an FSDP-sharded model (runs its own weights)


REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"method {spec.name!r} is registered twice")
    if not dataclasses.is_dataclass(spec.config_cls):
        raise TypeError(f"method {spec.name!r}: config_cls must be a dataclass")
    REGISTRY[spec.name] = spec
    return spec


def _load_all() -> None:
    for module in MODULES:
        importlib.import_module(f"excise.methods.{module}")


def all_methods() -> dict[str, MethodSpec]:
    _load_all()
    return dict(REGISTRY)


def get_method(name: str) -> MethodSpec:
    methods = all_methods()
    if name not in methods:
        raise ExciseError(f"unknown method {name!r}; available: {', '.join(sorted(methods))}")
    return methods[name]


def make_config(cls: type, overrides: dict[str, Any] | None) -> Any:
    """Build a config dataclass, rejecting unknown keys with a message that lists the known ones."""
    overrides = dict(overrides or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} for {cls.__name__}; known: {', '.join(sorted(names))}"
        )
    try:
        return cls(**overrides)
    except TypeError as error:
        raise ConfigError(f"{cls.__name__}: {error}") from error
