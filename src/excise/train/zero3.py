"""DeepSpeed ZeRO-3 for the training loop (``configs/accelerate/deepspeed-zero3*.yaml``, the
``excise[deepspeed]`` extra), on the plan of :mod:`excise.train.launch`: a copy made after
``prepare`` (:func:`zero3_copy`, partitioned one module at a time), trained by a DeepSpeed engine
(:func:`zero3_engine`) whose backward, accumulation, clipping, gradient norm and step the loop
calls; DeepSpeed's hooks gather each module's weights as it runs, so methods may call any
submodule. Checkpoints hold whole tensors and the AdamW state by parameter name, as under FSDP
(so a run may resume on another process count), and the trained weights are gathered back into
the caller's model. Only stage 3 without offload is supported.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Iterator
from typing import Any

import torch

from excise.errors import ConfigError
from excise.train.config import env_flag


def deepspeed_requested() -> bool:
    """True under ``accelerate launch`` with a DeepSpeed config (accelerate exports the flag on
    the CPU too, where its own DeepSpeed support does not apply)."""
    return env_flag("ACCELERATE_USE_DEEPSPEED", "false")


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


def is_zero3(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_id")


def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
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


def load_optimizer_state(
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


def gather(params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """Whole tensors, one parameter gathered at a time (a collective)."""
    import deepspeed

    whole = {}
    for name, param in params.items():
        with deepspeed.zero.GatheredParameters([param]):
            whole[name] = param.detach().clone()
    return whole


def load_whole(param: torch.nn.Parameter, whole: torch.Tensor) -> None:
    """The model's partition and the fp32 master copy of one parameter (a collective)."""
    import deepspeed
    from deepspeed.utils import safe_set_local_fp32_param

    with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
        param.copy_(whole)
    safe_set_local_fp32_param(param, _local_piece(param, whole.float()))
