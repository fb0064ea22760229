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


def _adapter(cls: type) -> Any:
    from pydantic import TypeAdapter

    try:
        return TypeAdapter(cls)
    except Exception:  # a field type pydantic cannot describe: the dataclass checks itself
        return None


def make_config(cls: type, overrides: dict[str, Any] | None) -> Any:
    """Build a config dataclass from user options, typed as recipes are (pydantic, lax: ``"1e-3"``
    and ``"inf"`` are floats for a float field), then judged by the class's own checks; unknown
    keys and non-finite numbers are refused with a message that names the option."""
    import math

    from pydantic import ValidationError

    overrides = dict(overrides or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(map(str, set(overrides) - names))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} for {cls.__name__}; known: {', '.join(sorted(names))}"
        )
    adapter = _adapter(cls)
    try:
        config = cls(**overrides) if adapter is None else adapter.validate_python(overrides)
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "options"
        raise ConfigError(
            f"{cls.__name__}: option {key}: {first['msg']}, got {first.get('input')!r}"
        ) from None
    except TypeError as error:
        raise ConfigError(f"{cls.__name__}: {error}") from error
    for key in overrides:
        value = getattr(config, key)
        values = value if isinstance(value, list | tuple) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise ConfigError(f"{key} must be a finite number, got {value}")
    return config


def typed_options(cls: type, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """``overrides`` as ``cls`` reads them (``"1e-3"`` -> 0.001), checked by :func:`make_config`."""
    config = make_config(cls, overrides)
    return {key: getattr(config, key) for key in overrides or {}}
