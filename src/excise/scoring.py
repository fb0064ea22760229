"""Teacher-forced sequence statistics, shared by training losses, metrics and attacks."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from excise.data.encode import IGNORE, Example, collate


@dataclass
class SequenceStats:
    logprob: torch.Tensor  # (batch,) sum of target-token log-probabilities
    tokens: torch.Tensor  # (batch,) number of target tokens
    correct: torch.Tensor  # (batch,) bool: every target token is the argmax (greedy exact match)


def sequence_stats(logits: torch.Tensor, labels: torch.Tensor) -> SequenceStats:
    """Statistics of the target tokens of each sequence, from one forward pass.

    ``logits`` (batch, seq, vocab) at position t predict the token at t+1. Only target positions
    go through the softmax, which keeps memory at (targets, vocab) instead of (batch, seq, vocab).
    """
    targets = labels[:, 1:]  # (batch, seq-1)
    mask = targets != IGNORE
    rows = mask.nonzero(as_tuple=True)[0]  # sequence of each target token
    picked = logits[:, :-1][mask].float()  # (targets, vocab)
    wanted = targets[mask]
    token_logprob = torch.log_softmax(picked, dim=-1).gather(-1, wanted.unsqueeze(-1)).squeeze(-1)
    token_correct = picked.argmax(-1) == wanted
    batch = labels.shape[0]
    logprob = torch.zeros(batch, dtype=token_logprob.dtype, device=logits.device).index_add(
        0, rows, token_logprob
    )
    tokens = mask.sum(-1)
    wrong = torch.zeros(batch, dtype=torch.long, device=logits.device).index_add(
        0, rows, (~token_correct).long()
    )
    return SequenceStats(logprob, tokens, (wrong == 0) & (tokens > 0))


def forward_stats(model, batch: dict[str, torch.Tensor]) -> SequenceStats:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return sequence_stats(logits, batch["labels"])


def nll(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean negative log-likelihood per target token over the batch (the usual LM loss)."""
    stats = forward_stats(model, batch)
    return -stats.logprob.sum() / stats.tokens.sum().clamp(min=1)


@torch.no_grad()
def stats_for_examples(
    model, examples: list[Example], pad_id: int, *, batch_size: int = 32
) -> SequenceStats:
    """Sequence statistics for every example, in the order given.

    Examples are sorted by length so each batch pads little; the model is put in eval mode for the
    call and restored afterwards.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    logprob = torch.zeros(len(examples))
    tokens = torch.zeros(len(examples), dtype=torch.long)
    correct = torch.zeros(len(examples), dtype=torch.bool)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in rows], pad_id).items()}
        stats = forward_stats(model, batch)
        index = torch.tensor(rows)
        logprob[index] = stats.logprob.float().cpu()
        tokens[index] = stats.tokens.cpu()
        correct[index] = stats.correct.cpu()
    model.train(was_training)
    return SequenceStats(logprob, tokens, correct)


def score_pairs(
    model, tokenizer, pairs: list[tuple[str, str]], template: str, *, batch_size: int = 32
) -> SequenceStats:
    """Teacher-forced statistics of each (prompt, completion) pair, in the order given."""
    from excise.data.encode import encode_pair

    examples = [encode_pair(tokenizer, p, c, template, i) for i, (p, c) in enumerate(pairs)]
    return stats_for_examples(model, examples, tokenizer.pad_token_id, batch_size=batch_size)
