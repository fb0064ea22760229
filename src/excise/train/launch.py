"""How a run's gradients are made, reduced, clipped and applied: one :class:`Launch` per kind of
launch, chosen by :func:`choose_launch` from what ``accelerate launch`` (configs in
``configs/accelerate/``) exported. The loop calls the same methods whatever the kind.

- ``plain`` (:class:`Launch`): one process; accelerate prepares the model and optimizer.
- ``ddp`` (:class:`DDP`): every process runs the loop on the plain module and averages the
  gradients itself (:func:`average_gradients`): a DDP wrapper would hide the module from methods
  that hook its layers or stop the forward early (RMU, RR) and would skip its gradient sync when
  a forward ends in an exception.
- ``fsdp`` (:class:`FSDP`, :mod:`excise.train.fsdp`): a sharded copy (FSDP2) made after
  ``prepare``; FSDP averages the gradients and the norm is over all shards.
- ``zero3`` (:class:`Zero3`, :mod:`excise.train.zero3`): a partitioned copy driven by a DeepSpeed
  engine (its backward, step, accumulation, clipping and gradient norm; the batch sizes,
  accumulation and clipping of its config come from :class:`TrainConfig`).
- ``in-backward`` (:class:`InBackward`, ``optimizer_in_backward``): one process; each weight is
  stepped from its gradient hook during the one backward of the loss and its gradient freed
  (:mod:`excise.train.optim`: no clipping, no accumulation, no backward in parts).

Under every kind each process builds the same global batch and takes its own share, methods'
caches are computed in ``prepare`` by every process on the whole model, and only the main process
writes checkpoints. The sharded kinds (fsdp, zero3) checkpoint whole tensors and the optimizer
state by parameter name (gathered, written by the main process; a run may resume on another
process count), gather the trained weights back into the caller's model at the end, and refuse
methods that run their own copies of the weights (``shardable=False``).

A loss with a forget and a retain part hands the first to ``ctx.release`` before it runs the
retain forward: plain and ddp backward it at once (one batch's activations held at a time, same
gradients); fsdp and zero3 leave it in the sum.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
from accelerate import Accelerator

from excise.errors import ConfigError
from excise.train import fsdp, optim, recompute, zero3
from excise.train.config import Batch, Context, Method, TrainConfig

# Methods whose loss has a forget and a retain part backward the first before the second's forward
# (Context.release): the peak holds one batch's activations, not both. Measured on an H200 with a
# 1B model, batch 32 + 32: graddiff/npo peaked at 23-25 GiB against 14 for forget-only ga.
EARLY_BACKWARD = True


class Launch:
    """One process (``plain``); the other kinds override what they do differently."""

    kind = "plain"
    written_as = "plain"  # a checkpoint's "launch": who may resume it (checkpoint.LAUNCHES)
    shards = False  # trains a sharded copy of the model
    early_backward = True  # may backward a released part of the loss at once (Context.release)
    empty_groups = True  # the optimizer may have a parameter group without parameters

    def __init__(self, accelerator: Accelerator, config: TrainConfig) -> None:
        self.accelerator, self.config = accelerator, config

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module to train, after ``prepare`` and adapters: ``model`` or a sharded copy."""
        return model

    def optimizer(self, named: dict[str, torch.nn.Parameter]) -> torch.optim.Optimizer:
        """AdamW over the trained parameters (states as ``optimizer_states`` asks), or SGD
        (``optimizer: sgd``): :mod:`excise.train.optim`; no weight decay on vectors."""
        decay = [p for p in named.values() if p.ndim >= 2]
        no_decay = [p for p in named.values() if p.ndim < 2]
        groups = [
            {"params": decay, "weight_decay": self.config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return optim.build(
            self.config,
            [g for g in groups if g["params"] or self.empty_groups],
            fused=all(
                p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in named.values()
            ),
            seed=self.config.seed,
        )

    def training(self, module: torch.nn.Module, optimizer) -> contextlib.AbstractContextManager:
        """Around the training steps: activation checkpointing when asked."""
        return recompute.recomputed(module, self.config.gradient_checkpointing)

    def prepare(self, ctx: Context, optimizer: torch.optim.Optimizer) -> Any:
        """Point ``ctx.model`` at the module the loss runs; return the optimizer to step."""
        ctx.model, optimizer = self.accelerator.prepare(ctx.model, optimizer)
        return optimizer

    def backward(self, part: torch.Tensor) -> None:
        """Backward a micro-batch's loss (or a released part of it)."""
        self.accelerator.backward(part / self.config.grad_accum)

    def sync(self, ctx: Context, last: bool) -> contextlib.AbstractContextManager:
        """Around a micro-batch's backward: gradients are reduced after the last one only."""
        return contextlib.nullcontext() if last else self.accelerator.no_sync(ctx.model)

    def micro_batch(
        self, ctx: Context, method: Method, batch: Batch, last: bool
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of one micro-batch, its gradients accumulated; ``last`` of the step."""
        if self.early_backward and EARLY_BACKWARD:  # one reduction, after
            ctx.early_backward = self.backward
        try:
            with self.sync(ctx, last):
                loss, terms = method.loss(ctx, batch)
                if loss.requires_grad:  # not when every term was released
                    self.backward(loss)
        finally:
            ctx.early_backward = None
        return loss, terms

    def clip(self, params: list[torch.nn.Parameter]) -> float:
        """Reduce and clip the gradients; return their norm before clipping."""
        return float(self.accelerator.clip_grad_norm_(params, self.config.max_grad_norm))

    def step(self, named: dict[str, torch.nn.Parameter], optimizer) -> float:
        """Apply the step's accumulated gradients; return their norm before clipping."""
        norm = self.clip(list(named.values()))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return norm

    def finish(
        self, ctx: Context, model: torch.nn.Module, named: dict[str, torch.nn.Parameter]
    ) -> None:
        """After training: the trained weights are in ``model``, which ``ctx.model`` runs."""

    def checkpoint_state(
        self, named: dict[str, torch.nn.Parameter], optimizer
    ) -> tuple[dict[str, torch.Tensor], dict] | None:
        """The whole trained tensors and the optimizer state a checkpoint holds, on the main
        process (None on the others); every process calls it."""
        if not self.accelerator.is_main_process:  # every process holds the same weights
            return None
        return named, optimizer.state_dict()

    @torch.no_grad()
    def load_whole(self, param: torch.nn.Parameter, whole: torch.Tensor) -> None:
        """Copy a checkpoint's whole tensor into a trained parameter (its shard, when sharded)."""
        param.copy_(whole.to(param.device, param.dtype))

    def load_optimizer_state(self, optimizer, state: dict) -> None:
        optimizer.load_state_dict(state)


class DDP(Launch):
    """Data parallel: every process holds the weights; gradients averaged here."""

    kind = "ddp"

    def prepare(self, ctx: Context, optimizer: torch.optim.Optimizer) -> Any:
        return self.accelerator.prepare(optimizer)  # the plain module: see the module docstring

    def clip(self, params: list[torch.nn.Parameter]) -> float:
        average_gradients(params, self.accelerator.num_processes)
        return super().clip(params)


class Sharded(Launch):
    """What FSDP and ZeRO-3 share: a sharded copy trained in place of the caller's model,
    checkpoints of whole tensors and the optimizer state by name. ``backend``: the module that
    gathers, loads and reads the optimizer state (:mod:`excise.train.fsdp`, ``zero3``)."""

    shards = True
    early_backward = False
    backend: Any = None
    module: torch.nn.Module

    def prepare(self, ctx: Context, optimizer: torch.optim.Optimizer) -> Any:
        ctx.model = self.module  # no accelerate wrappers
        return optimizer

    def finish(
        self, ctx: Context, model: torch.nn.Module, named: dict[str, torch.nn.Parameter]
    ) -> None:
        with torch.no_grad():  # gathered from every process
            for name, whole in self.backend.gather(named).items():
                model.get_parameter(name).copy_(whole)
        ctx.model = model  # finish (e.g. merging adapters) works on the caller's model

    def checkpoint_state(
        self, named: dict[str, torch.nn.Parameter], optimizer
    ) -> tuple[dict[str, torch.Tensor], dict] | None:
        with torch.no_grad():
            tensors = self.backend.gather(named)  # collectives: every process takes part
        optimizer_state = self.backend.optimizer_state(self.module, optimizer)
        return (tensors, optimizer_state) if self.accelerator.is_main_process else None

    @torch.no_grad()
    def load_whole(self, param: torch.nn.Parameter, whole: torch.Tensor) -> None:
        self.backend.load_whole(param, whole.to(param.device, param.dtype))

    def load_optimizer_state(self, optimizer, state: dict) -> None:
        self.backend.load_optimizer_state(self.module, optimizer, state)


class FSDP(Sharded):
    """FSDP2: one unit per decoder layer; FSDP reduce-scatters, the norm is over all shards."""

    kind = "fsdp"
    written_as = "fsdp"
    backend = fsdp

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        self.module = fsdp.shard(model, self.accelerator)
        return self.module

    def sync(self, ctx: Context, last: bool) -> contextlib.AbstractContextManager:
        ctx.model.set_requires_gradient_sync(last)  # reduce-scatter after the last micro-batch
        return contextlib.nullcontext()

    def clip(self, params: list[torch.nn.Parameter]) -> float:
        return fsdp.clip_grad_norm(params, self.config.max_grad_norm)


class Zero3(Sharded):
    """DeepSpeed ZeRO-3: the engine reduces, clips and steps; the optimizer stays torch's (so
    the loop's schedule drives it)."""

    kind = "zero3"
    written_as = "deepspeed"
    backend = zero3
    empty_groups = False  # ZeRO-3 needs no empty group

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        config = self.config
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.ds_config = zero3.deepspeed_config(
            self.accelerator.num_processes,
            config.batch_size,
            config.grad_accum,
            config.max_grad_norm,
            trainable[0].dtype if trainable else torch.float32,
        )
        self.module = zero3.zero3_copy(model, self.ds_config)
        return self.module

    def prepare(self, ctx: Context, optimizer: torch.optim.Optimizer) -> Any:
        self.engine = zero3.zero3_engine(self.module, optimizer, self.ds_config)
        return super().prepare(ctx, optimizer)

    def micro_batch(
        self, ctx: Context, method: Method, batch: Batch, last: bool
    ) -> tuple[torch.Tensor, dict[str, float]]:
        # the engine scales by 1/grad_accum and steps after the last micro-batch
        zero3.zero3_forward_begins(self.engine)
        loss, terms = method.loss(ctx, batch)
        zero3.zero3_backward(self.engine, loss)
        return loss, terms

    def step(self, named: dict[str, torch.nn.Parameter], optimizer) -> float:
        return float(self.engine.get_global_grad_norm())  # clipped and stepped already

    def finish(
        self, ctx: Context, model: torch.nn.Module, named: dict[str, torch.nn.Parameter]
    ) -> None:
        super().finish(ctx, model, named)
        self.engine.destroy()  # its hooks and buffers go with the copy


class InBackward(Launch):
    """One process, each weight stepped from its gradient hook in the backward
    (``optimizer_in_backward``: :class:`excise.train.optim.InBackward`); no clipping."""

    kind = "in-backward"
    early_backward = False  # one backward of the whole loss: a second one would step again

    def optimizer(self, named: dict[str, torch.nn.Parameter]) -> torch.optim.Optimizer:
        config = self.config

        def build(groups: list[dict[str, Any]], index: int) -> torch.optim.Optimizer:
            param = groups[0]["params"][0]
            groups[0]["weight_decay"] = optim.decay_of(param, config)
            fused = param.device.type in ("cpu", "cuda") and param.is_floating_point()
            return optim.build(config, groups, fused=fused, seed=hash((config.seed, index)))

        return optim.InBackward(named, build)

    def prepare(self, ctx: Context, optimizer: torch.optim.Optimizer) -> Any:
        ctx.model = self.accelerator.prepare(ctx.model)  # the optimizer is stepped in hooks
        return optimizer

    def training(self, module: torch.nn.Module, optimizer) -> contextlib.AbstractContextManager:
        stack = contextlib.ExitStack()
        stack.enter_context(super().training(module, optimizer))
        stack.enter_context(optimizer.hooked())
        return stack

    def step(self, named: dict[str, torch.nn.Parameter], optimizer) -> float:
        optimizer.step()  # nothing left to do; the lr scheduler checks that it was called
        return optimizer.grad_norm()  # applied in the backward, unclipped


def choose_launch(config: TrainConfig, method: Method) -> Launch:
    """The launch this process runs under, with its Accelerator; refuses a method that cannot
    train a sharded model under FSDP or ZeRO-3."""
    with zero3.accelerate_without_deepspeed():  # the loop drives DeepSpeed itself
        accelerator = Accelerator(cpu=not torch.cuda.is_available())
    if zero3.deepspeed_requested() and accelerator.num_processes > 1:
        kind: type[Launch] = Zero3
    elif fsdp.fsdp_requested(accelerator):
        kind = FSDP
    else:
        kind = DDP if accelerator.num_processes > 1 else Launch
    if config.optimizer_in_backward:
        if accelerator.num_processes > 1:
            raise ConfigError(
                "optimizer_in_backward runs in one process only (no ddp, fsdp or zero3 launch)"
            )
        kind = InBackward
    if kind.shards and not getattr(method, "shardable", True):
        name = getattr(method, "name", "this method")
        raise ConfigError(
            f"{name} cannot train a sharded model under FSDP or DeepSpeed ZeRO-3 (it runs the "
            "model on its own copies of the weights); run it data parallel with "
            "configs/accelerate/ddp.yaml"
        )
    return kind(accelerator, config)


@torch.no_grad()
def average_gradients(params: list[torch.nn.Parameter], processes: int) -> None:
    """Replace each gradient by its mean over the processes (what DDP's reducer does).

    A parameter without a gradient on this process contributes zeros, so every process issues
    the same collectives in the same order whatever its shard touched.
    """
    for param in params:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
    handles = [torch.distributed.all_reduce(p.grad, async_op=True) for p in params]
    for param, handle in zip(params, handles, strict=True):
        handle.wait()
        param.grad.div_(processes)


def is_main_process() -> bool:
    """True outside ``accelerate launch``/``torchrun`` and in their rank-0 process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0
