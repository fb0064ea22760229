"""Teacher-forced sequence statistics, shared by training losses, metrics and attacks."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from excise.data.encode import IGNORE, Example, collate
from excise.progress import progress


@dataclass
class SequenceStats:
    logprob: torch.Tensor  # (batch,) sum of target-token log-probabilities
    tokens: torch.Tensor  # (batch,) number of target tokens
    correct: torch.Tensor  # (batch,) bool: every target token is the argmax (greedy exact match)


def _target_mask(labels: torch.Tensor) -> torch.Tensor:
    """Positions whose next token is a target: (batch, seq) bool, last column always False."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != IGNORE
    return mask


def _stats_from_target_logits(
    picked: torch.Tensor, wanted: torch.Tensor, rows: torch.Tensor, labels: torch.Tensor
) -> SequenceStats:
    """Reduce the logits at target positions, (targets, vocab), to per-sequence statistics."""
    picked = picked.float()
    token_logprob = torch.log_softmax(picked, dim=-1).gather(-1, wanted.unsqueeze(-1)).squeeze(-1)
    token_correct = picked.argmax(-1) == wanted
    batch = labels.shape[0]
    logprob = picked.new_zeros(batch).index_add(0, rows, token_logprob)
    tokens = (labels != IGNORE).sum(-1)
    wrong = torch.zeros(batch, dtype=torch.long, device=labels.device).index_add(
        0, rows, (~token_correct).long()
    )
    return SequenceStats(logprob, tokens, (wrong == 0) & (tokens > 0))


def sequence_stats(logits: torch.Tensor, labels: torch.Tensor) -> SequenceStats:
    """Statistics of the target tokens of each sequence, from one forward pass.

    ``logits`` (batch, seq, vocab) at position t predict the token at t+1. Only target positions
    go through the softmax, which keeps memory at (targets, vocab) instead of (batch, seq, vocab).
    """
    mask = _target_mask(labels)
    rows = mask.nonzero(as_tuple=True)[0]  # sequence of each target token
    return _stats_from_target_logits(logits[mask], labels[:, 1:][mask[:, :-1]], rows, labels)


def plain_unembedding(model) -> bool:
    """True when logits are just lm_head(final hidden state), so heads can run on a subset."""
    from transformers import PreTrainedModel

    config = getattr(model, "config", None)
    special = ("final_logit_softcapping", "logit_scale", "output_multiplier_scale")
    # wrappers (a peft PeftModel, say) take the full path: their base_model is not a plain body
    return (
        config is not None
        and isinstance(model, PreTrainedModel)
        and isinstance(getattr(model, "base_model", None), PreTrainedModel)
        and hasattr(model, "get_output_embeddings")
        and model.get_output_embeddings() is not None
        and getattr(model, "base_model", None) is not None
        and model.base_model is not model
        and not any(getattr(config, name, None) for name in special)
        # FSDP gathers the embeddings and head in the root's forward, which this path skips
        and not getattr(model, "_is_fsdp_managed_module", False)
    )


def forward_stats(model, batch: dict[str, torch.Tensor]) -> SequenceStats:
    """One forward pass; the unembedding runs only at target positions when that is exact.

    On the bundled model the vocabulary projection is ~20% of the compute per token, and prompt
    positions are most of the tokens, so this saves time and (batch, seq, vocab) memory.
    """
    labels = batch["labels"]
    if not plain_unembedding(model):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return sequence_stats(logits, labels)
    hidden = model.base_model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).last_hidden_state  # (batch, seq, hidden)
    mask = _target_mask(labels)
    rows = mask.nonzero(as_tuple=True)[0]
    picked = model.get_output_embeddings()(hidden[mask])  # (targets, vocab)
    return _stats_from_target_logits(picked, labels[:, 1:][mask[:, :-1]], rows, labels)


def nll(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean negative log-likelihood per target token over the batch (the usual LM loss)."""
    stats = forward_stats(model, batch)
    return -stats.logprob.sum() / stats.tokens.sum().clamp(min=1)


def forget_and_retain_stats(
    ctx, batch, weight: float
) -> tuple[SequenceStats, SequenceStats | None]:
    """The forget batch's statistics and, where the loop cannot backward the forget part
    before the retain forward (``ctx.early_backward`` is None: optimizer in the backward, FSDP,
    ZeRO-3), the retain batch's from the same forward: both batches' rows right-padded to one
    width, one forward. Each weight then has one use, so an optimizer stepped in the backward
    frees each gradient as it is made; with two forwards autograd runs the whole retain
    backward first and every retain gradient waits for its forget one (the whole model's
    gradients held, as without the option). Else (forget, None): the retain forward comes after
    ``ctx.release`` (:func:`with_retain_nll`)."""
    forget, retain = batch["forget"], batch.get("retain")
    if weight <= 0 or retain is None or ctx.early_backward is not None:
        return forward_stats(ctx.model, forget), None
    width = max(forget["input_ids"].shape[1], retain["input_ids"].shape[1])
    pads = {"input_ids": ctx.pad_id, "attention_mask": 0, "labels": IGNORE}
    joint = {
        key: torch.cat(
            [torch.nn.functional.pad(b[key], (0, width - b[key].shape[1]), value=value)
             for b in (forget, retain)]
        )
        for key, value in pads.items()
    }  # fmt: skip
    stats = forward_stats(ctx.model, joint)
    rows = forget["input_ids"].shape[0]
    head = SequenceStats(stats.logprob[:rows], stats.tokens[:rows], stats.correct[:rows])
    tail = SequenceStats(stats.logprob[rows:], stats.tokens[rows:], stats.correct[rows:])
    return head, tail


def with_retain_nll(
    ctx,
    batch,
    loss: torch.Tensor,
    terms: dict[str, float],
    weight: float,
    retain_stats: SequenceStats | None = None,
):
    """``loss + weight * NLL(retain batch)``, the retain term most removal methods share
    (``loss`` is backwarded before the retain forward where the training loop allows it;
    ``retain_stats``: the retain batch's, from :func:`forget_and_retain_stats`' joint forward)."""
    if weight > 0:
        loss = ctx.release(loss)
        if retain_stats is None:
            retain_nll = nll(ctx.model, batch["retain"])
        else:
            retain_nll = -retain_stats.logprob.sum() / retain_stats.tokens.sum().clamp(min=1)
        loss = loss + weight * retain_nll
        terms["retain_nll"] = float(retain_nll.detach())
    return loss, terms


TOKEN_BUDGET = 4096  # positions (rows x width) per forward pass of the scorers


def length_batches(
    lengths: list[int], *, batch_size: int | None = None, token_budget: int = TOKEN_BUDGET
) -> list[list[int]]:
    """Indices sorted by length, cut into batches of at most ``token_budget`` positions (rows x
    the batch's longest) and ``batch_size`` rows: short items go many to a batch, little padding."""
    batches: list[list[int]] = []
    for index in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        last = batches[-1] if batches else None
        if (
            last is not None
            and (len(last) + 1) * lengths[index] <= token_budget
            and (batch_size is None or len(last) < batch_size)
        ):
            last.append(index)
        else:
            batches.append([index])
    return batches


@torch.no_grad()
def stats_for_examples(
    model,
    examples: list[Example],
    pad_id: int,
    *,
    batch_size: int | None = None,
    token_budget: int = TOKEN_BUDGET,
) -> SequenceStats:
    """Sequence statistics for every example, in the order given.

    Examples are sorted by length and batched by ``token_budget`` (and at most ``batch_size``
    rows), so each batch pads little; the model is put in eval mode for the call and restored
    afterwards.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    lengths = [len(e.input_ids) for e in examples]
    logprob = torch.zeros(len(examples))
    tokens = torch.zeros(len(examples), dtype=torch.long)
    correct = torch.zeros(len(examples), dtype=torch.bool)
    with progress(total=len(examples), desc="score", unit="items") as bar:
        for rows in length_batches(lengths, batch_size=batch_size, token_budget=token_budget):
            batch = {
                k: v.to(device) for k, v in collate([examples[i] for i in rows], pad_id).items()
            }
            stats = forward_stats(model, batch)
            index = torch.tensor(rows)
            logprob[index] = stats.logprob.float().cpu()
            tokens[index] = stats.tokens.cpu()
            correct[index] = stats.correct.cpu()
            bar.update(len(rows))
    model.train(was_training)
    return SequenceStats(logprob, tokens, correct)


def score_pairs(
    model,
    tokenizer,
    pairs: list[tuple[str, str]],
    template: str,
    *,
    batch_size: int | None = None,
    token_budget: int = TOKEN_BUDGET,
) -> SequenceStats:
    """Teacher-forced statistics of each (prompt, completion) pair, in the order given."""
    from excise.data.encode import encode_pair

    examples = [encode_pair(tokenizer, p, c, template, i) for i, (p, c) in enumerate(pairs)]
    return stats_for_examples(
        model, examples, tokenizer.pad_token_id, batch_size=batch_size, token_budget=token_budget
    )
