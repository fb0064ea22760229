"""Pruning attack: zero the MLP neurons that fire on forget inputs more than on retain inputs.

Łucki et al. 2024 ("An adversarial perspective on machine unlearning for AI safety") and Wei et al.
2024 ("Assessing the brittleness of safety alignment via pruning and low-rank modifications"):
unlearning can hinge on a few neurons that react to forget inputs; removing them undoes it.
Each MLP hidden unit (an input column of the MLP output projection) is scored by its mean absolute
activation over the tokens of forget items (prompt and answer) divided by the same on retain
items; in every layer the top ``fraction`` (default 1%, at least one unit) have their columns of
the output projection zeroed, on a copy of the model. Forget and retain accuracy are measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from excise.arch import block_part, num_layers
from excise.attacks import AttackSpec, register
from excise.attacks.base import AttackResult, accuracy, budget_dict, retain_items
from excise.data.encode import collate, encode_pair
from excise.data.records import QA
from excise.data.tasks import Task
from excise.errors import ConfigError, ExciseError
from excise.models import clone_model
from excise.progress import progress


@dataclass
class PruneBudget:
    fraction: float = 0.01  # of each layer's MLP hidden units
    batch_size: int = 32

    def __post_init__(self) -> None:
        if not 0 < self.fraction < 1 or self.batch_size < 1:
            raise ConfigError("prune fraction must be in (0, 1) and batch_size >= 1")


def _in_columns_last(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Linear)  # GPT-2's Conv1D stores (in, out)


@torch.no_grad()
def mean_activation(
    model, tokenizer, items: list[QA], template: str, batch_size: int
) -> torch.Tensor:
    """Mean |input of the MLP output projection| per layer and unit over real tokens: (layers, units)."""
    device = next(model.parameters()).device
    sums: dict[int, torch.Tensor] = {}
    current: dict[str, torch.Tensor] = {}

    def hook(layer: int):
        def keep(_module, inputs):
            mask = current["mask"].unsqueeze(-1).to(inputs[0].dtype)
            total = (inputs[0].abs() * mask).sum((0, 1)).float()
            sums[layer] = sums.get(layer, 0) + total

        return keep

    handles = [
        block_part(model, i, "mlp_out").register_forward_pre_hook(hook(i))
        for i in range(num_layers(model))
    ]
    was_training = model.training
    model.eval()
    tokens = 0
    try:
        examples = [
            encode_pair(tokenizer, q.prompt, q.completion, template, i) for i, q in enumerate(items)
        ]
        starts = range(0, len(examples), batch_size)
        for start in progress(starts, desc="unit importance", unit="batches"):
            batch = collate(examples[start : start + batch_size], tokenizer.pad_token_id)
            current["mask"] = batch["attention_mask"].to(device)
            tokens += int(batch["attention_mask"].sum())
            model(
                input_ids=batch["input_ids"].to(device),
                attention_mask=current["mask"],
                use_cache=False,
            )
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return torch.stack([sums[i] for i in range(num_layers(model))]).cpu() / max(tokens, 1)


def run(
    model, tokenizer, task: Task, *, budget: PruneBudget, original=None, gold=None
) -> AttackResult:
    retain = retain_items(task)
    if not task.forget_eval or not retain:
        raise ExciseError("pruning needs forget_eval and retain items")
    forget_act = mean_activation(
        model, tokenizer, task.forget_eval, task.template, budget.batch_size
    )
    retain_act = mean_activation(model, tokenizer, retain, task.template, budget.batch_size)
    scores = forget_act / (retain_act + 1e-6)  # (layers, units)
    count = max(1, round(budget.fraction * scores.shape[1]))
    pruned = scores.topk(count, dim=1).indices  # (layers, count)
    copy = clone_model(model)
    with torch.no_grad():
        for layer, units in enumerate(pruned.tolist()):
            projection = block_part(copy, layer, "mlp_out")
            if _in_columns_last(projection):
                projection.weight[:, units] = 0
            else:
                projection.weight[units, :] = 0
    metrics = {
        "forget_accuracy": accuracy(copy, tokenizer, task.forget_eval, task.template),
        "retain_accuracy": accuracy(copy, tokenizer, task.retain_eval, task.template),
    }
    del copy
    details = {
        "units_per_layer": count,
        "units": pruned.tolist(),
        "score_of_pruned": scores.gather(1, pruned).mean(1).tolist(),
    }
    return AttackResult("prune", budget_dict(budget), metrics, None, details)


SPEC = register(
    AttackSpec(
        "prune",
        "zero the 1% of MLP units per layer most active on forget relative to retain inputs",
        PruneBudget,
        run,
    )
)
