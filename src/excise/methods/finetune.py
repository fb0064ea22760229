"""Plain fine-tuning (``finetune``): minimise NLL on the given set.

Not a removal method: excise uses it to teach the fictitious facts (and the gold model), and the
relearn attack uses it to try to bring forgotten knowledge back. The "forget" slot of the loop
holds the data to learn. Hyper-parameters: none beyond the training loop's.
"""

from __future__ import annotations

from dataclasses import dataclass

from excise.methods import MethodSpec, register
from excise.scoring import nll


@dataclass
class FinetuneConfig:
    pass


def prepare(ctx) -> None:
    pass


def loss(ctx, batch):
    learn_nll = nll(ctx.model, batch["forget"])
    return learn_nll, {"nll": float(learn_nll.detach())}


SPEC = register(
    MethodSpec(
        "finetune",
        "plain NLL fine-tuning on the given data (teaching; the relearn attack)",
        FinetuneConfig,
        prepare,
        loss,
        uses_retain=False,
        train_defaults={"steps": 20, "lr": 1e-4},
    )
)
