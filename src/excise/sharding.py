"""Fully sharded data parallel (FSDP2, ``torch.distributed.fsdp.fully_shard``) for the training loop.

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

DeepSpeed ZeRO-3 (``configs/accelerate/deepspeed-zero3*.yaml``, the ``excise[deepspeed]`` extra)
follows the same plan: a copy made after ``prepare`` (:func:`zero3_copy`, partitioned one module
at a time), trained by a DeepSpeed engine (:func:`zero3_engine`) whose backward, accumulation,
clipping, gradient norm and step the loop calls; DeepSpeed's hooks gather each module's weights as
it runs, so methods may call any submodule. Checkpoints hold whole tensors and the AdamW state by
parameter name, as under FSDP (so a run may resume on another process count), and the trained
weights are gathered back into the caller's model. Only stage 3 without offload is supported.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Iterator
from typing import Any

import torch
from accelerate import Accelerator, DistributedType
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from excise.arch import decoder_layers
from excise.errors import ConfigError

FULL = StateDictOptions(full_state_dict=True)


def _env_flag(name: str, default: str) -> bool:
    return os.environ.get(name, default).strip().lower() in ("true", "1", "yes")


def fsdp_requested(accelerator: Accelerator) -> bool:
    """True when ``accelerate launch`` runs an FSDP config with more than one process.

    On GPUs accelerate reports ``DistributedType.FSDP``; on the CPU it reports MULTI_CPU but
    still exports the config as ``ACCELERATE_USE_FSDP``, which is read here.
    """
    requested = accelerator.distributed_type == DistributedType.FSDP or _env_flag(
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
    if _env_flag("FSDP_OFFLOAD_PARAMS", "false"):
        raise ConfigError(
            "fsdp_offload_params is not supported; set it to false (or use --lora R to keep "
            "gradients and optimizer state small)"
        )
    return True


def deepspeed_requested() -> bool:
    """True under ``accelerate launch`` with a DeepSpeed config (accelerate exports the flag on
    the CPU too, where its own DeepSpeed support does not apply)."""
    return _env_flag("ACCELERATE_USE_DEEPSPEED", "false")


def shard(model: torch.nn.Module, accelerator: Accelerator) -> torch.nn.Module:
    """A copy of ``model`` sharded across the processes, one FSDP unit per decoder layer."""
    mesh = init_device_mesh(accelerator.device.type, (accelerator.num_processes,))
    reshard = _env_flag("FSDP_RESHARD_AFTER_FORWARD", "true")
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
    for name, param in sharded.named_parameters():
        load_whole(param, whole[name])
    with torch.no_grad():
        for name, buffer in model.named_buffers():  # to_empty left them uninitialised
            sharded.get_buffer(name).copy_(buffer)
    return sharded


def kind(model: torch.nn.Module | None) -> str:
    """How the loop trains ``model`` (None: the caller's model itself): plain, fsdp, deepspeed."""
    if model is None:
        return "plain"
    return "fsdp" if isinstance(model, FSDPModule) else "deepspeed"


def is_sharded(model: torch.nn.Module) -> bool:
    return isinstance(model, FSDPModule) or any(_is_zero3(p) for p in model.parameters())


def gather(params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """Whole tensors of (possibly sharded) parameters; a collective: every process must call it."""
    with torch.no_grad():
        if any(_is_zero3(p) for p in params.values()):
            import deepspeed

            whole = {}
            for name, param in params.items():  # one at a time: one whole tensor gathered
                with deepspeed.zero.GatheredParameters([param]):
                    whole[name] = param.detach().clone()
            return whole
        return {
            name: (p.full_tensor() if isinstance(p, DTensor) else p).detach()
            for name, p in params.items()
        }


@torch.no_grad()
def load_whole(param: torch.nn.Parameter, whole: torch.Tensor) -> None:
    """Copy a whole tensor into a parameter, keeping only this process's shard when sharded."""
    whole = whole.to(param.device, param.dtype)
    if _is_zero3(param):  # a collective: the model's partition and the fp32 master copy
        import deepspeed
        from deepspeed.utils import safe_set_local_fp32_param

        with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
            param.copy_(whole)
        safe_set_local_fp32_param(param, _local_piece(param, whole.float()))
        return
    if isinstance(param, DTensor):  # every process holds the whole tensor: no communication
        whole = distribute_tensor(whole, param.device_mesh, param.placements, src_data_rank=None)
    param.copy_(whole)


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> float:
    """Clip the global gradient norm (over all shards); return the norm before clipping."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The whole optimizer state keyed by parameter name, in CPU memory of the main process (a
    collective when sharded: every process calls it; under FSDP the others get an empty dict)."""
    if is_sharded(model) and not isinstance(model, FSDPModule):
        return _zero3_optimizer_state(model, optimizer)
    return get_optimizer_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def load_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict
) -> None:
    """Load a state from :func:`optimizer_state`; each process keeps its shard."""
    if is_sharded(model) and not isinstance(model, FSDPModule):
        _load_zero3_optimizer_state(model, optimizer, state)
        return
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=FULL)


# DeepSpeed ZeRO-3 ---------------------------------------------------------------------------
# The loop drives the engine itself (deepspeed.initialize on a partitioned copy, engine.backward
# and engine.step), so accelerate only starts the processes: its DeepSpeed plugin would switch
# transformers into ZeRO-3 mode for the whole process (every later from_pretrained would build a
# partitioned model) and expects to wrap the model in accelerator.prepare.

OWNED = {  # DeepSpeed entries that excise sets from its own options
    "train_micro_batch_size_per_gpu": "--batch-size / the process count",
    "gradient_accumulation_steps": "--grad-accum",
    "train_batch_size": "--batch-size x --grad-accum",
    "gradient_clipping": "--max-grad-norm",
}


@contextlib.contextmanager
def accelerate_without_deepspeed() -> Iterator[None]:
    """Hide the DeepSpeed launch flag while an Accelerator is made (see the note above)."""
    flag = os.environ.pop("ACCELERATE_USE_DEEPSPEED", None)
    try:
        yield
    finally:
        if flag is not None:
            os.environ["ACCELERATE_USE_DEEPSPEED"] = flag


def deepspeed_config(
    num_processes: int, batch_size: int, grad_accum: int, max_grad_norm: float, dtype: torch.dtype
) -> dict[str, Any]:
    """The launch's DeepSpeed config (the accelerate yaml or its ``deepspeed_config_file``) with
    the batch sizes, accumulation and clipping of the excise run; ZeRO-3 only, no offload."""
    try:
        import deepspeed  # noqa: F401
    except ImportError as error:
        raise ConfigError(
            f"DeepSpeed is not installed ({error}); install it with pip install 'excise[deepspeed]'"
        ) from error
    from accelerate.utils import DeepSpeedPlugin

    plugin = DeepSpeedPlugin()  # reads what accelerate launch exported
    ds = copy.deepcopy(plugin.deepspeed_config)
    del plugin  # its HfDeepSpeedConfig would keep transformers in ZeRO-3 mode
    zero = ds.setdefault("zero_optimization", {})
    if zero.get("stage") != 3:
        raise ConfigError(
            f"DeepSpeed ZeRO stage {zero.get('stage')} is not supported; set zero_stage: 3 (as "
            "configs/accelerate/deepspeed-zero3.yaml does), or use ddp.yaml or fsdp.yaml"
        )
    for part in ("offload_optimizer", "offload_param"):
        if (zero.get(part) or {}).get("device", "none") not in ("none", None):
            raise ConfigError(
                f"DeepSpeed {part} is not supported; set its device to none (or use --lora R to "
                "keep gradients and optimizer state small)"
            )
    for section in ("optimizer", "scheduler", "fp16"):
        if section in ds and (section != "fp16" or ds[section].get("enabled", False) is True):
            raise ConfigError(
                f"the DeepSpeed config has a {section!r} section; remove it: excise builds AdamW "
                "and its schedule from --lr/--schedule, and trains float32 or bfloat16 weights"
            )
    bf16 = dtype == torch.bfloat16
    if dtype not in (torch.float32, torch.bfloat16):
        raise ConfigError(f"DeepSpeed runs train float32 or bfloat16 weights, not {dtype}")
    if ds.get("bf16", {}).get("enabled", bf16) not in (bf16, "auto"):
        raise ConfigError(
            f"the DeepSpeed config sets bf16.enabled but the model is {dtype}; load the model "
            "with the matching --dtype or remove the bf16 section"
        )
    owned = {
        "train_micro_batch_size_per_gpu": batch_size // num_processes,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": batch_size * grad_accum,
        "gradient_clipping": max_grad_norm,
    }
    for key, value in owned.items():
        if ds.get(key, "auto") not in ("auto", value) and not (
            key == "gradient_accumulation_steps" and ds[key] == 1  # accelerate's default
        ):
            raise ConfigError(
                f"the DeepSpeed config sets {key}={ds[key]}, but excise sets it from "
                f"{OWNED[key]} ({value}); remove it from the config or set it to auto"
            )
    ds.update(owned)
    ds["bf16"] = {"enabled": bf16}
    # the client optimizer is torch's AdamW, on the CPU too (no compiled DeepSpeed ops)
    ds["zero_allow_untested_optimizer"] = True
    ds["zero_force_ds_cpu_optimizer"] = False
    # True would patch torch.nn.functional.linear for the whole process
    zero["memory_efficient_linear"] = False
    ds["steps_per_print"] = 2**31 - 1
    return ds


def zero3_copy(model: torch.nn.Module, ds_config: dict[str, Any]) -> torch.nn.Module:
    """A copy of ``model`` whose parameters DeepSpeed ZeRO-3 partitions across the processes.

    The copy starts with empty parameters that are filled one module at a time, each partitioned
    before the next is filled, so no process holds two whole models.
    """
    import deepspeed

    _quiet_deepspeed()
    # DeepSpeed's own communication layer, on the process group accelerate started
    deepspeed.init_distributed(
        dist_backend=torch.distributed.get_backend(), auto_mpi_discovery=False
    )
    empty = {  # placeholders (a meta tensor could not take real data in place)
        id(p): torch.nn.Parameter(p.new_empty(0), p.requires_grad) for p in model.parameters()
    }
    partitioned = copy.deepcopy(model, empty)
    whole = dict(model.named_parameters(remove_duplicate=False))
    for module_name, module in partitioned.named_modules():
        own = list(module.named_parameters(recurse=False))
        if not own or all(hasattr(p, "ds_id") for _, p in own):  # shared (tied) ones are done
            continue
        for name, param in own:
            if not hasattr(param, "ds_id"):
                source = whole[f"{module_name}.{name}" if module_name else name]
                param.data = source.detach().clone()
        deepspeed.zero.Init(module=module, config_dict_or_path=ds_config)
    return partitioned  # buffers were copied whole by deepcopy


def zero3_engine(
    partitioned: torch.nn.Module, optimizer: torch.optim.Optimizer, ds_config: dict[str, Any]
):
    """The DeepSpeed engine training ``partitioned`` with ``optimizer`` (torch's AdamW, whose
    parameter groups DeepSpeed replaces with flat fp32 partitions)."""
    import deepspeed

    engine, *_ = deepspeed.initialize(
        model=partitioned, optimizer=optimizer, config=ds_config, dist_init_required=False
    )
    return engine


def zero3_forward_begins(engine) -> None:
    """Before a micro-batch's forward. Methods call the module (they hook layers and stop the
    forward early), not ``engine.forward``, so what that does is done here and in
    :func:`zero3_backward`: without it ZeRO-3 drops all but the last micro-batch's gradients."""
    engine.optimizer.clear_backward_seen_flag()


def zero3_backward(engine, loss: torch.Tensor) -> None:
    """Backward of one micro-batch (scaled by 1/accumulation) and the engine's step, which
    reduces, clips and steps the optimizer after the last micro-batch only."""
    engine._backward_prologue()  # what engine.forward's hooks on its output run (0.19.x)
    engine.backward(loss)
    engine.step()


def _quiet_deepspeed() -> None:
    from deepspeed.utils import logger

    logger.setLevel(logging.WARNING)


def _is_zero3(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_id")


def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _zero3_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """``optimizer`` is the torch optimizer inside the engine: its state is keyed by DeepSpeed's
    flat fp32 partitions, and is gathered here into whole tensors per parameter, in the format
    of an FSDP full state dict."""
    from deepspeed.utils import safe_get_full_optimizer_state

    main = torch.distributed.get_rank() == 0
    example = next(iter(optimizer.state.values()), None)  # empty before the first step
    state: dict[str, dict[str, torch.Tensor]] = {}
    for name, param in _trainable(model).items() if example is not None else ():
        entry = {}
        for key, value in example.items():
            if value.ndim == 0:  # the step count, the same in every group
                entry[key] = value.detach().cpu().clone()
            else:  # a collective
                entry[key] = safe_get_full_optimizer_state(param, key).view(param.ds_shape).cpu()
        if main:
            state[name] = entry
    return {"state": state, "param_groups": []} if main else {}


def _load_zero3_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict
) -> None:
    from deepspeed.utils import safe_set_local_optimizer_state

    saved, named = state.get("state", {}), _trainable(model)
    if not saved:  # written before the first step
        return
    if set(saved) != set(named):
        raise ConfigError("the checkpoint's optimizer state is for other trainable weights")
    example = next(iter(saved.values()))
    zero = next(iter(named.values()))._z3_optimizer
    # torch's optimizers make their state at the first step; make it now, then fill it
    for flat in zero.fp32_partitioned_groups_flat:
        optimizer.state[flat] = {
            key: value.to(flat.device).clone() if value.ndim == 0 else torch.zeros_like(flat)
            for key, value in example.items()
        }
    for name, param in named.items():
        for key, value in saved[name].items():
            if value.ndim:
                piece = _local_piece(param, value.to(param.device, torch.float32))
                safe_set_local_optimizer_state(param, piece, key)


def _local_piece(param: torch.nn.Parameter, whole: torch.Tensor) -> torch.Tensor:
    """This process's ZeRO-3 partition of a whole tensor, zero-padded like DeepSpeed's own (its
    safe_set_full_* setters read past the end when the size does not divide evenly)."""
    size = param.ds_tensor.numel()
    start = torch.distributed.get_rank(group=param.ds_process_group) * size
    piece = whole.flatten()[start : start + size]
    return torch.cat([piece, piece.new_zeros(size - piece.numel())])
