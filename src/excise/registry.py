"""One registry shape for every pluggable kind: removal methods, attacks, editors, erasers.

A kind is a :class:`Registry` of specs (frozen dataclasses with at least ``name``, ``summary`` and
``config_cls``). Each implementation lives in its own module of the kind's package and registers
itself at import with ``REGISTRY.register(Spec(...))``; the registry imports its modules on first
use, so adding one is one file plus its name in the registry's module list. Configs are built
and checked here, the same way for every kind and for recipes: :func:`make_config`.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Iterator
from typing import Any, Generic, Protocol, TypeVar

from excise.errors import ConfigError, ExciseError


class Spec(Protocol):
    name: str
    summary: str  # one line, for listings and reports
    config_cls: type  # a dataclass: the options (or budget) and their defaults


S = TypeVar("S", bound=Spec)


class Registry(Generic[S]):
    """Name -> spec for one kind; ``modules`` (of ``package``) register their specs on import."""

    def __init__(self, kind: str, package: str, modules: tuple[str, ...]) -> None:
        self.kind = kind  # "method", "attack", ... for messages
        self.package = package
        self.modules = modules
        self._specs: dict[str, S] = {}

    def register(self, spec: S) -> S:
        if spec.name in self._specs:
            raise ValueError(f"{self.kind} {spec.name!r} is registered twice")
        if not dataclasses.is_dataclass(spec.config_cls):
            raise TypeError(f"{self.kind} {spec.name!r}: config_cls must be a dataclass")
        self._specs[spec.name] = spec
        return spec

    def _load(self) -> None:
        for module in self.modules:
            importlib.import_module(f"{self.package}.{module}")

    def all(self) -> dict[str, S]:
        """Every spec, in the order of ``modules`` (by its name, else by the module of its
        config class; the rest in registration order)."""
        self._load()
        rank = {name: index for index, name in enumerate(self.modules)}

        def place(name: str) -> int:
            module = self._specs[name].config_cls.__module__.rsplit(".", 1)[-1]
            return rank.get(name, rank.get(module, len(rank)))

        ordered = sorted(self._specs, key=place)
        return {name: self._specs[name] for name in ordered}

    def names(self) -> tuple[str, ...]:
        return tuple(self.all())

    def get(self, name: str) -> S:
        specs = self.all()
        if name not in specs:
            raise ExciseError(f"unknown {self.kind} {name!r}; available: {', '.join(specs)}")
        return specs[name]

    def config(self, name: str, options: dict[str, Any] | None = None) -> Any:
        """``name``'s config from user options (see :func:`make_config`)."""
        return make_config(self.get(name).config_cls, options)

    def __contains__(self, name: object) -> bool:
        return name in self.all()

    def __iter__(self) -> Iterator[str]:
        return iter(self.all())


def defaults(cls: type) -> dict[str, Any]:
    """A config class's options with their real defaults (``default_factory`` called)."""
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        if field.default is not dataclasses.MISSING:
            values[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            values[field.name] = field.default_factory()
        else:
            values[field.name] = "(required)"
    return values


def _adapter(cls: type) -> Any:
    from pydantic import TypeAdapter

    try:
        return TypeAdapter(cls)
    except Exception:  # a field type pydantic cannot describe: the dataclass checks itself
        return None


def make_config(cls: type, overrides: dict[str, Any] | None, *, label: str | None = None) -> Any:
    """Build a config dataclass from user options, typed as recipes are (pydantic, lax: ``"1e-3"``
    and ``"inf"`` are floats for a float field), then judged by the class's own checks; unknown
    keys and non-finite numbers are refused with a message that names the option."""
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
        where = f"{label}.{key}" if label else f"{cls.__name__}: option {key}"
        raise ConfigError(f"{where}: {first['msg']}, got {first.get('input')!r}") from None
    except TypeError as error:
        raise ConfigError(f"{cls.__name__}: {error}") from error
    for key in overrides:
        value = getattr(config, key)
        values = value if isinstance(value, list | tuple) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise ConfigError(f"{key} must be a finite number, got {value}")
    return config


def typed_options(
    cls: type, overrides: dict[str, Any] | None, *, label: str | None = None
) -> dict[str, Any]:
    """``overrides`` as ``cls`` reads them (``"1e-3"`` -> 0.001), checked by :func:`make_config`
    (``label`` names where a mistyped option was given, e.g. ``recipe.yaml: method.options``)."""
    config = make_config(cls, overrides, label=label)
    return {key: getattr(config, key) for key in overrides or {}}
