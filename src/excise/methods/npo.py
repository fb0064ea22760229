"""Negative preference optimisation (``npo``), with a retain term (NPO+RT).

Zhang et al. 2024, "Negative Preference Optimization: from catastrophic collapse to effective
unlearning". With r = log pi(y|x) - log pi_ref(y|x) summed over the answer tokens:
    loss = -(2/beta) * mean(log sigmoid(-beta * r)) + retain_weight * NLL(retain)
The reference log-probabilities are computed once, before training, from the model as it is then;
no second model is held in memory.
Hyper-parameters: ``beta`` (0.1), ``retain_weight`` (1.0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn.functional as F

from excise.errors import ConfigError
from excise.methods import MethodSpec, register
from excise.scoring import forget_and_retain_stats, stats_for_examples, with_retain_nll


@dataclass
class NPOConfig:
    beta: float = 0.1
    retain_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.beta <= 0 or self.retain_weight < 0:
            raise ConfigError("beta must be > 0 and retain_weight >= 0")


def reference_logprobs(ctx, examples=None, *, size: int | None = None):
    """log pi_ref(y|x) for every forget example (or every one of ``examples``), indexed by
    ``Example.index`` (``size`` entries at least; entries not computed are NaN, so a batch that
    reads one diverges loudly): computed once, so no reference model is held through training."""
    examples = ctx.forget if examples is None else examples
    stats = stats_for_examples(ctx.unwrapped, examples, ctx.pad_id)
    table = stats.logprob.new_full((max([e.index + 1 for e in examples] + [size or 0]),), math.nan)
    table[[e.index for e in examples]] = stats.logprob
    return table.to(ctx.accelerator.device)


def drawn_reference_logprobs(ctx):
    """:func:`reference_logprobs` of the forget examples the run's batches will hold only (all
    of them unless the run is short), for methods whose loss reads the loop's batches alone."""
    size = max(e.index for e in ctx.forget) + 1
    return reference_logprobs(ctx, ctx.state.get("forget_drawn"), size=size)


def prepare(ctx) -> None:
    ctx.state["reference_logprob"] = drawn_reference_logprobs(ctx)


def npo_loss(policy_logprob, reference_logprob, beta: float):
    return -(2.0 / beta) * F.logsigmoid(-beta * (policy_logprob - reference_logprob)).mean()


def loss(ctx, batch):
    forget = batch["forget"]
    weight = ctx.config.retain_weight
    stats, retain_stats = forget_and_retain_stats(ctx, batch, weight)  # one forward if it must
    reference = ctx.state["reference_logprob"][forget["index"]]
    forget_loss = npo_loss(stats.logprob, reference, ctx.config.beta)
    terms = {"npo": float(forget_loss.detach())}
    return with_retain_nll(ctx, batch, forget_loss, terms, weight, retain_stats)


SPEC = register(
    MethodSpec(
        "npo",
        "negative preference optimisation + retain NLL (reference log-probs cached once)",
        NPOConfig,
        prepare,
        loss,
        train_defaults={"steps": 40, "lr": 2e-5},
    )
)
