"""Attacks that try to bring removed knowledge back: a registry from name to (budget, run).

Each attack lives in its own module, registers itself with :func:`register`, and is called as
``run(model, tokenizer, task, *, budget, original=None, gold=None) -> AttackResult``. Its budget is
a dataclass (steps, learning rates, bits, fractions ...) whose fields go into the report, because
robustness claims only hold for the budget they were measured at. :func:`excise.attacks.scorecard.audit`
runs a set of attacks and builds the JSON-ready audit section.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from excise.attacks.base import AttackResult
from excise.errors import ConfigError, ExciseError

ATTACKS = (
    "relearn",
    "quantize",
    "probe",
    "logit_lens",
    "paraphrase",
    "in_context",
    "orthogonalize",
    "prune",
    "mia",
)

__all__ = ["ATTACKS", "AttackResult", "AttackSpec", "all_attacks", "get_attack", "run_attack"]


@dataclass(frozen=True)
class AttackSpec:
    name: str
    summary: str  # one line, for listings and the report
    budget_cls: type
    run: Callable[..., AttackResult]


REGISTRY: dict[str, AttackSpec] = {}


def register(spec: AttackSpec) -> AttackSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"attack {spec.name!r} is registered twice")
    if not dataclasses.is_dataclass(spec.budget_cls):
        raise TypeError(f"attack {spec.name!r}: budget_cls must be a dataclass")
    REGISTRY[spec.name] = spec
    return spec


def all_attacks() -> dict[str, AttackSpec]:
    for name in ATTACKS:
        importlib.import_module(f"excise.attacks.{name}")
    return {name: REGISTRY[name] for name in ATTACKS}


def get_attack(name: str) -> AttackSpec:
    attacks = all_attacks()
    if name not in attacks:
        raise ExciseError(f"unknown attack {name!r}; available: {', '.join(attacks)}")
    return attacks[name]


def make_budget(name: str, budget: Any = None) -> Any:
    """The attack's budget: its defaults, a dict of overrides (unknown keys rejected), or as given."""
    from excise.methods import make_config

    spec = get_attack(name)
    if isinstance(budget, spec.budget_cls):
        return budget
    if budget is not None and not isinstance(budget, dict):
        raise ConfigError(f"the budget of attack {name!r} must be a mapping of options")
    return make_config(spec.budget_cls, budget)


def run_attack(
    name: str, model, tokenizer, task, *, budget: Any = None, original=None, gold=None
) -> AttackResult:
    """Run one attack by name; ``budget`` is its budget dataclass, a dict of overrides, or None."""
    spec = get_attack(name)
    return spec.run(
        model,
        tokenizer,
        task,
        budget=make_budget(name, budget),
        original=original,
        gold=gold,
    )


def __getattr__(name: str) -> Any:
    if name == "audit":  # lazy: the scorecard imports every attack module
        from excise.attacks.scorecard import audit

        return audit
    raise AttributeError(name)
