"""Linear probe attack: can a linear read-out of the hidden states still decode what was forgotten?

Following the probing evaluations of unlearning (Lynch et al. 2024, "Eight methods to evaluate
robust unlearning in LLMs"; Li et al. 2024, WMDP) a multinomial logistic regression is fitted per
layer on the residual stream at the last prompt token (where the answer is predicted):
- ``answer`` mode: the label is the forget item's answer string, over answers shared by
  ``min_class_items`` (2) or more items, when at least 2 such classes exist;
- ``concept`` mode otherwise (every answer unique, e.g. element symbols): forget vs retain prompts.
  This only says the topic is linearly visible, not that the answers are; it is reported apart.
Each class's items are split at random (seeded) into equal train and test halves. The probe is fitted in torch (LBFGS,
``steps`` 100, L2 ``l2`` 1e-2 on standardized features); the report gives held-out accuracy per
layer, the best layer, the chance rate (majority class of the training split) and a one-sided
binomial p-value of the best layer against chance, Bonferroni-corrected over layers (the best of
many layers on a small test split beats chance by luck). No ``forget_accuracy`` is set: a probe's
accuracy is not an answer rate.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from scipy.stats import binomtest

from excise.activations.probe import fit_logistic, split
from excise.activations.prompts import prompt_states
from excise.attacks import AttackSpec, register
from excise.attacks.base import AttackResult, budget_dict, retain_items
from excise.data.tasks import Task
from excise.errors import ConfigError, ExciseError


@dataclass
class ProbeBudget:
    layers: tuple[int, ...] | None = None  # None: every layer
    min_class_items: int = 2
    l2: float = 1e-2
    steps: int = 100

    def __post_init__(self) -> None:
        if self.min_class_items < 2 or self.l2 < 0 or self.steps < 1:
            raise ConfigError("probe min_class_items must be >= 2, l2 >= 0, steps >= 1")


def probe_dataset(task: Task, min_class_items: int) -> tuple[str, list[str], list[int]]:
    """(mode, prompts, labels) following the rule in the module docstring."""
    by_answer: dict[str, list[str]] = defaultdict(list)
    for item in task.forget_eval:
        by_answer[item.completion.strip()].append(item.prompt)
    shared = {a: p for a, p in by_answer.items() if len(p) >= min_class_items}
    if len(shared) >= 2:
        prompts = [p for group in shared.values() for p in group]
        labels = [c for c, group in enumerate(shared.values()) for _ in group]
        return "answer", prompts, labels
    forget = [q.prompt for q in task.forget_eval]
    retain = [q.prompt for q in retain_items(task)]
    count = min(len(forget), len(retain))
    if count < 2:
        raise ExciseError("the probe needs shared answers or >= 2 forget and retain items")
    return "concept", forget[:count] + retain[:count], [0] * count + [1] * count


@torch.no_grad()
def run(
    model, tokenizer, task: Task, *, budget: ProbeBudget, original=None, gold=None
) -> AttackResult:
    mode, prompts, labels = probe_dataset(task, budget.min_class_items)
    states = prompt_states(model, tokenizer, prompts, task.template)  # (layers, items, hidden)
    layers = list(budget.layers) if budget.layers is not None else list(range(states.shape[0]))
    if any(not 0 <= layer < states.shape[0] for layer in layers):
        raise ConfigError(f"probe layers must be within 0..{states.shape[0] - 1}")
    train, test = split(labels)
    target = torch.tensor(labels)
    classes = max(labels) + 1
    majority = int(torch.bincount(target[train], minlength=classes).argmax())
    chance = float((target[test] == majority).float().mean())
    per_layer = []
    for layer in layers:
        x = states[layer]
        mean, std = x[train].mean(0), x[train].std(0).clamp(min=1e-6)
        x = (x - mean) / std
        with torch.enable_grad():
            weight, bias = fit_logistic(
                x[train], target[train], classes, l2=budget.l2, steps=budget.steps
            )
        predicted = (x[test] @ weight + bias).argmax(-1)
        per_layer.append(float((predicted == target[test]).float().mean()))
    best = max(range(len(layers)), key=lambda i: per_layer[i])
    right = round(per_layer[best] * len(test))
    p_value = binomtest(right, len(test), min(max(chance, 1e-9), 1.0), alternative="greater").pvalue
    metrics = {
        "probe_accuracy": per_layer[best],
        "chance": chance,
        "best_layer": float(layers[best]),
        "p_value": min(1.0, float(p_value) * len(layers)),  # Bonferroni over the layers tried
    }
    details = {
        "mode": mode,
        "layers": layers,
        "layer_accuracy": per_layer,
        "classes": classes,
        "train_items": len(train),
        "test_items": len(test),
    }
    return AttackResult("probe", budget_dict(budget), metrics, None, details)


SPEC = register(
    AttackSpec(
        "probe",
        "per-layer logistic-regression probes decoding forgotten answers from hidden states",
        ProbeBudget,
        run,
    )
)
