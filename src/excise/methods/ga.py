"""Gradient ascent (``ga``): maximise the forget set's negative log-likelihood.

The simplest baseline (e.g. Jang et al. 2023, "Knowledge Unlearning"). It has no retain term and
collapses the model if run long; kept as the reference weak removal the audit should catch.
Hyper-parameters: none beyond the training loop's (defaults: 20 steps, lr 2e-5).
"""

from __future__ import annotations

from dataclasses import dataclass

from excise.methods import MethodSpec, register
from excise.scoring import nll


@dataclass
class GAConfig:
    pass


def prepare(ctx) -> None:
    pass


def loss(ctx, batch):
    forget_nll = nll(ctx.model, batch["forget"])
    return -forget_nll, {"forget_nll": float(forget_nll.detach())}


SPEC = register(
    MethodSpec(
        "ga",
        "gradient ascent on the forget set (weak baseline, no retain term)",
        GAConfig,
        prepare,
        loss,
        uses_retain=False,
        train_defaults={"steps": 20, "lr": 2e-5},
    )
)
