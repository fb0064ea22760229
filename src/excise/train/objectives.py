"""Training objectives that are not removal methods, for modules below the methods' floor.

:data:`FINETUNE` is plain fine-tuning: the next-token NLL of the batch's "forget" slot (which holds
the data to learn). Excise uses it to teach the fictitious facts (and the gold model), the relearn
attack to try to bring forgotten knowledge back (:func:`fine_tune`), and
:mod:`excise.methods.finetune` registers it as the ``finetune`` method. Hyper-parameters: none
beyond the training loop's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from excise.data.encode import Example
from excise.data.records import Record
from excise.scoring import nll
from excise.train.config import Batch, Context, TrainConfig
from excise.train.loop import train


@dataclass(frozen=True)
class Objective:
    """A :class:`~excise.train.config.Method` the loop trains, without a registry entry."""

    name: str
    config_cls: type
    prepare: Callable[[Context], None]
    loss: Callable[[Context, Batch], tuple[torch.Tensor, dict[str, float]]]
    uses_retain: bool = True


@dataclass
class FinetuneConfig:
    pass


def _no_preparation(ctx: Context) -> None:
    pass


def _finetune_loss(ctx: Context, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
    learn_nll = nll(ctx.model, batch["forget"])
    return learn_nll, {"nll": float(learn_nll.detach())}


FINETUNE = Objective("finetune", FinetuneConfig, _no_preparation, _finetune_loss, uses_retain=False)


def fine_tune(
    model: torch.nn.Module,
    tokenizer: Any,
    examples: list[Example],
    records: list[Record],
    template: str,
    config: TrainConfig,
    *,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Fine-tune ``model`` in place on ``examples`` (encoded ``records``) through the one loop."""
    return train(
        model,
        tokenizer,
        FINETUNE,
        FINETUNE.config_cls(),
        forget=examples,
        retain=[],
        forget_records=list(records),
        template=template,
        config=config,
        uses_retain=False,
        on_step=on_step,
    )
