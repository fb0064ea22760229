"""Tamper-resistant training (``tar``): Tamirisa et al. 2024, "Tamper-resistant safeguards for
open-weight LLMs".

Warm start: unlearn with ``init_method`` through the one training loop (the paper's first stage is
an unlearning safeguard). Then every outer step simulates a relearning attack from the current
weights theta: ``inner_steps`` fine-tuning steps (Adam, fresh state, gradients clipped to norm 1,
as the audit's relearn attack) on forget examples outside the step's forget batch, run on a
functional copy theta' of the weights (``torch.func.functional_call``; the real weights are never
touched). The loss is
    tr_weight * L_TR(theta'_K) + clean_weight * L_TR(theta) + retain_weight * NLL_retain(theta)
with L_TR on the step's forget batch: "entropy" (minus the mean entropy of the next-token
distribution at answer positions, the paper's choice for knowledge restriction) or "npo"
(NPO against the log-probabilities of the model before the warm start). The gradient of
L_TR(theta'_K) is taken first-order (d theta'_K / d theta ~ I, as in the paper): it flows to the
real weights through a surrogate sum(theta * g) whose value is replaced by L_TR(theta'_K).

Hyper-parameters: ``init_method`` ("npo"; None starts from the model as given), ``init_options``,
``init_train``, ``inner_steps`` (4), ``inner_lr`` (1e-4: the audit's full fine-tuning lr),
``tr_loss`` ("entropy"), ``tr_weight`` (1.0), ``clean_weight`` (1.0), ``retain_weight`` (1.0),
``npo_beta`` (0.1), ``seed`` (0). Training defaults: 40 outer steps, lr 2e-5. Each outer step costs
about inner_steps + 3 forward/backward passes; the functional copy and its Adam moments hold three
more copies of the trainable weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch.func import functional_call

from excise.data.encode import IGNORE, collate
from excise.errors import ConfigError
from excise.methods import MethodSpec, register
from excise.methods.npo import npo_loss, reference_logprobs
from excise.methods.warmstart import check_init_method, forget_mark, recall, remember, unlearn_first
from excise.scoring import forward_stats, sequence_stats, with_retain_nll
from excise.train import batch_indices


@dataclass
class TARConfig:
    init_method: str | None = "npo"
    init_options: dict[str, Any] = field(default_factory=dict)
    init_train: dict[str, Any] = field(default_factory=dict)
    inner_steps: int = 4
    inner_lr: float = 1e-4
    tr_loss: Literal["entropy", "npo"] = "entropy"
    tr_weight: float = 1.0
    clean_weight: float = 1.0
    retain_weight: float = 1.0
    npo_beta: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.inner_steps < 1 or self.inner_lr <= 0:
            raise ConfigError("tar inner_steps must be >= 1 and inner_lr > 0")
        if self.tr_loss not in ("entropy", "npo"):
            raise ConfigError(f"tar tr_loss must be entropy or npo, got {self.tr_loss!r}")
        if min(self.tr_weight, self.clean_weight, self.retain_weight) < 0 or self.npo_beta <= 0:
            raise ConfigError("tar weights must be >= 0 and npo_beta > 0")
        check_init_method(self.init_method)


def _logits(model, params: dict[str, torch.Tensor], batch) -> torch.Tensor:
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    return functional_call(model, params, (), {**inputs, "use_cache": False}).logits


def answer_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean entropy of the next-token distributions that predict answer tokens."""
    targets = torch.zeros_like(labels, dtype=torch.bool)
    targets[:, :-1] = labels[:, 1:] != IGNORE
    logprobs = torch.log_softmax(logits[targets].float(), dim=-1)  # (targets, vocab)
    return -(logprobs.exp() * logprobs).sum(-1).mean()


def tr_loss(ctx, logits: torch.Tensor, forget) -> torch.Tensor:
    if ctx.config.tr_loss == "entropy":
        return -answer_entropy(logits, forget["labels"])
    policy = sequence_stats(logits, forget["labels"]).logprob
    reference = ctx.state["reference_logprob"][forget["index"]]
    return npo_loss(policy, reference, ctx.config.npo_beta)


def attack(ctx, params: dict[str, torch.Tensor], avoid: set[int]) -> dict[str, torch.Tensor]:
    """Weights after ``inner_steps`` Adam steps of fine-tuning on forget examples not in ``avoid``."""
    config, model = ctx.config, ctx.unwrapped
    pool = [e for e in ctx.forget if e.index not in avoid] or list(ctx.forget)
    size = min(len(pool), len(avoid) or 8)
    fast = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
    first = {n: torch.zeros_like(p) for n, p in fast.items()}
    second = {n: torch.zeros_like(p) for n, p in fast.items()}
    for k in range(config.inner_steps):
        draw = ctx.state.get("step", 0) * config.inner_steps + k
        rows = batch_indices(len(pool), size, draw, config.seed + 7)
        batch = ctx.to_device(collate([pool[i] for i in rows], ctx.pad_id))
        with torch.enable_grad():
            stats = sequence_stats(_logits(model, fast, batch), batch["labels"])
            nll = -stats.logprob.sum() / stats.tokens.sum().clamp(min=1)
            grads = torch.autograd.grad(nll, list(fast.values()))
        norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads))
        scale = min(1.0, 1.0 / (float(norm) + 1e-6))  # clip to norm 1, as the training loop
        with torch.no_grad():
            for (name, weight), grad in zip(fast.items(), grads, strict=True):
                grad = grad * scale
                first[name].mul_(0.9).add_(grad, alpha=0.1)
                second[name].mul_(0.999).addcmul_(grad, grad, value=0.001)
                m_hat = first[name] / (1 - 0.9 ** (k + 1))
                v_hat = second[name] / (1 - 0.999 ** (k + 1))
                weight.sub_(config.inner_lr * m_hat / (v_hat.sqrt() + 1e-8))
    return fast


def prepare(ctx) -> None:
    model, config = ctx.unwrapped, ctx.config
    for param in model.parameters():
        param.requires_grad_(True)
    if (earlier := recall(model, "tar")) is not None:
        ctx.state.update(earlier)
        return
    if config.tr_loss == "npo":
        ctx.state["reference_logprob"] = reference_logprobs(ctx)
    if config.init_method:
        unlearn_first(ctx, config.init_method, config.init_options, config.init_train)
    remember(model, "tar", dict(ctx.state))


def loss(ctx, batch):
    config, model = ctx.config, ctx.unwrapped
    forget = batch["forget"]
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    total = torch.zeros((), device=forget["input_ids"].device)
    terms: dict[str, float] = {}
    if config.tr_weight > 0:
        attacked = attack(ctx, params, set(forget["index"].tolist()))
        with torch.enable_grad():
            attacked_loss = tr_loss(ctx, _logits(model, attacked, forget), forget)
            grads = torch.autograd.grad(attacked_loss, list(attacked.values()))
        surrogate = sum((p * g).sum() for p, g in zip(params.values(), grads, strict=True))
        # first-order meta-gradient: gradient g on theta, value L_TR(theta'_K)
        total = total + config.tr_weight * (surrogate - surrogate.detach() + attacked_loss.detach())
        terms["tr_attacked"] = float(attacked_loss.detach())
    if config.clean_weight > 0:
        if config.tr_loss == "entropy":
            clean = tr_loss(ctx, ctx.model(**_inputs(forget)).logits, forget)
        else:
            policy = forward_stats(ctx.model, forget).logprob
            reference = ctx.state["reference_logprob"][forget["index"]]
            clean = npo_loss(policy, reference, config.npo_beta)
        total = total + config.clean_weight * clean
        terms["tr_clean"] = float(clean.detach())
    return with_retain_nll(ctx, batch, total, terms, config.retain_weight)


def _inputs(batch) -> dict[str, Any]:
    return {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "use_cache": False,
    }


SPEC = register(
    MethodSpec(
        "tar",
        "tamper resistance: simulate relearning attacks each step, keep the attacked model ignorant",
        TARConfig,
        prepare,
        loss,
        train_defaults={"steps": 40, "lr": 2e-5},
        finish=forget_mark,
        shardable=False,  # functional_call on its own weight copies bypasses FSDP's gathers
    )
)
