"""Gradient-based removal methods: a registry from name to (config, prepare, loss).

A method registers itself with :func:`register`; the training loop in :mod:`excise.train` is the
same for all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from excise.registry import Registry, make_config, typed_options

__all__ = [
    "METHODS",
    "MethodSpec",
    "check_model",
    "get_method",
    "make_config",
    "register",
    "typed_options",
]

UNLEARNING = (
    "ga",
    "graddiff",
    "npo",
    "simnpo",
    "sam_npo",
    "idk",
    "dpo",
    "rmu",
    "rr",
    "tar",
    "distill",
    "task_vector",
    "fisher_noise",
    "cir",
)
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
    # the default lr scales with the model's weights (excise.arch.weight_scale): methods whose
    # loss is on the outputs move every weight; rmu and rr steer activations at chosen layers to
    # targets already scaled to the model's activations (rmu on gemma-3-270m at 0.21x its lr:
    # forget 0.156 where the unscaled lr gives 0.031)
    lr_from_weights: bool = True
    # False: cannot train through --lora adapters (cir keeps the change of the base weights
    # itself out of chosen subspaces)
    takes_lora: bool = True
    # refuses a model the method does not work on (ConfigError), right after it loads
    check_model: Callable[[Any], None] | None = None


METHODS: Registry[MethodSpec] = Registry("method", "excise.methods", MODULES)
register = METHODS.register
all_methods = METHODS.all
get_method = METHODS.get


def check_model(name: str, model: Any) -> None:
    """Refuse ``model`` where method ``name`` is known not to work, before any long work."""
    check = get_method(name).check_model
    if check is not None:
        check(model)
