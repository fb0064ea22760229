"""The one training loop. Every gradient-based method plugs in as ``prepare(ctx)`` + ``loss(ctx, batch)``.

Each optimizer step draws ``grad_accum`` micro-batches of forget examples and as many of retain
examples (when the method uses them) in an order that is a pure function of (seed, step), so a
resumed run sees exactly the batches an uninterrupted one would; batches are length-sorted so they
pad little (:mod:`excise.train.batches`). Checkpoints hold only the trainable tensors, the
optimizer state and the step (:mod:`excise.train.checkpoint`); ``resume=True`` continues from the
newest one. Ctrl-C (SIGINT) or SIGTERM during the loop finishes the current step, saves a
checkpoint (when there is a checkpoint folder) and raises :class:`TrainingInterrupted`; a second
signal stops at once (:mod:`excise.train.signals`).

Under ``accelerate launch`` every process runs this same loop: each builds the same global batch
and takes its own contiguous share of it, and gradients are averaged across processes. N
processes with batch B thus compute exactly what one process does with batch B/N and
``grad_accum`` N (the same examples, the mean of the shard losses), which for losses that average
over examples (NPO) is the step on batch B itself. How the gradients are made, reduced, clipped
and applied, one process, data parallel, FSDP or DeepSpeed ZeRO-3, is the :class:`Launch`'s
business (:mod:`excise.train.launch`); the loop is the same for all. With ``lora``
(:mod:`excise.train.lora`) adapters go on the layers the method trains, after ``prepare``; the
model comes back with them in place. On a GPU the loop keeps cuDNN's attention out
(:data:`ATTENTION`).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from torch.nn.attention import SDPBackend, sdpa_kernel

from excise.data.encode import Example
from excise.data.records import Record
from excise.errors import ConfigError, ExciseError
from excise.models import fingerprint
from excise.progress import progress
from excise.train.batches import forget_drawn, micro_batch
from excise.train.checkpoint import (
    checkpoint_settings,
    latest_checkpoint,
    load_checkpoint,
    write_checkpoint,
)
from excise.train.config import Context, Method, TrainConfig, schedule
from excise.train.launch import Launch, choose_launch
from excise.train.lora import LoraSettings, add_adapters, check_lora
from excise.train.optim import check_states
from excise.train.recompute import check_recompute
from excise.train.signals import TrainingDiverged, TrainingInterrupted, stop_flag

# Attention kernels the loop lets PyTorch choose from on a GPU (None: all). Its first choice on
# Hopper, cuDNN's, plans every new sequence length afresh, and length-sorted batches bring new
# lengths every step: training a 1B model on an H200 its backward took 17 ms of CPU per layer
# call and the GPU was idle 90% of the step (bench/README.md, "1B model on a GPU").
ATTENTION: tuple[SDPBackend, ...] | None = (
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
)


def train(
    model: torch.nn.Module,
    tokenizer: Any,
    method: Method,
    method_config: Any,
    *,
    forget: list[Example],
    retain: list[Example],
    forget_records: list[Record],
    template: str,
    config: TrainConfig,
    uses_retain: bool = True,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    lora: LoraSettings | None = None,
) -> list[dict[str, float]]:
    """Run ``config.steps`` optimizer steps of ``method`` on ``model`` in place; return the log.

    With ``lora`` the model comes back with the trained adapters in it (unmerged):
    :func:`excise.train.lora.merge_adapters` folds them in and returns them in peft's format.
    """
    if not forget:
        raise ExciseError("the forget set is empty: nothing to unlearn")
    if uses_retain and not retain:
        raise ExciseError("this method needs a retain set, and it is empty")
    check_lora(method, method_config, lora)
    set_seed(config.seed)
    launch = choose_launch(config, method)
    check_states(config)  # before any long work
    check_recompute(config, method, model)
    accelerator = launch.accelerator
    if config.batch_size % accelerator.num_processes:
        raise ConfigError(
            f"batch_size {config.batch_size} must be a multiple of the {accelerator.num_processes} "
            "processes: each process takes an equal share of the global batch"
        )
    model.to(accelerator.device)  # method caches are computed before the launch wraps the model
    model.train()
    ctx = Context(
        model, tokenizer, method_config, forget, retain, forget_records, template, accelerator
    )
    ctx.state["steps"] = config.steps  # for methods whose loss follows a schedule
    ctx.state["forget_drawn"] = forget_drawn(ctx, config)  # what the run's batches will hold
    weights = fingerprint(model) if lora is not None else None
    method.prepare(ctx)  # may freeze parameters and cache reference statistics
    if lora is not None:  # after prepare: the caches come from the model without adapters
        if fingerprint(model) != weights:
            raise ConfigError(
                "this method changed the weights while preparing (a warm start or noise: tar, "
                "distill), so an adapter would not reproduce its result on the original model; "
                "train it without --lora, or with init_method=None (and for distill alpha=0) so the weights stay"
            )
        add_adapters(model, lora)
    # FSDP and ZeRO-3: a sharded copy made after prepare, so caches come from the whole model
    trained = launch.wrap(model)
    named = {n: p for n, p in trained.named_parameters() if p.requires_grad}
    if not named:
        raise ExciseError("the method left no trainable parameters")
    optimizer = launch.prepare(ctx, launch.optimizer(named))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(config))

    start = 0
    settings = checkpoint_settings(config, method_config)
    if resume and checkpoint_dir is not None and (latest := latest_checkpoint(checkpoint_dir)):
        start = load_checkpoint(latest, launch, named, optimizer, settings)
        with warnings.catch_warnings():  # replaying the schedule, not skipping a step
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(start):
                scheduler.step()
    log: list[dict[str, float]] = []
    bar = progress(  # a bar on a terminal, plain lines in a log (excise.progress)
        total=config.steps,
        initial=start,
        desc="train",
        unit="steps",
        enabled=config.progress and accelerator.is_main_process,
    )
    kernels = (
        sdpa_kernel(list(ATTENTION))
        if ATTENTION is not None and accelerator.device.type == "cuda"
        else contextlib.nullcontext()
    )
    with stop_flag() as interrupted, kernels, launch.training(trained, optimizer):
        for step in range(start, config.steps):
            totals = train_step(
                ctx, method, config, launch, named, optimizer, scheduler, step, uses_retain
            )
            log.append(totals)
            if diverged := [k for k, v in totals.items() if not math.isfinite(v)]:
                bar.close()
                raise TrainingDiverged(step + 1, diverged, totals, checkpoint_dir)
            bar.set_postfix({k: f"{v:.3g}" for k, v in totals.items() if k not in ("step", "lr")})
            bar.update(1)
            if on_step is not None:
                on_step(step + 1, totals)
            periodic = config.checkpoint_every and (step + 1) % config.checkpoint_every == 0
            if checkpoint_dir is not None and (periodic or interrupted.is_set()):
                write_checkpoint(checkpoint_dir, step + 1, launch, named, optimizer, settings)
            if interrupted.is_set():
                bar.close()
                launch.finish(ctx, model, named)
                raise TrainingInterrupted(step + 1, checkpoint_dir)
    bar.close()
    launch.finish(ctx, model, named)  # sharded: the trained weights gathered into model
    if getattr(method, "finish", None) is not None:
        method.finish(ctx)
    for param in model.parameters():
        param.requires_grad_(True)
    model.eval()
    return log


def train_step(
    ctx: Context,
    method: Method,
    config: TrainConfig,
    launch: Launch,
    named: dict[str, torch.nn.Parameter],
    optimizer,
    scheduler,
    step: int,
    uses_retain: bool,
) -> dict[str, float]:
    """One optimizer step of ``grad_accum`` micro-batches; returns the averaged loss terms."""
    accelerator = ctx.accelerator
    ctx.state["step"] = step
    totals: dict[str, float] = {}
    for micro in range(config.grad_accum):
        batch = micro_batch(ctx, config, step * config.grad_accum + micro, uses_retain)
        last = micro == config.grad_accum - 1
        loss, terms = launch.micro_batch(ctx, method, batch, last)
        for key, value in {"loss": float(loss.detach()), **terms}.items():
            totals[key] = totals.get(key, 0.0) + value / config.grad_accum
    if accelerator.num_processes > 1:  # log the mean over processes, as one process would see it
        keys = sorted(totals)
        local = torch.tensor([totals[k] for k in keys], device=accelerator.device)
        totals = dict(zip(keys, accelerator.reduce(local, "mean").tolist(), strict=True))
    totals["grad_norm"] = launch.step(named, optimizer)  # reduced, clipped, applied
    scheduler.step()
    totals["lr"] = scheduler.get_last_lr()[0]
    totals["step"] = step + 1
    return totals
