"""The one training loop. Every gradient-based method plugs in as ``prepare(ctx)`` + ``loss(ctx, batch)``.

Each optimizer step draws ``grad_accum`` micro-batches of forget examples and as many of retain
examples (when the method uses them) in an order that is a pure function of (seed, step), so a
resumed run sees exactly the batches an uninterrupted one would; batches are length-sorted
(:func:`epoch_order`) so they pad little. Checkpoints hold only the
trainable tensors (safetensors), the optimizer state and the step; ``resume=True`` continues from
the newest one. Ctrl-C (SIGINT) or SIGTERM during the loop finishes the current step, saves a
checkpoint (when there is a checkpoint folder) and raises :class:`TrainingInterrupted`; a second
signal stops at once.

Under ``accelerate launch`` (configs in ``configs/accelerate/``) every process runs this same loop:
each process builds the same global batch and takes its own contiguous share of it
(:func:`process_share`) and gradients are averaged across processes. N processes with batch B
thus compute exactly what one process does with batch B/N and ``grad_accum`` N (the same examples,
the mean of the shard losses), which for losses that average over examples (NPO) is the step on
batch B itself. Data parallel runs (DDP configs) keep the plain module and average gradients
themselves (:func:`average_gradients`): a DDP wrapper would hide the module from methods that hook
its layers or stop the forward early (RMU, RR) and would skip its gradient sync when a forward
ends in an exception. Methods' caches are computed in ``prepare`` by every process on the whole
model, and only the main process writes checkpoints. FSDP configs (FSDP2) train a sharded copy
made after ``prepare`` (:mod:`excise.sharding`): FSDP averages the gradients, checkpoints hold the
whole tensors and the optimizer state by parameter name (gathered, written by the main process),
and the trained weights are gathered back into the caller's model at the end. DeepSpeed ZeRO-3
configs do the same with a partitioned copy driven by a DeepSpeed engine (its backward, step,
accumulation, clipping and gradient norm; the batch sizes, accumulation and clipping of its config
come from :class:`TrainConfig`). With ``lora`` (:mod:`excise.lora`) adapters go on the
layers the method trains, after ``prepare``; the model comes back with them in place.

A loss with a forget and a retain part hands the first to ``ctx.release`` before it runs the
retain forward: in one process or data parallel the loop backwards it at once (one batch's
activations held at a time, same gradients); under FSDP and DeepSpeed it is left in the sum. On a
GPU the loop keeps cuDNN's attention out (:data:`ATTENTION`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import load_file, save_file
from torch.nn.attention import SDPBackend, sdpa_kernel

from excise import fsutil, sharding
from excise.data.encode import Example, collate
from excise.data.records import Record
from excise.errors import ConfigError, ExciseError
from excise.lora import LoraSettings, add_adapters
from excise.models import fingerprint
from excise.progress import progress

Batch = dict[str, dict[str, torch.Tensor] | None]

# Methods whose loss has a forget and a retain part backward the first before the second's forward
# (Context.release): the peak holds one batch's activations, not both. Measured on an H200 with a
# 1B model, batch 32 + 32: graddiff/npo peaked at 23-25 GiB against 14 for forget-only ga.
EARLY_BACKWARD = True

# Attention kernels the loop lets PyTorch choose from on a GPU (None: all). Its first choice on
# Hopper, cuDNN's, plans every new sequence length afresh, and length-sorted batches bring new
# lengths every step: training a 1B model on an H200 its backward took 17 ms of CPU per layer
# call and the GPU was idle 90% of the step (bench/README.md, "1B model on a GPU").
ATTENTION: tuple[SDPBackend, ...] | None = (
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
)


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


@dataclass(frozen=True)
class Launch:
    """How a step's gradients are reduced, clipped and applied: ``plain`` (one process),
    ``ddp`` (every process holds the weights; gradients averaged here), ``fsdp`` (FSDP
    reduce-scatters; the norm is over all shards) or ``deepspeed`` (``engine`` does it all)."""

    kind: Literal["plain", "ddp", "fsdp", "deepspeed"] = "plain"
    engine: Any = None


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM stopped training at a step boundary; ``checkpoint`` is where it was saved
    (or None)."""

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        super().__init__(step, checkpoint)
        self.step = step
        self.checkpoint = checkpoint


class TrainingDiverged(ExciseError):
    """A step's loss (or gradient norm) became non-finite: training stops there. The weights are
    not saved; a periodic checkpoint on disk is the last finite state."""

    def __init__(
        self, step: int, terms: list[str], totals: dict[str, float], checkpoint: Path | None
    ) -> None:
        self.step = step
        latest = latest_checkpoint(checkpoint) if checkpoint and checkpoint.is_dir() else None
        kept = (
            f"the last finite checkpoint is kept in {latest}; delete {checkpoint} before a new run"
            if latest is not None
            else "nothing was written"
        )
        values = ", ".join(f"{k}={totals[k]}" for k in terms)
        super().__init__(
            f"training diverged at step {step}: {values} (lr {totals['lr']:.3g}); lower --lr or "
            f"the method's scale and run again; {kept}"
        )


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C; schedulers and `timeout` send SIGTERM


@contextlib.contextmanager
def _stop_flag() -> Iterator[threading.Event]:
    """While active, the first SIGINT or SIGTERM only sets the flag (the loop stops at the next
    step boundary); the previous handlers come back at once, so a second signal acts as usual."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag  # signal handlers can only be set from the main thread
        return
    previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}

    def handler(signum, frame) -> None:
        flag.set()
        for number, old in previous.items():
            signal.signal(number, old)

    for number in STOP_SIGNALS:
        signal.signal(number, handler)
    try:
        yield flag
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


class Method(Protocol):
    def prepare(self, ctx: Context) -> None: ...

    def loss(self, ctx: Context, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]: ...


BUCKET_BATCHES = 8  # length-sorted batching: sort within windows of this many batches


def epoch_order(
    n: int,
    group: int,
    epoch: int,
    seed: int,
    lengths: Sequence[int] | None = None,
    bucket: int = BUCKET_BATCHES,
) -> list[int]:
    """The order of the ``n`` items in ``epoch`` of the stream that :func:`batch_indices` cuts.

    Without ``lengths``: a seeded shuffle. With them (length-sorted dynamic batching): the
    shuffle is cut into windows of ``bucket * group`` items, each window is sorted by length and
    split into groups (the examples of one optimizer step), and the groups are shuffled, so each
    batch holds items of similar length and pads little. Group boundaries are those of the
    stream (the epoch starts ``epoch * n`` items in); the partial groups at either end of the
    epoch, which share a step with the neighbouring epoch, stay unsorted.
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=generator).tolist()
    if lengths is None or group == 1:  # one item per step never pads
        return order
    if len(lengths) != n:
        raise ValueError(f"lengths has {len(lengths)} entries for {n} items")
    head = min(n, -epoch * n % group)  # completes the step begun in the previous epoch
    body_size = (n - head) // group * group
    body, tail = order[head : head + body_size], order[head + body_size :]
    window = bucket * group
    groups: list[list[int]] = []
    for start in range(0, len(body), window):
        ranked = sorted(body[start : start + window], key=lengths.__getitem__)  # stable
        groups.extend(ranked[i : i + group] for i in range(0, len(ranked), group))
    shuffled = torch.randperm(len(groups), generator=generator).tolist()
    return order[:head] + [i for g in shuffled for i in groups[g]] + tail


def batch_indices(
    n: int,
    batch_size: int,
    draw: int,
    seed: int,
    lengths: Sequence[int] | None = None,
    group: int | None = None,
) -> list[int]:
    """Indices of the ``draw``-th batch of a stream of shuffled epochs over ``n`` items.

    With ``lengths`` (one per item) the epochs are length-sorted (:func:`epoch_order`) in groups
    of ``group`` items (default ``batch_size``; the training loop passes batch_size x grad_accum,
    so one process with batch B/N and N accumulation steps draws exactly the items N processes
    with batch B share). Either way every item comes once per epoch and the batch is a pure
    function of the arguments.
    """
    start = draw * batch_size
    indices: list[int] = []
    while len(indices) < batch_size:
        epoch, offset = divmod(start + len(indices), n)
        order = epoch_order(n, group or batch_size, epoch, seed, lengths)
        take = min(batch_size - len(indices), n - offset)
        indices.extend(order[offset : offset + take])
    return indices


def process_share(rows: list[int], accelerator: Accelerator) -> list[int]:
    """This process's contiguous share of a global batch (all of it in a single process)."""
    size = len(rows) // accelerator.num_processes
    return rows[accelerator.process_index * size : (accelerator.process_index + 1) * size]


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


def _schedule(config: TrainConfig) -> Callable[[int], float]:
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


def latest_checkpoint(folder: Path) -> Path | None:
    steps = [p for p in folder.glob("step-*") if p.name.removeprefix("step-").isdigit()]
    steps.sort(key=lambda p: int(p.name.removeprefix("step-")))
    complete = [p for p in steps if (p / "state.json").is_file()]
    return complete[-1] if complete else None


def checkpoint_settings(config: TrainConfig, method_config: Any) -> dict[str, Any]:
    """What a checkpoint must have been trained with to be resumed (JSON-comparable)."""
    train = {k: v for k, v in asdict(config).items() if k not in ("progress", "checkpoint_every")}
    method = asdict(method_config) if is_dataclass(method_config) else {}
    return json.loads(json.dumps({"train": train, "method": method}, default=str))


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        int(state["step"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ExciseError(
            f"checkpoint {path} is damaged (state.json unreadable); delete {path} to resume from "
            "an earlier one, or the checkpoint folder to start again"
        ) from None
    return state


def _check_settings(path: Path, saved: dict[str, Any] | None, settings: dict[str, Any] | None):
    if settings is None or saved is None or saved == settings:
        return
    changed = sorted(
        f"{part}.{key}"
        for part in ("train", "method")
        for key in set(saved.get(part, {})) | set(settings.get(part, {}))
        if saved.get(part, {}).get(key) != settings.get(part, {}).get(key)
    )
    raise ConfigError(
        f"checkpoint {path} was written with other settings ({', '.join(changed)}); "
        "resume with the same settings, or delete the checkpoint folder to start again"
    )


def check_resumable(folder: Path, settings: dict[str, Any]) -> Path | None:
    """The checkpoint ``--resume`` would continue from, checked before any long work: readable,
    complete (tensor files' sizes) and written with ``settings``; None when there is none."""
    latest = latest_checkpoint(folder) if folder.is_dir() else None
    if latest is None:
        return None
    _check_settings(latest, _read_state(latest).get("settings"), settings)
    for name in ("trainable.safetensors", "rng.safetensors"):
        fsutil.check_safetensors(latest / name, "checkpoint file")
    if not (latest / "optimizer.pt").is_file():
        raise ExciseError(f"checkpoint {latest} lacks optimizer.pt; delete it to start again")
    return latest


def _save_checkpoint(
    folder: Path,
    step: int,
    tensors: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    settings: dict[str, Any] | None = None,
    *,
    launch: str = "plain",
) -> None:
    """Write ``step``'s checkpoint; ``launch`` (:func:`sharding.kind`) says who wrote it: a
    sharded run's optimizer state is keyed by parameter name, a plain run's by position."""
    target = folder / f"step-{step}"
    tmp = folder / f".step-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
        tmp / "trainable.safetensors",
    )
    torch.save(optimizer_state, tmp / "optimizer.pt")
    save_file({"torch": torch.get_rng_state()}, tmp / "rng.safetensors")
    by_name = launch != "plain"  # also read by checkpoints written before "launch" was
    state = {"step": step, "settings": settings, "optimizer_by_name": by_name, "launch": launch}
    (tmp / "state.json").write_text(json.dumps(state))
    tmp.rename(target)
    for old in folder.glob("step-*"):  # keep only the newest
        if old != target:
            shutil.rmtree(old, ignore_errors=True)


def _write_checkpoint(
    folder: Path,
    step: int,
    named: dict[str, torch.nn.Parameter],
    optimizer,
    settings: dict[str, Any],
    accelerator: Accelerator,
    sharded: torch.nn.Module | None,
) -> None:
    """Every process calls this; the main process writes (under FSDP after gathering)."""
    if sharded is None:  # every process holds the same weights
        if accelerator.is_main_process:
            _save_checkpoint(folder, step, named, optimizer.state_dict(), settings)
    else:
        tensors = sharding.gather(named)  # collectives: every process takes part
        optimizer_state = sharding.optimizer_state(sharded, optimizer)
        if accelerator.is_main_process:
            _save_checkpoint(
                folder,
                step,
                tensors,
                optimizer_state,
                settings,
                launch=sharding.kind(sharded),
            )
    accelerator.wait_for_everyone()


LAUNCHES = {  # sharding.kind: (who wrote a checkpoint, how a run goes)
    "plain": ("an unsharded", "without sharding"),
    "fsdp": ("an FSDP", "under FSDP"),
    "deepspeed": ("a DeepSpeed ZeRO-3", "under DeepSpeed ZeRO-3"),
}


def _load_checkpoint(
    path: Path,
    named: dict[str, torch.nn.Parameter],
    optimizer,
    settings: dict[str, Any] | None = None,
    sharded: torch.nn.Module | None = None,
) -> int:
    state = _read_state(path)
    written = state.get("launch") or ("fsdp" if state.get("optimizer_by_name") else "plain")
    if written != sharding.kind(sharded):
        raise ConfigError(
            f"checkpoint {path} was written by {LAUNCHES[written][0]} run and cannot be resumed "
            f"{LAUNCHES[sharding.kind(sharded)][1]}; resume with the same kind of launch, or "
            "delete the checkpoint folder to start again"
        )
    _check_settings(path, state.get("settings"), settings)
    for name in ("trainable.safetensors", "rng.safetensors"):
        fsutil.check_safetensors(path / name, "checkpoint file")
    tensors = load_file(path / "trainable.safetensors")
    if set(tensors) != set(named):
        raise ExciseError(
            f"checkpoint {path} was written for other trainable weights; cannot resume"
        )
    for name, param in named.items():
        sharding.load_whole(param, tensors[name])
    # weights_only: the safe unpickler, which refuses arbitrary objects
    try:
        optimizer_state = torch.load(path / "optimizer.pt", weights_only=True)
    except Exception as error:  # truncated or foreign: torch raises several types
        raise ExciseError(
            f"checkpoint {path} is damaged (optimizer.pt: {str(error).splitlines()[0][:80]}); "
            "delete the checkpoint folder to start again"
        ) from None
    if sharded is None:
        optimizer.load_state_dict(optimizer_state)
    else:
        sharding.load_optimizer_state(sharded, optimizer, optimizer_state)
    torch.set_rng_state(load_file(path / "rng.safetensors")["torch"])
    return int(state["step"])


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
    :func:`excise.lora.merge_adapters` folds them in and returns them in peft's format.
    """
    if not forget:
        raise ExciseError("the forget set is empty: nothing to unlearn")
    if uses_retain and not retain:
        raise ExciseError("this method needs a retain set, and it is empty")
    if lora is not None and hasattr(method_config, "lora_rank"):
        # such a method (rr) injects and merges adapters itself, ours included
        raise ConfigError(
            "this method has its own LoRA option (lora_rank); set it with --set lora_rank=R "
            "instead of --lora"
        )
    set_seed(config.seed)
    with sharding.accelerate_without_deepspeed():  # the loop drives DeepSpeed itself
        accelerator = Accelerator(cpu=not torch.cuda.is_available())
    use_deepspeed = sharding.deepspeed_requested() and accelerator.num_processes > 1
    use_fsdp = not use_deepspeed and sharding.fsdp_requested(accelerator)
    if (use_fsdp or use_deepspeed) and not getattr(method, "shardable", True):
        name = getattr(method, "name", "this method")
        raise ConfigError(
            f"{name} cannot train a sharded model under FSDP or DeepSpeed ZeRO-3 (it runs the "
            "model on its own copies of the weights); run it data parallel with "
            "configs/accelerate/ddp.yaml"
        )
    if config.batch_size % accelerator.num_processes:
        raise ConfigError(
            f"batch_size {config.batch_size} must be a multiple of the {accelerator.num_processes} "
            "processes: each process takes an equal share of the global batch"
        )
    model.to(accelerator.device)  # method caches are computed before accelerate wraps the model
    model.train()
    ctx = Context(
        model, tokenizer, method_config, forget, retain, forget_records, template, accelerator
    )
    ctx.state["steps"] = config.steps  # for methods whose loss follows a schedule
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
    sharded = None
    if use_deepspeed:
        trainable = [p for p in model.parameters() if p.requires_grad]
        ds_config = sharding.deepspeed_config(
            accelerator.num_processes,
            config.batch_size,
            config.grad_accum,
            config.max_grad_norm,
            trainable[0].dtype if trainable else torch.float32,
        )
        sharded = sharding.zero3_copy(model, ds_config)
    elif use_fsdp:
        sharded = sharding.shard(model, accelerator)
    trained = model if sharded is None else sharded
    named = {n: p for n, p in trained.named_parameters() if p.requires_grad}
    if not named:
        raise ExciseError("the method left no trainable parameters")
    decay = [p for n, p in named.items() if p.ndim >= 2]
    no_decay = [p for n, p in named.items() if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(
        [g for g in groups if g["params"] or not use_deepspeed],  # ZeRO-3 needs no empty group
        lr=config.lr,
        # one fused kernel instead of a loop over tensors: the optimizer step took 12-31% of a
        # full-model step on CPU and 0.11-0.22x of that fused (bench/README.md)
        fused=all(
            p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in named.values()
        ),
    )
    if use_deepspeed:  # the engine reduces, clips and steps; optimizer stays torch's (schedule)
        engine = sharding.zero3_engine(sharded, optimizer, ds_config)
        ctx.model, launch = sharded, Launch("deepspeed", engine)
    elif sharded is not None:  # FSDP reduces the gradients; no accelerate wrappers
        ctx.model, launch = sharded, Launch("fsdp")
    elif accelerator.num_processes > 1:  # the plain module; gradients averaged in _step
        optimizer, launch = accelerator.prepare(optimizer), Launch("ddp")
    else:
        ctx.model, optimizer = accelerator.prepare(model, optimizer)
        launch = Launch()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config))

    start = 0
    settings = checkpoint_settings(config, method_config)
    if resume and checkpoint_dir is not None and (latest := latest_checkpoint(checkpoint_dir)):
        start = _load_checkpoint(latest, named, optimizer, settings, sharded)
        with warnings.catch_warnings():  # replaying the schedule, not skipping a step
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(start):
                scheduler.step()
    log: list[dict[str, float]] = []
    main = accelerator.is_main_process
    bar = progress(  # a bar on a terminal, plain lines in a log (excise.progress)
        total=config.steps,
        initial=start,
        desc="train",
        unit="steps",
        enabled=config.progress and main,
    )
    kernels = (
        sdpa_kernel(list(ATTENTION))
        if ATTENTION is not None and accelerator.device.type == "cuda"
        else contextlib.nullcontext()
    )
    with _stop_flag() as interrupted, kernels:
        for step in range(start, config.steps):
            totals = _step(
                ctx,
                method,
                config,
                named,
                optimizer,
                scheduler,
                step,
                uses_retain,
                launch,
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
                _write_checkpoint(
                    checkpoint_dir, step + 1, named, optimizer, settings, accelerator, sharded
                )
            if interrupted.is_set():
                bar.close()
                _gather_into(model, named, sharded, launch.engine)
                raise TrainingInterrupted(step + 1, checkpoint_dir)
    bar.close()
    _gather_into(model, named, sharded, launch.engine)
    if sharded is not None:  # finish (e.g. merging adapters) works on the caller's model
        ctx.model = model
    if getattr(method, "finish", None) is not None:
        method.finish(ctx)
    for param in model.parameters():
        param.requires_grad_(True)
    model.eval()
    return log


def _gather_into(
    model: torch.nn.Module,
    named: dict[str, torch.nn.Parameter],
    sharded: torch.nn.Module | None,
    engine=None,
) -> None:
    """When sharded, copy the trained weights (gathered from every process) into ``model``."""
    if sharded is None:
        return
    with torch.no_grad():
        for name, whole in sharding.gather(named).items():
            model.get_parameter(name).copy_(whole)
    if engine is not None:  # its hooks and buffers go with the copy
        engine.destroy()


def _step(
    ctx: Context,
    method: Method,
    config: TrainConfig,
    named: dict[str, torch.nn.Parameter],
    optimizer,
    scheduler,
    step: int,
    uses_retain: bool,
    launch: Launch = Launch(),
) -> dict[str, float]:
    """One optimizer step of ``grad_accum`` micro-batches; returns the averaged loss terms."""
    accelerator, forget, retain = ctx.accelerator, ctx.forget, ctx.retain
    ctx.state["step"] = step
    # length-sorted batches: similar lengths together, so little padding (pure in seed and step);
    # sorted in groups of one optimizer step's examples, the same whatever the process count
    group = config.batch_size * config.grad_accum
    sorting = {
        name: ([len(e.input_ids) for e in part], group)
        for name, part in (("forget", forget), ("retain", retain))
    }
    totals: dict[str, float] = {}

    def backward(part: torch.Tensor) -> None:  # a micro-batch's (part of its) loss
        accelerator.backward(part / config.grad_accum)

    for micro in range(config.grad_accum):
        draw = step * config.grad_accum + micro
        forget_rows = process_share(
            batch_indices(len(forget), config.batch_size, draw, config.seed, *sorting["forget"]),
            accelerator,
        )
        batch: Batch = {
            "forget": ctx.to_device(collate([forget[i] for i in forget_rows], ctx.pad_id))
        }
        batch["retain"] = None
        if uses_retain:
            retain_rows = process_share(
                batch_indices(
                    len(retain), config.batch_size, draw, config.seed + 1, *sorting["retain"]
                ),
                accelerator,
            )
            batch["retain"] = ctx.to_device(collate([retain[i] for i in retain_rows], ctx.pad_id))
        last = micro == config.grad_accum - 1
        if launch.kind == "deepspeed":  # scales by 1/grad_accum and steps after the last
            sharding.zero3_forward_begins(launch.engine)
            loss, terms = method.loss(ctx, batch)
            sharding.zero3_backward(launch.engine, loss)
        else:
            if launch.kind == "fsdp":  # FSDP reduce-scatters after the last micro-batch only
                ctx.model.set_requires_gradient_sync(last)
                sync = contextlib.nullcontext()
            else:
                sync = contextlib.nullcontext() if last else accelerator.no_sync(ctx.model)

            if launch.kind in ("plain", "ddp") and EARLY_BACKWARD:  # one reduction, after
                ctx.early_backward = backward
            try:
                with sync:
                    loss, terms = method.loss(ctx, batch)
                    if loss.requires_grad:  # not when every term was released
                        backward(loss)
            finally:
                ctx.early_backward = None
        for key, value in {"loss": float(loss.detach()), **terms}.items():
            totals[key] = totals.get(key, 0.0) + value / config.grad_accum
    if accelerator.num_processes > 1:  # log the mean over processes, as one process would see it
        keys = sorted(totals)
        local = torch.tensor([totals[k] for k in keys], device=accelerator.device)
        totals = dict(zip(keys, accelerator.reduce(local, "mean").tolist(), strict=True))
    if launch.kind == "deepspeed":  # clipped and stepped by the engine; norm before clipping
        totals["grad_norm"] = float(launch.engine.get_global_grad_norm())
    else:
        if launch.kind == "ddp":
            average_gradients(list(named.values()), accelerator.num_processes)
        if launch.kind == "fsdp":  # the norm over every shard
            totals["grad_norm"] = sharding.clip_grad_norm(
                list(named.values()), config.max_grad_norm
            )
        else:
            totals["grad_norm"] = float(
                accelerator.clip_grad_norm_(list(named.values()), config.max_grad_norm)
            )
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    totals["lr"] = scheduler.get_last_lr()[0]
    totals["step"] = step + 1
    return totals


def config_dict(config: Any) -> dict[str, Any]:
    return asdict(config)
