"""Sharpness-aware NPO (``sam_npo``): Fan et al. 2025, "Towards LLM unlearning resilient to
relearning attacks: a sharpness-aware minimization perspective and beyond" (ICML 2025).

Relearning is a small weight perturbation that lowers the forget loss again; the paper casts
robust unlearning as min over theta of max over ||delta|| <= rho of the forget loss at theta + delta,
and solves the inner max as SAM does (Foret et al. 2021), to first order:
    delta = rho * g / ||g||,  g = grad of L_forget at theta
    loss  = L_forget(theta + delta) + retain_weight * NLL_retain(theta)
with L_forget the NPO loss (against the log-probabilities of the model before training, cached
once). The gradient of the first term is taken at theta + delta and applied to theta (delta is
held constant, as in SAM); the perturbed weights live only in a ``functional_call``, the real
weights are never moved. A step costs one more forward/backward of the forget batch than NPO.

Hyper-parameters: ``rho`` (0.05: the L2 radius over all trained weights), ``beta`` (0.1),
``retain_weight`` (1.0). Training defaults: those of ``npo`` (40 steps, lr 2e-5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import functional_call

from excise.errors import ConfigError
from excise.methods import MethodSpec, register
from excise.methods.npo import drawn_reference_logprobs, npo_loss
from excise.scoring import sequence_stats, with_retain_nll


@dataclass
class SAMNPOConfig:
    rho: float = 0.05
    beta: float = 0.1
    retain_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.rho < 0 or self.beta <= 0 or self.retain_weight < 0:
            raise ConfigError("sam_npo rho must be >= 0, beta > 0 and retain_weight >= 0")


def prepare(ctx) -> None:
    ctx.state["reference_logprob"] = drawn_reference_logprobs(ctx)


def forget_loss(ctx, params: dict[str, torch.Tensor], forget) -> torch.Tensor:
    """The NPO loss of the forget batch with the model's trained weights replaced by ``params``."""
    inputs = {"input_ids": forget["input_ids"], "attention_mask": forget["attention_mask"]}
    logits = functional_call(ctx.unwrapped, params, (), {**inputs, "use_cache": False}).logits
    policy = sequence_stats(logits, forget["labels"]).logprob
    reference = ctx.state["reference_logprob"][forget["index"]]
    return npo_loss(policy, reference, ctx.config.beta)


def ascent_direction(loss: torch.Tensor, params: dict[str, torch.Tensor], rho: float):
    """SAM's worst-case perturbation to first order: rho * g / ||g||, one tensor per weight."""
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    grads = [
        torch.zeros_like(p) if g is None else g for p, g in zip(params.values(), grads, strict=True)
    ]
    norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads))
    scale = rho / (float(norm) + 1e-12)
    return {name: (g * scale).detach() for name, g in zip(params, grads, strict=True)}


def loss(ctx, batch):
    forget = batch["forget"]
    params = {n: p for n, p in ctx.unwrapped.named_parameters() if p.requires_grad}
    terms: dict[str, float] = {}
    if ctx.config.rho > 0:
        with torch.enable_grad():  # the direction needs a gradient even where the caller has none
            clean = forget_loss(ctx, params, forget)
            delta = ascent_direction(clean, params, ctx.config.rho)
        terms["npo"] = float(clean.detach())
        # theta + delta with delta constant: the gradient reaches theta unchanged (SAM)
        params = {name: p + delta[name] for name, p in params.items()}
    perturbed = forget_loss(ctx, params, forget)
    terms["npo_sam"] = float(perturbed.detach())
    return with_retain_nll(ctx, batch, perturbed, terms, ctx.config.retain_weight)


SPEC = register(
    MethodSpec(
        "sam_npo",
        "NPO at the worst nearby weights (sharpness-aware), so relearning finds a flat forget loss",
        SAMNPOConfig,
        prepare,
        loss,
        train_defaults={"steps": 40, "lr": 2e-5},
        shardable=False,  # functional_call on its own weight copies bypasses FSDP's gathers
    )
)
