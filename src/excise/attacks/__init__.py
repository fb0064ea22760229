"""Attacks that try to bring removed knowledge back: a registry from name to (budget, run).

Each attack lives in its own module, registers itself with :func:`register`, and is called as
``run(model, tokenizer, task, *, budget, original=None, gold=None) -> AttackResult``. Its budget is
a dataclass (steps, learning rates, bits, fractions ...) whose fields go into the report, because
robustness claims only hold for the budget they were measured at. :func:`excise.attacks.scorecard.audit`
runs a set of attacks and builds the JSON-ready audit section.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from excise.attacks.base import AttackResult
from excise.errors import ConfigError
from excise.registry import Registry, make_config

ATTACKS = (
    "relearn",
    "soft_prompt",
    "embed_head",
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
    config_cls: type  # the budget: what the attacker may spend (recorded in the report)
    run: Callable[..., AttackResult]

    @property
    def budget_cls(self) -> type:
        return self.config_cls


ATTACKS_REGISTRY: Registry[AttackSpec] = Registry("attack", "excise.attacks", ATTACKS)
register = ATTACKS_REGISTRY.register
all_attacks = ATTACKS_REGISTRY.all
get_attack = ATTACKS_REGISTRY.get


def make_budget(name: str, budget: Any = None) -> Any:
    """The attack's budget: its defaults, a dict of overrides (unknown keys rejected), or as given."""
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
