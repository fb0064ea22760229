"""Activation checkpointing (``gradient_checkpointing``): each decoder block keeps only its input
through the forward and runs again in the backward, so activations take about one block's worth
instead of every block's, for about one more forward of compute (Chen et al. 2016, "Training deep
nets with sublinear memory cost"). It is the Hugging Face model's own switch
(``gradient_checkpointing_enable``, non-reentrant ``torch.utils.checkpoint``), on for the
training steps only; the gradients are the same.

It composes with methods that stop the forward early (rmu, rr: :func:`excise.arch.run_until`):
transformers checkpoints a block's ``forward``, so the hooks on blocks that read or stop the
forward run outside the recomputed part. It is refused for methods that run the model on their
own weight copies (``shardable=False``: sam_npo, tar): the recomputation in the backward would
run the model's own weights instead of the copies, silently changing the gradients.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from excise.errors import ConfigError
from excise.train.config import Method, TrainConfig


def check_recompute(config: TrainConfig, method: Method, model: torch.nn.Module) -> None:
    """Refuse activation checkpointing where it cannot apply (before any long work)."""
    if not config.gradient_checkpointing:
        return
    name = getattr(method, "name", "this method")
    if not getattr(method, "shardable", True):
        raise ConfigError(
            f"{name} runs the model on its own weight copies, which activation checkpointing "
            "would not recompute; train it without gradient_checkpointing"
        )
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(
            f"this model ({type(model).__name__}) has no activation checkpointing; "
            "train it without gradient_checkpointing"
        )


@contextlib.contextmanager
def recomputed(module: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Within: ``module``'s blocks are checkpointed (when ``enabled``); after, as it was."""
    if not enabled:  # reading the state is a deprecation warning in transformers 5: not asked
        yield
        return
    # transformers 5 names it activation checkpointing; 4.x gradient checkpointing
    new = hasattr(module, "activation_checkpointing_enable")
    if getattr(
        module, "is_activation_checkpointing" if new else "is_gradient_checkpointing", False
    ):
        yield
        return
    if new:
        module.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False}
        )
    else:
        module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        yield
    finally:
        if new:
            module.activation_checkpointing_disable()
        else:
            module.gradient_checkpointing_disable()
