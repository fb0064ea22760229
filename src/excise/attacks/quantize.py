"""Quantization attack: round-to-nearest weight quantization, measured de-quantized.

Zhang et al. 2024 ("Catastrophic failure of LLM unlearning via quantization"): 4-bit quantization
of unlearned models restored ~83% of the forgotten knowledge, because unlearning moves weights by
less than one quantization step. Every Linear weight (the unembedding too, hence tied embeddings)
is quantized symmetric absmax per group of ``group_size`` consecutive input weights:
    scale = max|w_g| / (2^(bits-1) - 1);   w_hat = clamp(round(w / scale), -qmax, qmax) * scale
Defaults: 8-bit in groups of 128 and 4-bit in groups of 32. On a 135M model 4-bit RTN in groups of
64 wrecks the model itself (retain 65% -> 12%), so every setting reports retain and
multiple-choice accuracy beside forget accuracy: recovery without utility proves nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from excise.attacks import AttackSpec, register
from excise.attacks.base import AttackResult, budget_dict, utility_metrics
from excise.data.tasks import Task
from excise.errors import ConfigError
from excise.models import clone_model


@dataclass
class QuantizeBudget:
    bits: tuple[int, ...] = (8, 4)
    group_sizes: tuple[int, ...] = (128, 32)  # one per entry of ``bits``

    def __post_init__(self) -> None:
        if not self.bits or len(self.bits) != len(self.group_sizes):
            raise ConfigError("quantize needs one group size per bit width")
        if any(not 2 <= b <= 8 for b in self.bits) or any(g < 1 for g in self.group_sizes):
            raise ConfigError("quantize bits must be in 2..8 and group sizes >= 1")


def quantize_weight(weight: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """De-quantized RTN copy of a 2-D weight, grouped along its last dimension."""
    qmax = 2 ** (bits - 1) - 1
    rows, cols = weight.shape
    padded = nn.functional.pad(weight.float(), (0, (-cols) % group_size))
    groups = padded.reshape(rows, -1, group_size)  # (rows, groups, group_size)
    scale = groups.abs().amax(-1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny) / qmax
    quantized = torch.round(groups / scale).clamp(-qmax, qmax) * scale
    return quantized.reshape(rows, -1)[:, :cols].to(weight.dtype)


def _input_last(module: nn.Module) -> bool | None:
    """True for nn.Linear (out, in); False for GPT-2's Conv1D (in, out); None for other modules."""
    if isinstance(module, nn.Linear):
        return True
    if type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None:
        return False
    return None


@torch.no_grad()
def quantize_model(model: nn.Module, bits: int, group_size: int) -> int:
    """Quantize every Linear weight of ``model`` in place; returns how many tensors changed."""
    seen: set[int] = set()
    for module in model.modules():
        layout = _input_last(module)
        if layout is None or id(module.weight) in seen:
            continue
        seen.add(id(module.weight))  # tied weights once
        weight = module.weight if layout else module.weight.T
        weight.copy_(quantize_weight(weight, bits, group_size))
    return len(seen)


def run(
    model, tokenizer, task: Task, *, budget: QuantizeBudget, original=None, gold=None
) -> AttackResult:
    rows: list[dict[str, Any]] = []
    for bits, group_size in zip(budget.bits, budget.group_sizes, strict=True):
        copy = clone_model(model)
        tensors = quantize_model(copy, bits, group_size)
        rows.append(
            {"setting": f"int{bits}_g{group_size}", "bits": bits, "group_size": group_size}
            | utility_metrics(copy, tokenizer, task)
            | {"tensors": tensors}
        )
        del copy
    worst = max(rows, key=lambda r: r["forget_accuracy"])
    metrics = {
        k: worst[k] for k in ("forget_accuracy", "retain_accuracy", "mc_accuracy") if k in worst
    }
    for row in rows:
        for key in ("forget_accuracy", "retain_accuracy", "mc_accuracy"):
            if key in row:
                metrics[f"{row['setting']}_{key}"] = row[key]
    details = {"settings": rows, "worst_setting": worst["setting"]}
    return AttackResult("quantize", budget_dict(budget), metrics, None, details)


SPEC = register(
    AttackSpec(
        "quantize",
        "round-to-nearest group-wise 8-bit and 4-bit weights; utility reported beside recovery",
        QuantizeBudget,
        run,
    )
)
