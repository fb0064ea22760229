"""One relearning configuration: fine-tune a copy, score half B at the checkpoints, stop early.

:func:`run_configuration` clones the model (and injects LoRA adapters for a ``*_lora`` variant),
fine-tunes it through the one training loop (:func:`excise.train.fine_tune`) and scores half B of
``forget_eval`` at every checkpoint of the budget. :class:`Stops` says when a run ends before the
last checkpoint: it has recovered ``target`` (the original's accuracy), or its best point has not
risen for ``patience`` steps; a non-finite loss ends it as ``"diverged"`` (a failed configuration,
not an error). The budget is :class:`excise.attacks.relearn.RelearnBudget`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from excise.arch import layout
from excise.attacks.base import accuracy, halves
from excise.data.encode import encode_records
from excise.data.records import Record
from excise.data.tasks import Task
from excise.metrics.benchmarks import behaviour_scores
from excise.models import clone_model


@dataclass(frozen=True)
class Stops:
    target: float | None = None  # stop once forget accuracy reaches it; None: never
    patience: int = 0  # steps without a new best before stopping; 0: never
    # stop from step 10 when the best point is below ``behind`` x ``leader(step)`` (the best
    # any earlier configuration reached by that step); 0: never
    behind: float = 0.0
    leader: Callable[[int], float] | None = None
    floor: float = 0.0  # neither plateau nor behind stops a run that has not reached this yet


class _Stop(Exception):
    """Raised from the step callback to end a configuration early (the copy is thrown away)."""


class Watch:
    """The rows of one configuration and its end: each checkpoint's scores go in through
    :meth:`record`, which says whether the configuration stops there (:class:`Stops`). The
    one-at-a-time path and the side-by-side one (:mod:`excise.attacks.relearn_side`) share it."""

    def __init__(self, name: str, variant: str, lr: float, stops: Stops, last: int) -> None:
        self.name, self.stops, self.last = name, stops, last
        self.source, self.mode = variant.rsplit("_", 1)
        self.lr = lr
        self.rows: list[dict[str, Any]] = []
        self.end: dict[str, Any] = {
            "variant": variant,
            "lr": lr,
            "stopped": "finished",
            "best_step": 0,
        }

    def record(self, step: int, scores: dict[str, float]) -> bool:
        """Add the scores at ``step``; True when the configuration stops there."""
        self.add(step, scores)
        return self.decide(step)

    def add(self, step: int, scores: dict[str, float]) -> None:
        row = {"variant": self.name, "source": self.source, "mode": self.mode, "lr": self.lr}
        self.rows.append(row | {"step": step, **scores})

    def decide(self, step: int) -> bool:
        """Whether the configuration stops at ``step``, its last row (:class:`Stops`)."""
        row = self.rows[-1]
        best = max(self.rows, key=lambda r: r["forget_accuracy"])
        end, stops = self.end, self.stops
        end.update(best_forget_accuracy=best["forget_accuracy"], best_step=best["step"])
        end["last_step"] = step
        if stops.target is not None and row["forget_accuracy"] >= stops.target:
            end["stopped"] = "recovered"
            return step < self.last
        if step == self.last or end["stopped"] == "recovered":
            return False
        if best["forget_accuracy"] < stops.floor:
            return False
        if stops.patience and step - best["step"] >= stops.patience:
            end["stopped"] = "plateau"
            return True
        lead = stops.leader(step) if stops.leader is not None and step >= 10 else 0.0
        if stops.behind and lead > 0 and best["forget_accuracy"] < stops.behind * lead:
            end["stopped"] = "behind"
            return True
        return False


def lora_targets(model) -> list[str]:
    """The module names LoRA adapts in a relearning copy: the MLP input and output and the
    attention output projections."""
    parts = layout(model)
    return sorted({p.split(".")[-1] for p in (parts.mlp_in, parts.mlp_out, parts.attn_out)})


def with_lora(model, rank: int, alpha: float):
    import peft

    config = peft.LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=lora_targets(model)
    )
    # injected in place, no PeftModel wrapper: the copy stays a plain causal LM for the scorers
    model = peft.inject_adapter_in_model(config, model)
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name)
    return model


def fine_tune_watching(
    copy,
    tokenizer,
    records: list[Record],
    template: str,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    watch: Callable[[int], None],
    max_length: int = 256,
) -> None:
    """Fine-tune ``copy`` in place on ``records`` (plain NLL through the one training loop, as an
    attacker would); ``watch(step)`` runs before the first step (0) and after every step."""
    from excise.train import TrainConfig, fine_tune

    watch(0)
    if steps < 1:
        return
    settings = TrainConfig(steps=steps, lr=lr, batch_size=batch_size, seed=seed, progress=False)
    fine_tune(
        copy,
        tokenizer,
        encode_records(tokenizer, records, template, max_length=max_length),
        records,
        template,
        settings,
        on_step=lambda step, _log: watch(step),
    )


def run_configuration(
    model,
    tokenizer,
    task: Task,
    records: list[Record],
    variant: str,
    budget,
    *,
    lr: float | None = None,
    name: str | None = None,
    stops: Stops = Stops(),
    start: dict[str, float] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Fine-tune a copy of ``model`` on ``records``; (rows of forget accuracy on half B at each
    checkpoint, the configuration's end: best point, last step, why it stopped, retain accuracy).

    ``start``: the scores of ``model`` itself at step 0, where the caller has them (the same for
    every configuration of a grid: a fresh LoRA adapter changes no output)."""
    from excise.train import TrainingDiverged

    cap = budget.eval_items or None
    held_out = halves(task.forget_eval)[1][:cap]
    kept = list(task.retain_eval)[:cap]
    lora = variant.endswith("_lora")
    if lr is None:
        lr = budget.lr_lora if lora else budget.lr_full
    copy = clone_model(model)
    copy = with_lora(copy, budget.lora_rank, budget.lora_alpha) if lora else copy
    checkpoints, last = set(budget.steps), max(budget.steps)
    source = variant.rsplit("_", 1)[0]
    watch = Watch(name or variant, variant, lr, stops, last)
    end = watch.end

    def measure(step: int) -> None:
        if step not in checkpoints:
            return
        if step == 0 and start is not None:
            scores = dict(start)
        else:
            scores = {"forget_accuracy": accuracy(copy, tokenizer, held_out, task.template)}
            # the task's own measure of the behaviour (toxicity: toxic_preference)
            scores.update(behaviour_scores(copy, tokenizer, task, held_out))
        if watch.record(step, scores):
            raise _Stop

    try:
        fine_tune_watching(
            copy,
            tokenizer,
            records,
            task.template,
            steps=last,
            lr=lr,
            batch_size=budget.batch_size,
            seed=budget.seed,
            watch=measure,
            max_length=budget.text_tokens if source == "text" else 256,
        )
    except _Stop:
        pass
    except TrainingDiverged as error:
        end.update(stopped="diverged", diverged_at=error.step)
    # a forward over retain_eval costs a training step: not where it cannot be the grid's winner
    if end["stopped"] not in ("diverged", "behind"):
        copy.eval()
        end["retain_accuracy"] = accuracy(copy, tokenizer, kept, task.template)
    return watch.rows, end


def relearn_curve(
    model, tokenizer, task: Task, records: list[Record], variant: str, budget, **options
) -> list[dict[str, Any]]:
    """The rows of :func:`run_configuration` (reference models' curves, bench/)."""
    return run_configuration(model, tokenizer, task, records, variant, budget, **options)[0]
