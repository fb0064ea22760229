"""Task-vector negation (``task_vector``): Ilharco et al. 2023, "Editing models with task arithmetic".

1. Fine-tune the model on the forget set (plain NLL on the answers, through the one training loop:
   ``ft_steps`` steps at ``ft_lr``); the weights move from theta_0 to theta_ft.
2. The task vector is tau = theta_ft - theta_0; negating it sets theta = theta_0 - alpha * tau.
   Only the fine-tuned direction is subtracted: what the model knew before is kept where the
   fine-tuning did not move it. ``alpha`` is the scaling coefficient (the paper picks it on
   held-out data; larger alpha forgets more and costs more utility).
3. The training steps (default 10 at lr 1e-5) are retain NLL, a light repair of what the
   negation broke; the method's own work is all in ``prepare``. (The unlearn job asks for at least
   one step; ``jobs.training.unlearn`` with ``steps=0`` gives the bare negation.)

Only the model's own copy of the weights is held beside theta_0 (one extra copy, on its device).
Hyper-parameters: ``alpha`` (2.0), ``ft_steps`` (20), ``ft_lr`` (1e-4), ``ft_batch_size`` (8),
``seed`` (0). A second ``prepare`` on the same model before ``finish`` (a resume in the same
process) does not negate again (:mod:`excise.methods.warmstart`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from excise.errors import ConfigError
from excise.methods import MethodSpec, register
from excise.methods.warmstart import forget_mark, recall, remember, retain_repair, unlearn_first


@dataclass
class TaskVectorConfig:
    alpha: float = 2.0
    ft_steps: int = 20
    ft_lr: float = 1e-4
    ft_batch_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.alpha > 0:
            raise ConfigError(f"task_vector alpha must be > 0, got {self.alpha}")
        if self.ft_steps < 1 or self.ft_batch_size < 1 or not self.ft_lr > 0:
            raise ConfigError("task_vector ft_steps and ft_batch_size must be >= 1, ft_lr > 0")


@torch.no_grad()
def negate(model: torch.nn.Module, start: dict[str, torch.Tensor], alpha: float) -> float:
    """theta <- theta_0 - alpha * (theta - theta_0) for the weights in ``start`` (theta_0);
    returns the norm of the task vector tau."""
    squares = 0.0
    for name, param in model.named_parameters():
        if name in start:
            tau = param - start[name]
            squares += float((tau.float() ** 2).sum())
            param.copy_(start[name] - alpha * tau)
    return squares**0.5


def prepare(ctx) -> None:
    model, config = ctx.unwrapped, ctx.config
    if (earlier := recall(model, "task_vector")) is not None:
        ctx.state.update(earlier)
    else:
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        train = {"steps": config.ft_steps, "lr": config.ft_lr, "batch_size": config.ft_batch_size}
        unlearn_first(ctx, "finetune", {}, {**train, "seed": config.seed})
        ctx.state["tau_norm"] = negate(model, start, config.alpha)
        del start
        remember(model, "task_vector", dict(ctx.state))
    for param in model.parameters():
        param.requires_grad_(True)


SPEC = register(
    MethodSpec(
        "task_vector",
        "task arithmetic: fine-tune on forget, subtract alpha x the weight difference",
        TaskVectorConfig,
        prepare,
        retain_repair,
        train_defaults={"steps": 10, "lr": 1e-5},
        finish=forget_mark,
    )
)
