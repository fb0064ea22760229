"""Fully sharded data parallel (FSDP2, ``torch.distributed.fsdp.fully_shard``) for the training loop
(its launch: :class:`excise.train.launch.FSDP`).

Under ``accelerate launch --config_file configs/accelerate/fsdp.yaml`` (or ``fsdp-cpu.yaml``) the
loop trains a sharded copy of the model: each decoder layer is its own FSDP unit and the rest
(embeddings, final norm, head) the root unit, so each process holds 1/N of every weight, gradient
and optimizer moment, and a forward gathers one layer at a time. Per-layer units also keep
methods that stop the forward early (RMU, RR: :func:`excise.arch.run_until`) correct: the layers
above the stop never gather, and those below gather and reduce as in a full forward.

The copy is made after the method's ``prepare``, so caches (reference log-probs, frozen
activations) come from the whole model as in a single process, and the caller's model keeps its
class, hooks and adapters; :func:`gather` brings the trained weights back into it. The copy is
built on the meta device, so no process ever holds two whole models. Gradients are averaged
across processes by FSDP's reduce-scatter (the manual average of the DDP path is not used).
Methods must reach the model through ``ctx.model`` in ``loss`` and call its root forward (FSDP
gathers the embeddings and head there): :func:`excise.scoring.forward_stats` takes the full-logits
path on a sharded model for that reason, and a method that runs its own copies of the weights
(``tar``, ``MethodSpec.shardable=False``) is refused.

FSDP1 (``fsdp_version: 1``) is refused: it flattens parameters, which the methods' per-layer
freezing and hooks do not expect.
"""

from __future__ import annotations

import copy
import os

import torch
from accelerate import Accelerator, DistributedType
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from excise.arch import decoder_layers
from excise.errors import ConfigError
from excise.train.config import env_flag

FULL = StateDictOptions(full_state_dict=True)


def fsdp_requested(accelerator: Accelerator) -> bool:
    """True when ``accelerate launch`` runs an FSDP config with more than one process.

    On GPUs accelerate reports ``DistributedType.FSDP``; on the CPU it reports MULTI_CPU but
    still exports the config as ``ACCELERATE_USE_FSDP``, which is read here.
    """
    requested = accelerator.distributed_type == DistributedType.FSDP or env_flag(
        "ACCELERATE_USE_FSDP", "false"
    )
    if not requested or accelerator.num_processes < 2:
        return False
    if os.environ.get("FSDP_VERSION", "2").strip() != "2":
        raise ConfigError(
            "FSDP1 is not supported (it flattens parameters, which per-layer freezing and hooks "
            "do not expect); set fsdp_version: 2 in the accelerate config, as "
            "configs/accelerate/fsdp.yaml does"
        )
    if env_flag("FSDP_OFFLOAD_PARAMS", "false"):
        raise ConfigError(
            "fsdp_offload_params is not supported; set it to false (or use --lora R to keep "
            "gradients and optimizer state small)"
        )
    return True


def shard(model: torch.nn.Module, accelerator: Accelerator) -> torch.nn.Module:
    """A copy of ``model`` sharded across the processes, one FSDP unit per decoder layer."""
    mesh = init_device_mesh(accelerator.device.type, (accelerator.num_processes,))
    reshard = env_flag("FSDP_RESHARD_AFTER_FORWARD", "true")
    # FSDP converts a module in place, so it gets a copy (the caller's model stays whole) whose
    # parameters are on the meta device: no second whole model in memory at any time
    meta = {
        id(p): torch.nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad)
        for p in model.parameters()
    }
    sharded = copy.deepcopy(model, meta)
    for layer in decoder_layers(sharded):
        fully_shard(layer, mesh=mesh, reshard_after_forward=reshard)
    fully_shard(sharded, mesh=mesh, reshard_after_forward=reshard)
    sharded.to_empty(device=accelerator.device)  # allocates this process's shards only
    whole = dict(model.named_parameters())
    with torch.no_grad():
        for name, param in sharded.named_parameters():
            load_whole(param, whole[name].to(param.device, param.dtype))
        for name, buffer in model.named_buffers():  # to_empty left them uninitialised
            sharded.get_buffer(name).copy_(buffer)
    return sharded


def gather(params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """Whole tensors of parameters that may be sharded DTensors (a collective)."""
    return {
        name: (p.full_tensor() if isinstance(p, DTensor) else p).detach()
        for name, p in params.items()
    }


def load_whole(param: torch.nn.Parameter, whole: torch.Tensor) -> None:
    """Copy a whole tensor into a parameter, keeping only this process's shard of a DTensor
    (every process holds the whole tensor: no communication)."""
    if isinstance(param, DTensor):
        whole = distribute_tensor(whole, param.device_mesh, param.placements, src_data_rank=None)
    param.copy_(whole)


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> float:
    """Clip the global gradient norm (over all shards); return the norm before clipping."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """torch's full optimizer state dict, on the CPU (under FSDP the other processes get {})."""
    return get_optimizer_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def load_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict
) -> None:
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=FULL)
