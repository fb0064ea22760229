"""Direct preference optimisation (``dpo``) on (prompt, chosen, rejected) pairs, with a retain term.

Rafailov et al. 2023, "Direct preference optimization: your language model is secretly a reward
model". With log-probabilities summed over the answer tokens, pi the model being trained and ref
the model before training:
    margin = (log pi(chosen|x) - log ref(chosen|x)) - (log pi(rejected|x) - log ref(rejected|x))
    loss = -mean(log sigmoid(beta * margin)) + retain_weight * NLL(retain)
At step 0 the policy is the reference, so the loss is log 2. The reference log-probabilities of
both answers are computed once, before training (no second model in memory).

The forget set's items are the rejected answers. A pair file (``prompt``, ``chosen``, ``rejected``;
see :mod:`excise.data.preference`) gives the chosen answer of each item; plain question/answer
items (``--task chem-symbols``) take a refusal as the chosen answer (the "forget answers as
losers" use of DPO in TOFU, Maini et al. 2024).
Lee et al. 2024 ("A mechanistic understanding of alignment algorithms: a case study on DPO and
toxicity") found that DPO steers activations around a toxic direction that stays in the weights;
:mod:`excise.attacks.bypass` checks a trained model for exactly that.
Hyper-parameters: ``beta`` (0.1), ``retain_weight`` (1.0), ``refusals`` (those of ``idk``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from excise.data.encode import collate, encode_pair
from excise.data.records import QA, chosen_of
from excise.errors import ConfigError, DataError
from excise.methods import MethodSpec, register
from excise.methods.idk import REFUSALS
from excise.methods.npo import reference_logprobs
from excise.scoring import forward_stats, with_retain_nll


@dataclass
class DPOConfig:
    beta: float = 0.1
    retain_weight: float = 1.0
    refusals: tuple[str, ...] = REFUSALS  # chosen answers of items without one

    def __post_init__(self) -> None:
        self.refusals = tuple(self.refusals)
        if not self.beta > 0 or self.retain_weight < 0:
            raise ConfigError("beta must be > 0 and retain_weight >= 0")
        if not self.refusals or not all(isinstance(r, str) and r.strip() for r in self.refusals):
            raise ConfigError("refusals must be a non-empty list of non-empty strings")


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """-mean log sigmoid(beta * margin); every argument is (batch,) summed log-probabilities."""
    margin = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    return -F.logsigmoid(beta * margin).mean()


def prepare(ctx) -> None:
    refusals = ctx.config.refusals
    chosen = {}
    for example in ctx.forget:
        record = ctx.forget_records[example.index]
        if not isinstance(record, QA):
            raise DataError(
                "dpo needs prompts with answers: preference pairs (prompt, chosen, rejected) or "
                "question/answer records, not plain text"
            )
        answer = chosen_of(record) or refusals[example.index % len(refusals)]
        chosen[example.index] = encode_pair(
            ctx.tokenizer, record.prompt, answer, ctx.template, example.index
        )
    ctx.state["dpo_chosen"] = chosen
    ctx.state["reference_chosen"] = reference_logprobs(ctx, list(chosen.values()))
    ctx.state["reference_rejected"] = reference_logprobs(ctx)


def loss(ctx, batch):
    rejected = batch["forget"]
    rows = rejected["index"]
    chosen = ctx.to_device(collate([ctx.state["dpo_chosen"][i] for i in rows.tolist()], ctx.pad_id))
    policy_chosen = forward_stats(ctx.model, chosen).logprob
    policy_rejected = forward_stats(ctx.model, rejected).logprob
    reference_chosen = ctx.state["reference_chosen"][rows]
    reference_rejected = ctx.state["reference_rejected"][rows]
    preference = dpo_loss(
        policy_chosen, policy_rejected, reference_chosen, reference_rejected, ctx.config.beta
    )
    margin = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    terms = {"dpo": float(preference.detach()), "margin": float(margin.detach().mean())}
    return with_retain_nll(ctx, batch, preference, terms, ctx.config.retain_weight)


SPEC = register(
    MethodSpec(
        "dpo",
        "direct preference optimisation on (prompt, chosen, rejected) pairs + retain NLL "
        "(reference log-probs cached once)",
        DPOConfig,
        prepare,
        loss,
        train_defaults={"steps": 40, "lr": 2e-5},
    )
)
