"""Evaluation during training (``--eval-every N``) and the best checkpoint kept.

:class:`TrainingWatch` is the training loop's ``on_step`` callback: every ``every`` steps (and at
the last) it runs the quick evaluation (:data:`excise.metrics.QUICK`) and records the curve
(step, forget, paraphrase, retain and MC accuracy). The best step is the one with the lowest
forget accuracy among those whose retain accuracy stays at least ``keep`` (0.95) times the
original's on the same quick sample; ties go to the higher retain accuracy, then the earlier step.
Its trained weights are copied then (only the parameters that train), and :meth:`restore` puts
them back after training. When no step keeps the retain accuracy, the last weights stay.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from excise.data.tasks import Task
from excise.metrics import evaluate, quick_task

CURVE_KEYS = ("forget_accuracy", "paraphrase_accuracy", "retain_accuracy", "mc_accuracy")
RULE = (
    "lowest forget accuracy among the steps whose retain accuracy is at least {keep} x the "
    "original's (quick sample); ties: higher retain accuracy, then the earlier step"
)


class TrainingWatch:
    """``on_step(step, totals)`` for the training loop; ``then`` is called first (a tracker)."""

    def __init__(
        self,
        model,
        tokenizer,
        task: Task,
        *,
        every: int,
        steps: int,
        original_retain: float | None,
        keep: float = 0.95,
        then: Callable[[int, dict[str, float]], None] | None = None,
    ) -> None:
        self.model, self.tokenizer, self.task = model, tokenizer, quick_task(task)
        self.every, self.steps, self.keep, self.then = every, steps, keep, then
        self.floor = None if original_retain is None else keep * original_retain
        self.curve: list[dict[str, float]] = []
        self.best: dict[str, float] | None = None
        self._weights: dict[str, torch.Tensor] | None = None

    def __call__(self, step: int, totals: dict[str, float]) -> None:
        if self.then is not None:
            self.then(step, totals)
        if step % self.every and step != self.steps:
            return
        metrics = evaluate(self.model, self.tokenizer, self.task, generate=0).metrics
        row = {"step": step, **{k: metrics[k] for k in CURVE_KEYS if k in metrics}}
        self.curve.append(row)
        if self._better(row):
            self.best = row
            self._weights = {
                name: param.detach().clone()
                for name, param in self.model.named_parameters()
                if param.requires_grad
            }

    def _better(self, row: dict[str, float]) -> bool:
        retain = row.get("retain_accuracy", 0.0)
        if self.floor is not None and retain < self.floor:
            return False
        if self.best is None:
            return True
        mine = (row.get("forget_accuracy", 1.0), -retain)
        theirs = (self.best.get("forget_accuracy", 1.0), -self.best.get("retain_accuracy", 0.0))
        return mine < theirs

    def restore(self) -> dict[str, Any]:
        """Put the best step's weights back; the report's ``eval_curve`` section."""
        section: dict[str, Any] = {
            "every": self.every,
            "rule": RULE.format(keep=self.keep),
            "curve": self.curve,
            "best_step": None if self.best is None else self.best["step"],
            "restored": False,
        }
        if self.best is None or self._weights is None or self.best["step"] == self.steps:
            return section
        params = dict(self.model.named_parameters())
        if not set(self._weights) <= set(params):
            section["note"] = "the method changed the model's layers after training; last kept"
            return section
        with torch.no_grad():
            for name, value in self._weights.items():
                params[name].copy_(value)
        section["restored"] = True
        return section
