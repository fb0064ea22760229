"""Training: the one loop every gradient-based method runs through, and what it stands on.

- :mod:`~excise.train.loop`: :func:`train` and one optimizer step; its module settings
  (``loop.ATTENTION``) are read there.
- :mod:`~excise.train.config`: :class:`TrainConfig`, :class:`Context`, the :class:`Method`
  protocol, :data:`Batch`, the lr schedule.
- :mod:`~excise.train.batches`: which examples each micro-batch holds (length-sorted, a pure
  function of seed and draw) and each process's share.
- :mod:`~excise.train.launch`: the kinds of launch (plain, ddp, fsdp, zero3) behind one
  interface (``launch.EARLY_BACKWARD`` is read there); :mod:`~excise.train.fsdp` and
  :mod:`~excise.train.zero3` are the sharded ones' mechanics.
- :mod:`~excise.train.checkpoint`: save, load, resume checks; :mod:`~excise.train.signals`:
  Ctrl-C/SIGTERM and divergence.
- memory options (:class:`TrainConfig` ``optimizer_in_backward``, ``optimizer_states``,
  ``gradient_checkpointing``): :mod:`~excise.train.optim` (the optimizer, stepped in the
  backward or not), :mod:`~excise.train.adamw_bf16` (bf16 moments),
  :mod:`~excise.train.recompute` (activation checkpointing).
- :mod:`~excise.train.objectives`: plain fine-tuning (:data:`FINETUNE`) for teaching and the
  relearn attack; :mod:`~excise.train.lora`: LoRA adapters; :mod:`~excise.train.tracking`:
  experiment trackers (``--report-to``).
"""

from __future__ import annotations

from excise.train.batches import (
    BUCKET_BATCHES,
    batch_indices,
    epoch_order,
    micro_batch,
    process_share,
)
from excise.train.checkpoint import (
    check_resumable,
    checkpoint_settings,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    write_checkpoint,
)
from excise.train.config import Batch, Context, Method, TrainConfig, config_dict, schedule
from excise.train.launch import Launch, average_gradients, choose_launch, is_main_process
from excise.train.loop import train, train_step
from excise.train.lora import LoraSettings
from excise.train.objectives import FINETUNE, FinetuneConfig, Objective, fine_tune
from excise.train.signals import (
    STOP_SIGNALS,
    TrainingDiverged,
    TrainingInterrupted,
    stop_flag,
)

__all__ = [
    "BUCKET_BATCHES",
    "FINETUNE",
    "STOP_SIGNALS",
    "Batch",
    "Context",
    "FinetuneConfig",
    "Launch",
    "LoraSettings",
    "Method",
    "Objective",
    "TrainConfig",
    "TrainingDiverged",
    "TrainingInterrupted",
    "average_gradients",
    "batch_indices",
    "check_resumable",
    "checkpoint_settings",
    "choose_launch",
    "config_dict",
    "epoch_order",
    "fine_tune",
    "is_main_process",
    "latest_checkpoint",
    "load_checkpoint",
    "micro_batch",
    "process_share",
    "save_checkpoint",
    "schedule",
    "stop_flag",
    "train",
    "train_step",
    "write_checkpoint",
]
