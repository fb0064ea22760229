"""Sharded training for the one loop: FSDP2 (:mod:`excise.sharding.fsdp`) and DeepSpeed ZeRO-3
(:mod:`excise.sharding.zero3`), and what the loop calls without caring which.

Both follow one plan: the method's ``prepare`` runs on the whole model (so caches are exact), then
the loop trains a sharded copy built without a second whole model in memory, checkpoints hold
whole tensors and optimizer state by parameter name (a run may resume on another process count),
and the trained weights are gathered back into the caller's model. Methods that run their own
copies of the weights (``MethodSpec.shardable=False``) are refused.
"""

from __future__ import annotations

import torch
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from excise.sharding import fsdp, zero3
from excise.sharding.fsdp import fsdp_requested, shard
from excise.sharding.zero3 import (
    accelerate_without_deepspeed,
    deepspeed_config,
    deepspeed_requested,
    zero3_backward,
    zero3_copy,
    zero3_engine,
    zero3_forward_begins,
)

__all__ = [
    "accelerate_without_deepspeed",
    "clip_grad_norm",
    "deepspeed_config",
    "deepspeed_requested",
    "fsdp_requested",
    "gather",
    "is_sharded",
    "kind",
    "load_optimizer_state",
    "load_whole",
    "optimizer_state",
    "shard",
    "zero3_backward",
    "zero3_copy",
    "zero3_engine",
    "zero3_forward_begins",
]


def kind(model: torch.nn.Module | None) -> str:
    """How the loop trains ``model`` (None: the caller's model itself): plain, fsdp, deepspeed."""
    if model is None:
        return "plain"
    return "fsdp" if isinstance(model, FSDPModule) else "deepspeed"


def _zero3(model_or_params) -> bool:
    params = model_or_params.values() if isinstance(model_or_params, dict) else model_or_params
    return any(zero3.is_zero3(p) for p in params)


def is_sharded(model: torch.nn.Module) -> bool:
    return isinstance(model, FSDPModule) or _zero3(model.parameters())


def gather(params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """Whole tensors of (possibly sharded) parameters; a collective: every process must call it."""
    with torch.no_grad():
        return zero3.gather(params) if _zero3(params) else fsdp.gather(params)


@torch.no_grad()
def load_whole(param: torch.nn.Parameter, whole: torch.Tensor) -> None:
    """Copy a whole tensor into a parameter, keeping only this process's shard when sharded."""
    whole = whole.to(param.device, param.dtype)
    (zero3.load_whole if zero3.is_zero3(param) else fsdp.load_whole)(param, whole)


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> float:
    """Clip the global gradient norm (over all shards); return the norm before clipping."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The whole optimizer state keyed by parameter name, in CPU memory of the main process (a
    collective when sharded: every process calls it; the others get an empty dict)."""
    if _zero3(model.parameters()):
        return zero3.optimizer_state(model, optimizer)
    return fsdp.optimizer_state(model, optimizer)


def load_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict
) -> None:
    """Load a state from :func:`optimizer_state`; each process keeps its shard."""
    if _zero3(model.parameters()):
        zero3.load_optimizer_state(model, optimizer, state)
    else:
        fsdp.load_optimizer_state(model, optimizer, state)
