"""Membership inference: can the forget items still be told apart from items never trained on?

Scores, each oriented so that higher means "member", computed on the answer tokens (teacher
forced, as every metric in excise):
- ``loss``: mean answer log-likelihood (Yeom et al. 2018);
- ``zlib``: log-likelihood / zlib-compressed length of prompt + answer (Carlini et al. 2021);
- ``mink``: mean of the lowest ``k`` (20%, at least one token) token log-probs (Shi et al. 2024);
- ``minkpp``: the same on (log p(x_t) - mu_t) / sigma_t, mu_t and sigma_t the mean and std of
  log p under the model's own next-token distribution (Min-K%++, Zhang et al. 2024).
AUC (:func:`auc`, rank-based, ties counted half) of members against non-members; 0.5 = no signal.

Non-members are the hard part. ``retain_eval`` is no holdout (those items were trained on and
kept), and neither are perturbed answers (false statements: the AUC would measure truthfulness).
So: (1) ``holdout`` items passed in, or ``task.metadata["holdout"]`` (QA records or
{prompt, completion} dicts), give a true MIA; (2) else, given a ``gold`` model (never trained on
the forget set, as for ``fictitious``), the same forget items scored by the gold model are the
non-members: AUC 0.5 means the model looks like one that never saw them, below 0.5 means it
over-forgot (Streisand effect); (3) else (e.g. ``chem-symbols``, learned in pretraining, with no
true holdout) the attack is skipped with a note.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from excise.attacks import AttackSpec, register
from excise.attacks.base import AttackResult, budget_dict
from excise.data.encode import IGNORE, collate, encode_pair
from excise.data.records import QA
from excise.data.tasks import Task
from excise.errors import ConfigError, DataError
from excise.metrics.quality import auc
from excise.progress import progress

SCORES = ("loss", "zlib", "mink", "minkpp")


@dataclass
class MIABudget:
    k: float = 0.2
    batch_size: int = 32

    def __post_init__(self) -> None:
        if not 0 < self.k <= 1 or self.batch_size < 1:
            raise ConfigError("mia k must be in (0, 1] and batch_size >= 1")


@torch.no_grad()
def membership_scores(
    model, tokenizer, items: Sequence[QA], template: str, *, k: float = 0.2, batch_size: int = 32
) -> dict[str, list[float]]:
    """Every score of :data:`SCORES` for each item, in order."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: dict[str, list[float]] = {name: [] for name in SCORES}
    examples = [
        encode_pair(tokenizer, q.prompt, q.completion, template, i) for i, q in enumerate(items)
    ]
    starts = range(0, len(examples), batch_size)
    for start in progress(starts, desc="membership scores", unit="batches"):
        batch = collate(examples[start : start + batch_size], tokenizer.pad_token_id)
        logits = model(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
        ).logits[:, :-1]
        targets = batch["labels"][:, 1:].to(device)
        for row in range(len(targets)):
            wanted = targets[row] != IGNORE
            logprobs = torch.log_softmax(logits[row][wanted].float(), -1)  # (answer tokens, vocab)
            token = logprobs.gather(-1, targets[row][wanted].unsqueeze(-1)).squeeze(-1)
            mu = (logprobs.exp() * logprobs).sum(-1)
            sigma = ((logprobs.exp() * logprobs.pow(2)).sum(-1) - mu.pow(2)).clamp(min=1e-12).sqrt()
            lowest = max(1, math.ceil(k * len(token)))
            item = items[start + row]
            out["loss"].append(float(token.mean()))
            text = (item.prompt + item.completion).encode()
            out["zlib"].append(float(token.mean()) / len(zlib.compress(text)))
            out["mink"].append(float(token.sort().values[:lowest].mean()))
            out["minkpp"].append(float(((token - mu) / sigma).sort().values[:lowest].mean()))
    model.train(was_training)
    return out


def holdout_items(task: Task, holdout: Sequence[QA] | None) -> list[QA]:
    raw = holdout if holdout is not None else task.metadata.get("holdout") or []
    items = []
    for entry in raw:
        if isinstance(entry, QA):
            items.append(entry)
        elif isinstance(entry, dict) and {"prompt", "completion"} <= set(entry):
            items.append(QA(entry["prompt"], entry["completion"]))
        else:
            raise DataError("mia holdout items need a prompt and a completion")
    return items


def run(
    model,
    tokenizer,
    task: Task,
    *,
    budget: MIABudget,
    original=None,
    gold=None,
    holdout: Sequence[QA] | None = None,
) -> AttackResult:
    nonmember_items = holdout_items(task, holdout)
    if nonmember_items:
        mode, reference = "holdout", model
    elif gold is not None:
        mode, reference, nonmember_items = "gold_reference", gold, list(task.forget_eval)
    else:
        note = "no holdout items (task.metadata['holdout']) and no gold model: no true non-members"
        return AttackResult("mia", budget_dict(budget), {}, None, {"skipped": note})
    options = {"k": budget.k, "batch_size": budget.batch_size}
    members = membership_scores(model, tokenizer, task.forget_eval, task.template, **options)
    nonmembers = membership_scores(reference, tokenizer, nonmember_items, task.template, **options)
    metrics = {f"auc_{name}": auc(members[name], nonmembers[name]) for name in SCORES}
    metrics["auc_max"], metrics["auc_min"] = max(metrics.values()), min(metrics.values())
    details = {"mode": mode, "members": len(task.forget_eval), "nonmembers": len(nonmember_items)}
    return AttackResult("mia", budget_dict(budget), metrics, None, details)


SPEC = register(
    AttackSpec(
        "mia",
        "membership inference (loss, zlib, min-k%, min-k%++ AUCs) against a holdout or gold model",
        MIABudget,
        run,
    )
)
