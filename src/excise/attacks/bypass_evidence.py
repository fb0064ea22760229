"""The evidence the bypass check (:mod:`excise.attacks.bypass`) weighs: the behaviour's direction
in the original model, whether the changed model's weights still hold it, and how fast each model
relearns the behaviour. Its settings are :class:`BypassConfig`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from excise.activations.fold import fold_affine
from excise.activations.probe import probe_accuracy
from excise.activations.states import residual_states
from excise.arch import block_part, candidate_layers, num_layers
from excise.attacks.relearn import fine_tune_watching
from excise.data.records import QA
from excise.errors import ConfigError, DataError
from excise.metrics.quality import auc
from excise.models import clone_model


@dataclass
class Behaviour:
    """Texts that show the behaviour or not (the direction), and items that score it."""

    positive: list[str]
    negative: list[str]
    items: list[tuple[str, str, str | None]]  # (prompt, behaviour continuation, alternative)
    kind: str = "margin"  # margin: continuation minus alternative; logprob: the continuation

    def __post_init__(self) -> None:
        if min(len(self.positive), len(self.negative)) < 4 or len(self.items) < 2:
            raise DataError(
                "the bypass check needs >= 4 positive and 4 negative texts and >= 2 scored items"
            )


@dataclass
class BypassConfig:
    layer: int | None = None
    candidates: int = 8
    first_layer: int | None = None  # None: a tenth of the depth, at least 1 (not layer 0)
    scales: tuple[float, ...] = (0.5, 1.0, 2.0)
    relearn_steps: tuple[int, ...] = (0, 1, 2, 3, 5, 8, 12, 20)
    relearn_lr: float = 1e-4
    relearn_batch: int = 8
    top_writers: int = 32
    present_cosine: float = 0.5
    present_writers: float = 0.5
    restore: float = 0.5
    relearn_speedup: float = 2.0
    min_drop: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        self.scales, self.relearn_steps = tuple(self.scales), tuple(self.relearn_steps)
        if self.candidates < 1 or self.top_writers < 1 or self.relearn_batch < 1:
            raise ConfigError("candidates, top_writers and relearn_batch must be >= 1")
        if not self.scales or any(not s > 0 for s in self.scales):
            raise ConfigError("scales must be a non-empty list of numbers > 0")
        if not self.relearn_steps or min(self.relearn_steps) < 0 or not self.relearn_lr > 0:
            raise ConfigError("relearn_steps must be numbers >= 0 and relearn_lr > 0")
        if self.min_drop < 0 or not 0 < self.restore <= 1:
            raise ConfigError("min_drop must be >= 0 and restore in (0, 1]")
        if not self.relearn_speedup >= 1 or (self.first_layer is not None and self.first_layer < 0):
            raise ConfigError("relearn_speedup must be >= 1 and first_layer >= 0")


def direction_layers(depth: int, count: int, first: int | None = None) -> list[int]:
    """``count`` layers spread from ``first`` (default a tenth of the depth, >= 1) to 80% of it."""
    return candidate_layers(depth, count, max(1, round(depth / 10)) if first is None else first)


def pooled_states(model, tokenizer, texts, layers, template) -> dict[int, torch.Tensor]:
    """{layer: (texts, hidden)}: each text's states after block ``layer``, mean over its tokens."""
    found = residual_states(model, tokenizer, texts, layers, template=template, positions="all")
    counts = torch.bincount(found.prompt, minlength=len(texts)).clamp(min=1).unsqueeze(1)
    pooled = {}
    for layer, rows in found.by_layer.items():
        total = rows.new_zeros(len(texts), rows.shape[1]).index_add(0, found.prompt, rows)
        pooled[layer] = total / counts
    return pooled


def cohens_d(positive: torch.Tensor, negative: torch.Tensor) -> float:
    spread = ((positive.var() + negative.var()) / 2).clamp(min=1e-12).sqrt()
    return float((positive.mean() - negative.mean()) / spread)


def mlp_value_vectors(model) -> torch.Tensor:
    """(layers * intermediate, hidden): every MLP value vector (what each neuron writes)."""
    from transformers.pytorch_utils import Conv1D

    rows = []
    for layer in range(num_layers(model)):
        writer = block_part(model, layer, "mlp_out")
        weight = writer.weight.detach().float().cpu()
        rows.append(weight if isinstance(writer, Conv1D) else weight.T)
    return torch.cat(rows)


@dataclass
class Split:
    """Which texts fit the direction (even positions of each class) and which are held out."""

    label: torch.Tensor  # (texts,) 1 positive, 0 negative
    fit: torch.Tensor  # (texts,) bool

    @classmethod
    def of(cls, behaviour: Behaviour) -> Split:
        sides = [i % 2 == 0 for i in range(len(behaviour.positive))]
        sides += [i % 2 == 0 for i in range(len(behaviour.negative))]
        labels = [1] * len(behaviour.positive) + [0] * len(behaviour.negative)
        return cls(torch.tensor(labels), torch.tensor(sides))

    def rows(self, fit: bool, label: int) -> torch.Tensor:
        return (self.fit == fit) & (self.label == label)

    def difference(self, states: torch.Tensor) -> torch.Tensor:
        return states[self.rows(True, 1)].mean(0) - states[self.rows(True, 0)].mean(0)

    def gap(self, projection: torch.Tensor) -> float:
        return float(
            projection[self.rows(False, 1)].mean() - projection[self.rows(False, 0)].mean()
        )


def find_direction(original, tokenizer, texts, split: Split, layers, template):
    """(layer, unit direction, states at that layer, per-candidate rows) in the original model."""
    states = pooled_states(original, tokenizer, texts, layers, template)
    found, rows = {}, []
    for layer in layers:
        difference = split.difference(states[layer])
        unit = difference / difference.norm().clamp(min=1e-12)
        projection = states[layer] @ unit
        held = ~split.fit
        rows.append(
            {
                "layer": layer,
                "held_out_d": cohens_d(
                    projection[split.rows(False, 1)], projection[split.rows(False, 0)]
                ),
                "held_out_auc": auc(
                    projection[held][split.label[held] == 1],
                    projection[held][split.label[held] == 0],
                ),
            }
        )
        found[layer] = unit
    layer = max(rows, key=lambda r: r["held_out_d"])["layer"]
    return layer, found[layer], states[layer], rows


def writer_alignment(original, modified, unit: torch.Tensor, top: int) -> float:
    """Mean |cos| with ``unit`` of the original's ``top`` most aligned MLP value vectors, read in
    ``modified``, over the same in the original."""
    before, after = mlp_value_vectors(original), mlp_value_vectors(modified)
    cos_before = (before @ unit) / before.norm(dim=1).clamp(min=1e-12)
    chosen = cos_before.abs().topk(min(top, len(cos_before))).indices
    cos_after = (after[chosen] @ unit) / after[chosen].norm(dim=1).clamp(min=1e-12)
    return float(cos_after.abs().mean() / cos_before[chosen].abs().mean().clamp(min=1e-12))


def presence(original, modified, unit, x_orig, x_mod, split: Split, config) -> dict[str, Any]:
    difference = split.difference(x_mod)
    cosine = float(difference @ unit / difference.norm().clamp(min=1e-12))
    writers = writer_alignment(original, modified, unit, config.top_writers)
    p_orig, p_mod = x_orig @ unit, x_mod @ unit
    gap_orig, gap_mod = split.gap(p_orig), split.gap(p_mod)
    held_pos, held_neg = split.rows(False, 1), split.rows(False, 0)
    return {
        "direction_cosine": cosine,
        "writer_alignment": writers,
        "projection_gap": {"original": gap_orig, "modified": gap_mod},
        "projection_gap_ratio": gap_mod / gap_orig if abs(gap_orig) > 1e-12 else None,
        "positive_projection": {
            "original": float(p_orig[held_pos].mean()),
            "modified": float(p_mod[held_pos].mean()),
        },
        "negative_projection": {
            "original": float(p_orig[held_neg].mean()),
            "modified": float(p_mod[held_neg].mean()),
        },
        "probe_accuracy": {
            "original": probe_accuracy(x_orig, split.label, split.fit)[0],
            "modified": probe_accuracy(x_mod, split.label, split.fit)[0],
        },
        "present": cosine >= config.present_cosine and writers >= config.present_writers,
    }


def relearn_curve(model, tokenizer, records: list[QA], score, template, config) -> list[dict]:
    """Fine-tune a copy of ``model`` on ``records``; ``{"step", **score(copy)}`` at each step."""

    copy = clone_model(model)
    checkpoints = set(config.relearn_steps)
    rows: list[dict[str, Any]] = []

    def measure(step: int) -> None:
        if step in checkpoints:
            rows.append({"step": step, **score(copy)})

    fine_tune_watching(
        copy,
        tokenizer,
        list(records),
        template,
        steps=max(checkpoints),
        lr=config.relearn_lr,
        batch_size=config.relearn_batch,
        seed=config.seed,
        watch=measure,
    )
    return rows


def restoration(score: float, modified: float, original: float) -> float | None:
    gap = original - modified
    return (score - modified) / gap if abs(gap) > 1e-9 else None


def erased_control(original, unit: torch.Tensor):
    """A copy of ``original`` with ``unit`` projected out of every residual writer."""

    control = clone_model(original)
    fold_affine(control, torch.eye(unit.numel()) - torch.outer(unit, unit).cpu())
    return control


def first_reaching(curve: list[dict], target: float, *, falling: bool = False) -> int | None:
    """The first step whose score reaches ``target`` (from below, or from above if ``falling``)."""
    return next(
        (r["step"] for r in curve if (r["score"] <= target if falling else r["score"] >= target)),
        None,
    )


def timed_control(name: str, model, records, target: float, falling: bool, run) -> dict:
    """The control's relearning: ``run(model, records)`` gives its curve, timed to ``target``."""
    curve = run(model, records)
    return {
        "model": name,
        "direction": "fall" if falling else "rise",
        "start": curve[0]["score"],
        "target": target,
        "relearn": curve,
        "steps_to_target": first_reaching(curve, target, falling=falling),
    }


def relearn_speed(mod_steps: int | None, ctl: dict[str, Any], config: BypassConfig) -> dict:
    """Is relearning the modified model ``relearn_speedup`` x faster than the control?"""
    budget = max(config.relearn_steps)
    falling = ctl.get("direction") == "fall"
    if ctl["start"] <= ctl["target"] if falling else ctl["start"] >= ctl["target"]:
        return {"fast": False, "speedup": None, "judged": False}
    if mod_steps is None:
        return {"fast": False, "speedup": None, "judged": True}
    ctl_steps = ctl["steps_to_target"]
    if ctl_steps is None:  # beyond the budget: at least budget + 1 steps
        speedup = (budget + 1) / max(mod_steps, 1)
    else:
        speedup = ctl_steps / max(mod_steps, 1)
    return {"fast": speedup >= config.relearn_speedup, "speedup": speedup, "judged": True}
