"""Which examples each micro-batch holds: a pure function of (seed, draw), so a resumed run sees
exactly the batches an uninterrupted one would. Epochs are length-sorted (:func:`epoch_order`) so
batches pad little, and under ``accelerate launch`` each process takes its contiguous share of
the global batch (:func:`process_share`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from accelerate import Accelerator

from excise.data.encode import Example, collate
from excise.train.config import Batch, Context, TrainConfig

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


def forget_drawn(ctx: Context, config: TrainConfig) -> list[Example]:
    """The forget examples this process's micro-batches hold over the whole run (every draw of
    ``config.steps`` steps), in forget-set order: what a method's per-example cache needs to
    cover (a short run draws a fraction of a large forget set)."""
    group = config.batch_size * config.grad_accum
    lengths = [len(e.input_ids) for e in ctx.forget]
    drawn: set[int] = set()
    for draw in range(config.steps * config.grad_accum):
        rows = batch_indices(len(ctx.forget), config.batch_size, draw, config.seed, lengths, group)
        drawn.update(process_share(rows, ctx.accelerator))
        if len(drawn) == len(ctx.forget):
            break
    return [ctx.forget[i] for i in sorted(drawn)]


def micro_batch(ctx: Context, config: TrainConfig, draw: int, uses_retain: bool) -> Batch:
    """This process's share of the ``draw``-th micro-batch, on its device: forget examples, and
    as many retain examples when the method uses them (else None). Batches are length-sorted in
    groups of one optimizer step's examples, the same whatever the process count."""
    group = config.batch_size * config.grad_accum

    def rows(examples: list[Example], seed: int) -> dict[str, torch.Tensor]:
        lengths = [len(e.input_ids) for e in examples]
        drawn = batch_indices(len(examples), config.batch_size, draw, seed, lengths, group)
        share = process_share(drawn, ctx.accelerator)
        return ctx.to_device(collate([examples[i] for i in share], ctx.pad_id))

    batch: Batch = {"forget": rows(ctx.forget, config.seed)}
    batch["retain"] = rows(ctx.retain, config.seed + 1) if uses_retain else None
    return batch
