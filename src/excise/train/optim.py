"""The loop's optimizer: AdamW with its states in float32 (torch's, fused), bfloat16
(:mod:`excise.train.adamw_bf16`) or 8 bits (bitsandbytes' blockwise ``AdamW8bit``), and
:class:`InBackward`, which steps each weight from its gradient hook during the backward.

Optimizer in backward (``optimizer_in_backward``; torchtune's ``optimizer_in_bwd``): every
trained tensor gets its own optimizer, stepped by a post-accumulate-grad hook as soon as the
tensor's gradient is complete, and the gradient is freed at once, so the whole model's gradients
never exist together (the largest one at a time instead: -4 bytes per weight in float32). What
that rules out: clipping by the global gradient norm (the norm is known only after the last
gradient, when the others are applied and gone), so this mode does not clip (``max_grad_norm`` is
not used; the logged ``grad_norm`` is the norm of the gradients applied); accumulating
micro-batches (``grad_accum`` 1); backward in parts (the loss is backwarded once, both batches'
activations alive: pair it with ``gradient_checkpointing``); and more than one process. The lr
schedule drives the per-weight optimizers through shared parameter groups; a checkpoint holds
their states by parameter name.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable, Iterator
from typing import Any

import torch

from excise.errors import ConfigError
from excise.train.adamw_bf16 import AdamWBF16
from excise.train.config import TrainConfig

EIGHT_BIT = "bitsandbytes>=0.50"  # its AdamW8bit runs on CPU tensors too from 0.50 (measured)


def check_states(config: TrainConfig) -> None:
    """Refuse ``optimizer_states: 8bit`` where bitsandbytes is not installed (before long work)."""
    if config.optimizer_states == "8bit" and importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(
            f"optimizer_states 8bit needs {EIGHT_BIT} (pip install 'excise[8bit]'); "
            "or use bf16 states"
        )


def build(
    config: TrainConfig, groups: list[dict[str, Any]], *, fused: bool, seed: int = 0
) -> torch.optim.Optimizer:
    """AdamW over ``groups`` with the states ``config.optimizer_states`` asks for, or plain SGD
    where ``config.optimizer`` is sgd (no states to keep)."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr)
    if config.optimizer_states == "bf16":
        return AdamWBF16(groups, lr=config.lr, seed=seed)
    if config.optimizer_states == "8bit":
        import bitsandbytes  # lazy: optional, and slow to import

        return bitsandbytes.optim.AdamW8bit(groups, lr=config.lr)
    # one fused kernel instead of a loop over tensors: the optimizer step took 12-31% of a
    # full-model step on CPU and 0.11-0.22x of that fused (bench/README.md)
    return torch.optim.AdamW(groups, lr=config.lr, fused=fused)


def decay_of(param: torch.Tensor, config: TrainConfig) -> float:
    """No weight decay on vectors (norms, biases)."""
    return config.weight_decay if param.ndim >= 2 else 0.0


class InBackward(torch.optim.Optimizer):
    """One optimizer per trained tensor, each stepped from the tensor's gradient hook (module
    docstring). ``step`` and ``zero_grad`` do nothing: the hooks did both. Its
    ``param_groups`` are the per-tensor optimizers' own, so an lr scheduler drives them all."""

    def __init__(
        self,
        named: dict[str, torch.nn.Parameter],
        build: Callable[[list[dict[str, Any]], int], torch.optim.Optimizer],
    ) -> None:
        # build(groups, index): the optimizer of the index-th tensor (index seeds its rounding)
        self.optimizers = {
            name: build([{"params": [param]}], index)
            for index, (name, param) in enumerate(named.items())
        }
        super().__init__(list(named.values()), {})
        self.param_groups = [g for o in self.optimizers.values() for g in o.param_groups]
        self.named = named
        self.device = next(iter(named.values())).device
        self.squared_norm = torch.zeros((), device=self.device)

    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        return closure() if closure is not None else None

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass

    def grad_norm(self) -> float:
        """The norm of the gradients applied since the last call (one optimizer step's)."""
        norm = float(self.squared_norm.sqrt())
        self.squared_norm = torch.zeros((), device=self.device)
        return norm

    @contextlib.contextmanager
    def hooked(self) -> Iterator[None]:
        """Within: every backward steps each trained tensor as its gradient completes."""
        handles = [
            param.register_post_accumulate_grad_hook(self.hook(self.optimizers[name]))
            for name, param in self.named.items()
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def hook(self, optimizer: torch.optim.Optimizer) -> Callable[[torch.Tensor], None]:
        def apply(param: torch.Tensor) -> None:
            norm = torch.linalg.vector_norm(param.grad.detach(), dtype=torch.float32)
            self.squared_norm += norm.to(self.device) ** 2
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)  # freed now, before the next gradient

        return apply

    def state_dict(self) -> dict[str, Any]:
        return {"in_backward": {n: o.state_dict() for n, o in self.optimizers.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        states = state_dict.get("in_backward")
        if not isinstance(states, dict) or set(states) != set(self.optimizers):
            raise ConfigError(
                "this checkpoint's optimizer state is not an optimizer-in-backward one for these "
                "weights; resume with the settings it was written with"
            )
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(states[name])
        # torch's load makes new group dicts: share those, or the scheduler would miss them
        self.param_groups = [g for o in self.optimizers.values() for g in o.param_groups]
