"""Orthogonalization attack: ablate the direction that separates forget inputs from the rest.

Łucki et al. 2024 ("An adversarial perspective on machine unlearning for AI safety") found that
RMU-style unlearning writes a direction into the residual stream on forget inputs; projecting it
out (directional ablation, Arditi et al. 2024) restores most of the knowledge. At each candidate
layer l the direction is the difference of mean activations, forget prompts minus retain prompts
(mean over each prompt's tokens but the first), in the model under attack:
    r_l = (mu_forget - mu_retain) / ||mu_forget - mu_retain||
and x -> x - (x·r_l) r_l is applied to the residual stream everywhere (input of the first block,
output of every block) by forward hooks, removed afterwards. The best layer's direction (highest
forget accuracy) is the attack's result; retain accuracy is reported beside it.
Budget defaults: ``candidates`` 4 layers evenly spaced over the depth (or explicit ``layers``).
"""

from __future__ import annotations

from dataclasses import dataclass

from excise.activations.prompts import direction_ablated, prompt_states
from excise.arch import num_layers
from excise.attacks import AttackSpec, register
from excise.attacks.base import AttackResult, accuracy, budget_dict, retain_items
from excise.data.tasks import Task
from excise.errors import ConfigError, ExciseError


@dataclass
class OrthogonalizeBudget:
    layers: tuple[int, ...] | None = None  # None: ``candidates`` layers spread over the depth
    candidates: int = 4

    def __post_init__(self) -> None:
        if self.candidates < 1:
            raise ConfigError("orthogonalize candidates must be >= 1")


def candidate_layers(depth: int, count: int) -> list[int]:
    """``count`` layers spread evenly from a quarter of the depth to the last block."""
    if count == 1:
        return [depth // 2]
    first = depth // 4
    return sorted({round(first + (depth - 1 - first) * i / (count - 1)) for i in range(count)})


def run(
    model, tokenizer, task: Task, *, budget: OrthogonalizeBudget, original=None, gold=None
) -> AttackResult:
    retain = retain_items(task)
    if not task.forget_eval or not retain:
        raise ExciseError("orthogonalization needs forget_eval and retain items")
    depth = num_layers(model)
    layers = (
        list(budget.layers)
        if budget.layers is not None
        else candidate_layers(depth, budget.candidates)
    )
    if any(not 0 <= layer < depth for layer in layers):
        raise ConfigError(f"orthogonalize layers must be within 0..{depth - 1}")
    forget_states = prompt_states(
        model, tokenizer, [q.prompt for q in task.forget_eval], task.template, reduce="mean"
    )
    retain_states = prompt_states(
        model, tokenizer, [q.prompt for q in retain], task.template, reduce="mean"
    )
    rows = []
    for layer in layers:
        difference = forget_states[layer].mean(0) - retain_states[layer].mean(0)
        with direction_ablated(model, difference):
            rows.append(
                {
                    "layer": layer,
                    "difference_norm": float(difference.norm()),
                    "forget_accuracy": accuracy(model, tokenizer, task.forget_eval, task.template),
                    "retain_accuracy": accuracy(model, tokenizer, task.retain_eval, task.template),
                }
            )
    best = max(rows, key=lambda r: r["forget_accuracy"])
    metrics = {
        "forget_accuracy": best["forget_accuracy"],
        "retain_accuracy": best["retain_accuracy"],
        "best_layer": float(best["layer"]),
    }
    return AttackResult("orthogonalize", budget_dict(budget), metrics, None, {"layers": rows})


SPEC = register(
    AttackSpec(
        "orthogonalize",
        "project the forget-minus-retain mean activation direction out of the residual stream",
        OrthogonalizeBudget,
        run,
    )
)
