"""What the loop is given and what a method sees: :class:`TrainConfig` (the optimisation
settings every method shares), :class:`Context`, the :class:`Method` protocol, a :data:`Batch`,
the learning-rate schedule, and the flags ``accelerate launch`` exports."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

import torch
from accelerate import Accelerator

from excise.data.encode import Example
from excise.data.records import Record
from excise.errors import ConfigError

Batch = dict[str, dict[str, torch.Tensor] | None]


@dataclass
class TrainConfig:
    """Optimisation settings shared by every method (each method has tuned defaults)."""

    steps: int = 40
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    max_grad_norm: float = 1.0
    seed: int = 0
    checkpoint_every: int = 0  # 0: no checkpoints
    progress: bool = True
    # memory (excise.train.optim, excise.train.recompute): step each weight from its gradient
    # hook and free the gradient (no clipping, grad_accum 1, one process); AdamW's moments in
    # fp32 (torch's: the weights' dtype), bf16 or 8bit (bitsandbytes); recompute activations
    optimizer_in_backward: bool = False
    optimizer_states: Literal["fp32", "bf16", "8bit"] = "fp32"
    gradient_checkpointing: bool = False
    # adamw, or sgd (no momentum, no state): with max_grad_norm clipping every step has length
    # lr x min(1, max_grad_norm / |g|), normalised SGD where the gradient is large (cir)
    optimizer: Literal["adamw", "sgd"] = "adamw"

    def __post_init__(self) -> None:
        for name, low in (("steps", 0), ("batch_size", 1), ("grad_accum", 1)):
            if getattr(self, name) < low:
                raise ConfigError(f"{name} must be >= {low}, got {getattr(self, name)}")
        for name in ("lr", "max_grad_norm"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.schedule not in ("constant", "linear", "cosine"):
            raise ConfigError(f"unknown schedule {self.schedule!r}: constant, linear or cosine")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed must be in [0, 2**32), got {self.seed}")
        if self.checkpoint_every < 0 or self.warmup_steps < 0:
            raise ConfigError("checkpoint_every and warmup_steps must be >= 0")
        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"unknown optimizer {self.optimizer!r}: adamw or sgd")
        if self.optimizer_states not in ("fp32", "bf16", "8bit"):
            raise ConfigError(
                f"unknown optimizer_states {self.optimizer_states!r}: fp32, bf16 or 8bit"
            )
        if self.optimizer == "sgd" and self.optimizer_states != "fp32":
            raise ConfigError(
                f"optimizer_states {self.optimizer_states} sets AdamW's moment precision; plain "
                "SGD keeps no states: drop one of the two"
            )
        if self.optimizer_in_backward and self.grad_accum > 1:
            raise ConfigError(
                "optimizer_in_backward applies each gradient as it is made, so it cannot "
                f"accumulate {self.grad_accum} micro-batches: use grad_accum 1"
            )


def config_dict(config: Any) -> dict[str, Any]:
    return asdict(config)


def schedule(config: TrainConfig) -> Callable[[int], float]:
    """The learning-rate factor of each step (for ``LambdaLR``): linear warm-up, then constant,
    linear or cosine decay to zero."""

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / (config.warmup_steps + 1)
        span = max(1, config.steps - config.warmup_steps)
        done = min(1.0, (step - config.warmup_steps) / span)
        if config.schedule == "linear":
            return 1.0 - done
        if config.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * done))
        return 1.0

    return factor


@dataclass
class Context:
    """What a method sees: the model, its data, its config, and a place for cached tensors."""

    model: torch.nn.Module  # the caller's in prepare; in loss under FSDP/ZeRO-3 a sharded copy
    tokenizer: Any
    config: Any  # the method's own config dataclass
    forget: list[Example]
    retain: list[Example]
    forget_records: list[Record]
    template: str
    accelerator: Accelerator
    state: dict[str, Any] = field(default_factory=dict)
    # set by the loop while a micro-batch's loss is computed, where it may backward in parts
    early_backward: Callable[[torch.Tensor], None] | None = None

    @property
    def unwrapped(self) -> torch.nn.Module:
        # accelerate's unwrap_model imports deepspeed whenever it is installed (2.7 s and a
        # warning in every run); only a wrapper (DDP, torch.compile) needs it
        if isinstance(self.model, torch.nn.parallel.DistributedDataParallel) or hasattr(
            self.model, "_orig_mod"
        ):
            return self.accelerator.unwrap_model(self.model)
        return self.model

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.accelerator.device) for k, v in batch.items()}

    def release(self, part: torch.Tensor) -> torch.Tensor:
        """Backward a finished part of the loss now and return it detached, so its activations
        are freed before the next forward (the forget batch's before the retain batch's); the
        gradients are the same as one backward of the sum. Where the loop cannot (DeepSpeed,
        FSDP, outside the loop) ``part`` comes back as it is."""
        if self.early_backward is None or not part.requires_grad:
            return part
        self.early_backward(part)
        return part.detach()


class Method(Protocol):
    """A gradient-based method: ``prepare`` once on the whole model (freeze parameters, cache
    references), then ``loss`` per micro-batch. Optional attributes the loop reads: ``name``,
    ``shardable`` (False: refused under FSDP/ZeRO-3) and ``finish(ctx)`` (after the last step)."""

    def prepare(self, ctx: Context) -> None: ...

    def loss(self, ctx: Context, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]: ...


def env_flag(name: str, default: str) -> bool:
    """A boolean that ``accelerate launch`` exported (true, 1 or yes)."""
    return os.environ.get(name, default).strip().lower() in ("true", "1", "yes")
