"""Refusal targets (``idk``): fine-tune forget prompts towards "I don't know"-style answers.

Maini et al. 2024 (TOFU), the "IdK" variant of preference-free unlearning: the forget answers are
replaced by refusals and trained with ordinary NLL, plus NLL on the retain set.
Hyper-parameters: ``refusals`` (six short refusals, chosen per item), ``retain_weight`` (1.0).
"""

from __future__ import annotations

from dataclasses import dataclass

from excise.data.encode import collate, encode_pair
from excise.data.records import QA
from excise.errors import ConfigError, ExciseError
from excise.methods import MethodSpec, register
from excise.scoring import nll

REFUSALS = (
    " I don't know.",
    " I'm not sure.",
    " I cannot answer that.",
    " That is unknown to me.",
    " I have no idea.",
    " I can't say.",
)


@dataclass
class IdkConfig:
    refusals: tuple[str, ...] = REFUSALS
    retain_weight: float = 1.0

    def __post_init__(self) -> None:
        self.refusals = tuple(self.refusals)
        if not self.refusals or not all(isinstance(r, str) and r.strip() for r in self.refusals):
            raise ConfigError("refusals must be a non-empty list of non-empty strings")
        if self.retain_weight < 0:
            raise ConfigError("retain_weight must be >= 0")


def prepare(ctx) -> None:
    refusals = ctx.config.refusals
    targets = {}
    for example in ctx.forget:
        record = ctx.forget_records[example.index]
        if not isinstance(record, QA):
            raise ExciseError("idk needs question/answer forget records (prompt + completion)")
        refusal = refusals[example.index % len(refusals)]
        targets[example.index] = encode_pair(
            ctx.tokenizer, record.prompt, refusal, ctx.template, example.index
        )
    ctx.state["idk"] = targets


def loss(ctx, batch):
    rows = batch["forget"]["index"].tolist()
    refusal_batch = ctx.to_device(collate([ctx.state["idk"][i] for i in rows], ctx.pad_id))
    refusal_nll = nll(ctx.model, refusal_batch)
    refusal_term = ctx.release(refusal_nll)  # backwarded now where the loop allows it
    retain_nll = nll(ctx.model, batch["retain"])
    total = refusal_term + ctx.config.retain_weight * retain_nll
    return total, {"idk_nll": float(refusal_nll.detach()), "retain_nll": float(retain_nll.detach())}


SPEC = register(
    MethodSpec(
        "idk",
        "fine-tune forget prompts towards refusals + retain NLL",
        IdkConfig,
        prepare,
        loss,
        train_defaults={"steps": 30, "lr": 2e-5},
    )
)
