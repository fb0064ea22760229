"""LoRA relearning configurations trained side by side: one copy of the model, one adapter per
configuration, and one forward per data source over the frozen base weights.

Every adapted linear layer (:func:`excise.attacks.relearn_run.lora_targets`) becomes a
:class:`MultiLora`: the frozen layer and ``K`` adapters (rank ``r``, scale ``alpha / r``, A drawn as
peft draws it, B zero). A batch is stacked per adapter: ``slots`` names the adapter of each equal
slice of the rows, and each slice goes through its own A and B, so the K configurations cost one
forward and one backward of a K-times larger batch instead of K of their own (and one clone, one
optimizer). Configurations on the same source draw the same examples at every step (the draw is a
pure function of seed and step, :func:`excise.train.batch_indices`), so their slices are one
batch repeated; sources are stacked one forward each (no padding of short answers to long text).

Each slice's loss is its own mean NLL and the step's loss their sum, so an adapter's gradients are
exactly those of its configuration alone. AdamW holds one parameter group per adapter (its own
learning rate); gradients are clipped per adapter (max norm 1.0, as the training loop clips one
run); a non-finite loss or norm ends that adapter alone as ``"diverged"``. A is drawn from a
generator seeded by the budget's seed and the layer's index, the same for every adapter, so a
configuration's curve does not depend on what trains beside it. Checkpoints score half B for every
adapter still running in one stacked pass; stops are those of one configuration
(:class:`excise.attacks.relearn_run.Watch`), and an adapter that stops stays as it is (frozen)
until the retain set is scored for all at the end.

Equal, up to float rounding, to training each adapter alone (tests/test_relearn_side.py); the
training settings are the relearn attack's (constant learning rate, no warm-up, no weight decay).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from excise.attacks.relearn_run import Stops, Watch, lora_targets
from excise.data.encode import Example, collate, encode_pair, encode_records
from excise.data.records import QA, Record
from excise.models import clone_model
from excise.scoring import forward_stats

MAX_GRAD_NORM = 1.0  # the training loop's default clipping, which the relearn attack trains with
SCORE_ROWS = 64  # rows per stacked scoring forward (items x adapters)


class MultiLora(nn.Module):
    """A frozen linear layer with ``count`` LoRA adapters; ``slots`` picks the adapter of each
    equal slice of the batch (empty: the base layer alone)."""

    def __init__(self, base: nn.Linear, count: int, rank: int, alpha: float, init: torch.Tensor):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        dtype, device = base.weight.dtype, base.weight.device
        self.lora_A = nn.ParameterList(
            nn.Parameter(init.to(device=device, dtype=dtype).clone()) for _ in range(count)
        )
        self.lora_B = nn.ParameterList(
            nn.Parameter(torch.zeros(base.out_features, rank, dtype=dtype, device=device))
            for _ in range(count)
        )
        self.slots: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if not self.slots:
            return out
        a = torch.stack([self.lora_A[k] for k in self.slots])  # (slices, r, in)
        b = torch.stack([self.lora_B[k] for k in self.slots])  # (slices, out, r)
        rows = x.reshape(len(self.slots), -1, x.shape[-1])
        delta = torch.bmm(torch.bmm(rows, a.transpose(1, 2)), b.transpose(1, 2))
        return out + delta.reshape(out.shape) * self.scale


def lora_init(rank: int, features: int, generator: torch.Generator) -> torch.Tensor:
    """A LoRA ``A`` as peft draws it (Kaiming uniform, a = sqrt 5), from ``generator``."""
    weight = torch.empty(rank, features)
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
    return weight


class SideBySide:
    """``count`` adapters injected into ``model`` (in place: give it a copy)."""

    def __init__(self, model, count: int, rank: int, alpha: float, seed: int) -> None:
        names = set(lora_targets(model))
        chosen = [
            (name, module)
            for name, module in model.named_modules()
            if name.rsplit(".", 1)[-1] in names and isinstance(module, nn.Linear)
        ]
        for param in model.parameters():
            param.requires_grad_(False)
        self.model, self.layers = model, []
        for index, (name, module) in enumerate(chosen):
            generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
            layer = MultiLora(
                module, count, rank, alpha, lora_init(rank, module.in_features, generator)
            )
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, layer)
            self.layers.append(layer)

    @staticmethod
    def supports(model) -> bool:
        """Whether every layer LoRA adapts is a plain ``nn.Linear`` (GPT-2's Conv1D is not)."""
        names = set(lora_targets(model))
        found = [m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in names]
        return bool(found) and all(type(m) is nn.Linear for m in found)

    def parameters(self, adapter: int) -> list[nn.Parameter]:
        return [p for layer in self.layers for p in (layer.lora_A[adapter], layer.lora_B[adapter])]

    @contextlib.contextmanager
    def slots(self, slots: Sequence[int]) -> Iterator[None]:
        for layer in self.layers:
            layer.slots = list(slots)
        try:
            yield
        finally:
            for layer in self.layers:
                layer.slots = []

    def forward(self, batch: dict[str, torch.Tensor], slots: Sequence[int]):
        """Sequence statistics of ``batch`` repeated once per adapter in ``slots``."""
        stacked = {k: v.repeat(len(slots), *[1] * (v.dim() - 1)) for k, v in batch.items()}
        with self.slots(slots):
            return forward_stats(self.model, stacked)


@dataclass
class Lane:
    """One configuration trained side by side: its data (``source``: lanes with the same source
    draw the same batches), learning rate and watch (rows, stops)."""

    source: str
    examples: list[Example]
    lr: float
    watch: Watch
    attacking: bool = True
    reference: bool = False


def accuracies(side: SideBySide, tokenizer, items: list[QA], template: str, lanes: list[int]):
    """Share of ``items`` answered token for token, per adapter in ``lanes``, in stacked passes."""
    device = next(side.model.parameters()).device
    examples = [
        encode_pair(tokenizer, q.prompt, q.completion, template, i) for i, q in enumerate(items)
    ]
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    chunk = max(1, SCORE_ROWS // len(lanes))
    correct = torch.zeros(len(lanes), len(items), dtype=torch.bool)
    side.model.eval()
    with torch.no_grad():
        for start in range(0, len(order), chunk):
            rows = order[start : start + chunk]
            batch = collate([examples[i] for i in rows], tokenizer.pad_token_id)
            stats = side.forward({k: v.to(device) for k, v in batch.items()}, lanes)
            correct[:, rows] = stats.correct.cpu().view(len(lanes), len(rows))
    side.model.train()
    # as excise.attacks.base.accuracy computes it: the mean of the float32 row, in item order
    return [float(correct[k].float().mean()) for k in range(len(lanes))]


def _step(side: SideBySide, lanes: list[Lane], active: list[int], draw: int, batch_size, seed, pad):
    """The summed loss of every active lane's slice, backwarded; {lane: loss}."""
    from excise.train import batch_indices

    device = next(side.model.parameters()).device
    losses: dict[int, float] = {}
    for source in dict.fromkeys(lanes[k].source for k in active):
        members = [k for k in active if lanes[k].source == source]
        examples = lanes[members[0]].examples
        lengths = [len(e.input_ids) for e in examples]
        drawn = batch_indices(len(examples), batch_size, draw, seed, lengths, batch_size)
        batch = collate([examples[i] for i in drawn], pad)
        stats = side.forward({k: v.to(device) for k, v in batch.items()}, members)
        logprob = stats.logprob.view(len(members), -1).sum(1)
        tokens = stats.tokens.view(len(members), -1).sum(1).clamp(min=1)
        nll = -logprob / tokens  # each slice's mean NLL per target token, as the loop's
        nll.sum().backward()
        losses |= dict(zip(members, nll.detach().tolist(), strict=True))
    return losses


def train_side_by_side(
    model,
    tokenizer,
    lanes: list[Lane],
    *,
    held_out: list[QA],
    template: str,
    budget,
    start: dict[str, float] | None,
    after: Callable[[list[int]], list[int]] | None = None,
) -> SideBySide:
    """Train every lane's adapter on a copy of ``model`` to the budget's last checkpoint (or the
    lane's stop), scoring half B (``held_out``) at the checkpoints; return the adapters, each as
    it stopped.

    ``start``: the model's own scores at step 0 (every adapter starts at B = 0), else scored once.
    At a checkpoint every lane's row is added before any lane decides, so a lane's leader
    (:class:`~excise.attacks.relearn_run.Stops`) sees every other lane at that step.
    ``after(running)``: called after each checkpoint with the lanes still running; returns those
    the grid ends there (their ``end["stopped"]`` set by it)."""
    side = SideBySide(
        clone_model(model), len(lanes), budget.lora_rank, budget.lora_alpha, budget.seed
    )
    groups = [
        {"params": side.parameters(k), "lr": lane.lr, "weight_decay": 0.0}
        for k, lane in enumerate(lanes)
    ]
    device = next(side.model.parameters()).device
    optimizer = torch.optim.AdamW(groups, fused=device.type in ("cpu", "cuda"))
    checkpoints, last = set(budget.steps), max(budget.steps)
    active = list(range(len(lanes)))

    def checkpoint(step: int) -> None:
        if step == 0:  # B = 0: every adapter is the model itself
            score = start or {
                "forget_accuracy": accuracies(side, tokenizer, held_out, template, [0])[0]
            }
            scores = [dict(score) for _ in active]
        else:
            values = accuracies(side, tokenizer, held_out, template, active)
            scores = [{"forget_accuracy": v} for v in values]
        for k, score in zip(active, scores, strict=True):
            lanes[k].watch.add(step, score)
        active[:] = [k for k in active if not lanes[k].watch.decide(step)]
        ended = after(list(active)) if after is not None else []
        active[:] = [k for k in active if k not in ended]

    if 0 in checkpoints:
        checkpoint(0)
    side.model.train()
    pad = tokenizer.pad_token_id
    for step in range(1, last + 1):
        if not active:
            break
        losses = _step(side, lanes, active, step - 1, budget.batch_size, budget.seed, pad)
        for k in list(active):
            norm = float(torch.nn.utils.clip_grad_norm_(side.parameters(k), MAX_GRAD_NORM))
            if not (math.isfinite(losses[k]) and math.isfinite(norm)):
                lanes[k].watch.end.update(stopped="diverged", diverged_at=step)
                active.remove(k)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step in checkpoints and active:
            checkpoint(step)
    side.model.eval()
    return side


def lane_examples(
    tokenizer, records: list[Record], template: str, max_length: int
) -> list[Example]:
    return encode_records(tokenizer, records, template, max_length=max_length)


def make_lane(config, records, tokenizer, task, budget, stops: Stops) -> Lane:
    """A lane for a relearn :class:`~excise.attacks.relearn.Configuration` on ``records``."""
    source = config.variant.rsplit("_", 1)[0]
    length = budget.text_tokens if source == "text" else 256
    watch = Watch(config.name, config.variant, config.lr, stops, max(budget.steps))
    return Lane(
        source=source,
        examples=lane_examples(tokenizer, records, task.template, length),
        lr=config.lr,
        watch=watch,
        attacking=not config.variant.startswith("same"),
        reference=config.reference,
    )


def retain_accuracies(
    side: SideBySide, tokenizer, task, lanes: list[Lane], cap: int | None
) -> None:
    """Retain accuracy (the first ``cap`` items of retain_eval) of every lane that could win the
    grid (not diverged, not behind), in one stacked pass, into its end."""
    chosen = [
        k for k, lane in enumerate(lanes) if lane.watch.end["stopped"] not in ("diverged", "behind")
    ]
    kept = list(task.retain_eval)[:cap]
    if not chosen or not kept:
        for k in chosen:
            lanes[k].watch.end["retain_accuracy"] = float("nan")
        return
    for k, value in zip(
        chosen, accuracies(side, tokenizer, kept, task.template, chosen), strict=True
    ):
        lanes[k].watch.end["retain_accuracy"] = value


def ends(lanes: list[Lane]) -> dict[str, dict[str, Any]]:
    return {lane.watch.name: lane.watch.end for lane in lanes}
