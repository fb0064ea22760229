"""Gradient difference (``graddiff``): ascend on forget NLL, descend on retain NLL.

Liu et al. 2022 ("Continual learning and private unlearning"); the TOFU baseline.
loss = -NLL(forget) + retain_weight * NLL(retain).
Hyper-parameters: ``retain_weight`` (1.0).
"""

from __future__ import annotations

from dataclasses import dataclass

from excise.errors import ConfigError
from excise.methods import MethodSpec, register
from excise.scoring import nll


@dataclass
class GradDiffConfig:
    retain_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.retain_weight < 0:
            raise ConfigError("retain_weight must be >= 0")


def prepare(ctx) -> None:
    pass


def loss(ctx, batch):
    forget_nll = nll(ctx.model, batch["forget"])
    forget_term = ctx.release(-forget_nll)  # backwarded now where the loop allows it
    retain_nll = nll(ctx.model, batch["retain"])
    total = forget_term + ctx.config.retain_weight * retain_nll
    return total, {
        "forget_nll": float(forget_nll.detach()),
        "retain_nll": float(retain_nll.detach()),
    }


SPEC = register(
    MethodSpec(
        "graddiff",
        "gradient ascent on forget + descent on retain",
        GradDiffConfig,
        prepare,
        loss,
        train_defaults={"steps": 30, "lr": 2e-5},
    )
)
