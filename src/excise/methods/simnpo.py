"""Simple NPO (``simnpo``): reference-free, length-normalised NPO with a retain term.

Fan et al. 2024, "Simplicity prevails: rethinking negative preference optimization for LLM
unlearning". With |y| the answer length:
    loss = -(2/beta) * mean(log sigmoid(-(beta/|y|) * log pi(y|x) - gamma)) + retain_weight * NLL(retain)
Hyper-parameters: ``beta`` (2.5), ``gamma`` (0.0), ``retain_weight`` (1.0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from excise.errors import ConfigError
from excise.methods import MethodSpec, register
from excise.scoring import forward_stats, with_retain_nll


@dataclass
class SimNPOConfig:
    beta: float = 2.5
    gamma: float = 0.0
    retain_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.beta <= 0 or self.retain_weight < 0 or self.gamma < 0:
            raise ConfigError("beta must be > 0, gamma and retain_weight >= 0")


def prepare(ctx) -> None:
    pass


def simnpo_loss(logprob, tokens, beta: float, gamma: float):
    normalised = logprob / tokens.clamp(min=1)
    return -(2.0 / beta) * F.logsigmoid(-beta * normalised - gamma).mean()


def loss(ctx, batch):
    stats = forward_stats(ctx.model, batch["forget"])
    forget_loss = simnpo_loss(stats.logprob, stats.tokens, ctx.config.beta, ctx.config.gamma)
    terms = {"simnpo": float(forget_loss.detach())}
    return with_retain_nll(ctx, batch, forget_loss, terms, ctx.config.retain_weight)


SPEC = register(
    MethodSpec(
        "simnpo",
        "reference-free length-normalised NPO + retain NLL",
        SimNPOConfig,
        prepare,
        loss,
        train_defaults={"steps": 40, "lr": 2e-5},
    )
)
