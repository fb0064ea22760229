"""Plain fine-tuning (``finetune``): minimise NLL on the given set.

Not a removal method: excise uses it to teach the fictitious facts (and the gold model), and the
relearn attack uses it to try to bring forgotten knowledge back; both reach the objective itself
(:data:`excise.train.objectives.FINETUNE`), which this module registers. The "forget" slot of the
loop holds the data to learn. Hyper-parameters: none beyond the training loop's.
"""

from __future__ import annotations

from excise.methods import MethodSpec, register
from excise.train.objectives import FINETUNE, FinetuneConfig

__all__ = ["SPEC", "FinetuneConfig"]

SPEC = register(
    MethodSpec(
        "finetune",
        "plain NLL fine-tuning on the given data (teaching; the relearn attack)",
        FINETUNE.config_cls,
        FINETUNE.prepare,
        FINETUNE.loss,
        uses_retain=FINETUNE.uses_retain,
        train_defaults={"steps": 20, "lr": 1e-4},
    )
)
