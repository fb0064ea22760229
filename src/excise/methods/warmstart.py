"""Warm starts for removal methods that begin from an unlearned model (``tar``, ``distill``).

:func:`unlearn_first` runs another registered method in place through the one training loop.
Methods whose ``prepare`` changes the weights (a warm start, a perturbation) leave a mark on the
model with the state they cached; a second ``prepare`` on the same model before ``finish`` (a
resume in the same process) takes that state back instead of unlearning or perturbing again.
``finish`` removes the mark.
"""

from __future__ import annotations

from typing import Any

import torch

from excise.errors import ConfigError
from excise.scoring import nll

MARK = "_excise_prepared"  # attribute on the model: (method, cached state) until finish


def check_init_method(name: str | None) -> None:
    if name in ("tar", "distill", "finetune"):
        raise ConfigError(f"init_method {name!r} cannot start a removal; use ga, npo, rmu, ...")


def remember(model: torch.nn.Module, method: str, state: dict[str, Any]) -> None:
    setattr(model, MARK, (method, state))


def recall(model: torch.nn.Module, method: str) -> dict[str, Any] | None:
    """The state an earlier ``prepare`` of ``method`` left on this model, if training has not finished."""
    mark = getattr(model, MARK, None)
    return mark[1] if mark is not None and mark[0] == method else None


def forget_mark(ctx) -> None:
    if hasattr(ctx.unwrapped, MARK):
        delattr(ctx.unwrapped, MARK)


def unlearn_first(ctx, method: str, options: dict[str, Any], train_options: dict[str, Any]):
    """Run ``method`` on ``ctx``'s model in place through the training loop (a warm start)."""
    from excise.methods import get_method, make_config
    from excise.train import TrainConfig, train

    spec = get_method(method)
    settings = make_config(TrainConfig, {**spec.train_defaults, "progress": False, **train_options})
    log = train(
        ctx.unwrapped,
        ctx.tokenizer,
        spec,
        make_config(spec.config_cls, options),
        forget=ctx.forget,
        retain=ctx.retain,
        forget_records=ctx.forget_records,
        template=ctx.template,
        config=settings,
        uses_retain=spec.uses_retain,
    )
    ctx.unwrapped.train()  # train() leaves the model in eval mode
    return log


def retain_repair(ctx, batch):
    """The loss of methods whose removal happens in ``prepare`` (negation, perturbation): a light
    repair on the retain set (NLL) over the method's training steps."""
    retain_nll = nll(ctx.model, batch["retain"])
    return retain_nll, {"retain_nll": float(retain_nll.detach())}
