"""Teacher-forced scoring of many continuations of one prompt in one row: a prefix tree.

Examples whose context (the tokens before the first target) is the same token for token - an
item's answer and its wrong answers (truth ratio), a question's multiple-choice options - are
packed into one row: the context once, then each continuation's input tokens, their positions
restarting where the context ends, under a 4D attention mask in which a continuation sees the
context and its own earlier tokens only. A continuation's first target is read off the context's
last position (shared), so a one-token answer costs no position of its own. Rows are sorted by
length and cut into batches of at most ``token_budget`` positions (rows x width): little padding,
large matrix products.

Every target sees exactly the tokens, positions and keys it sees in the one-example-per-row form
(:func:`excise.scoring.stats_for_examples`), so the values are the same up to float rounding. A
model that does not honour a 4D mask and position ids (checked once per model, on one row, against
that form) or whose sliding window is shorter than a row is scored in that form instead.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from excise.data.encode import IGNORE, Example
from excise.progress import progress
from excise.scoring import (
    TOKEN_BUDGET,
    SequenceStats,
    length_batches,
    plain_unembedding,
    stats_for_examples,
)

ROW_CAP = 256  # positions per packed row; a larger group is split over several rows
_HONOURS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> packing is exact


@dataclass
class _Row:
    context: tuple[int, ...]
    members: list[int]  # example indices, continuations in this order


def _context_length(example: Example) -> int | None:
    """Length of the leading context, or None when the labels are not "context, then targets"."""
    n = 0
    while n < len(example.labels) and example.labels[n] == IGNORE:
        n += 1
    if n == 0 or n == len(example.labels):
        return None
    if any(label == IGNORE for label in example.labels[n:]):
        return None
    return n


def _rows(examples: list[Example]) -> tuple[list[_Row], list[int]]:
    """Packed rows (by shared context, at most ``ROW_CAP`` positions each) and the examples that
    do not pack (scored plainly)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    plain: list[int] = []
    for index, example in enumerate(examples):
        n = _context_length(example)
        if n is None:
            plain.append(index)
        else:
            groups.setdefault(tuple(example.input_ids[:n]), []).append(index)
    rows: list[_Row] = []
    for context, members in groups.items():
        row = _Row(context, [])
        width = len(context)
        for index in members:
            extra = len(examples[index].input_ids) - len(context) - 1
            if row.members and width + extra > ROW_CAP:
                rows.append(row)
                row, width = _Row(context, []), len(context)
            row.members.append(index)
            width += extra
        rows.append(row)
    return rows, plain


def _row_tensors(row: _Row, examples: list[Example]):
    """(input ids, positions, allowed (W, W) bool, targets [(position, token, example)])."""
    context = list(row.context)
    length = len(context)
    ids, positions, blocks, targets = list(context), list(range(length)), [], []
    for index in row.members:
        answer = list(examples[index].input_ids[length:])
        start = len(ids)
        ids += answer[:-1]
        positions += range(length, length + len(answer) - 1)
        blocks.append((start, len(ids)))
        targets.append((length - 1, answer[0], index))
        targets += [(start + i, token, index) for i, token in enumerate(answer[1:])]
    width = len(ids)
    allowed = torch.ones(width, width, dtype=torch.bool).tril()
    for start, end in blocks:  # a continuation sees the context and itself, not the others
        allowed[start:end, length:start] = False
    return ids, positions, allowed, targets


def _forward(model, rows: list[_Row], examples: list[Example], pad_id: int, device):
    """Log-probability and argmax hit of every target of ``rows``, (targets,) each, with the
    example each belongs to."""
    built = [_row_tensors(row, examples) for row in rows]
    width = max(len(ids) for ids, *_ in built)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    allowed = torch.eye(width, dtype=torch.bool).repeat(len(rows), 1, 1)  # pads see themselves
    where, wanted, owner = [], [], []
    for r, (ids, positions, row_allowed, targets) in enumerate(built):
        n = len(ids)
        input_ids[r, :n] = torch.tensor(ids)
        position_ids[r, :n] = torch.tensor(positions)
        allowed[r, :n, :n] = row_allowed
        for position, token, index in targets:
            where.append((r, position))
            wanted.append(token)
            owner.append(index)
    dtype = next(model.parameters()).dtype
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    mask = mask.unsqueeze(1).to(device)  # (batch, 1, width, width), added to the scores
    inputs = {
        "input_ids": input_ids.to(device),
        "attention_mask": mask,
        "position_ids": position_ids.to(device),
    }
    at = torch.tensor(where, device=device)
    if plain_unembedding(model):
        hidden = model.base_model(**inputs, use_cache=False).last_hidden_state
        picked = model.get_output_embeddings()(hidden[at[:, 0], at[:, 1]])  # (targets, vocab)
    else:
        picked = model(**inputs, use_cache=False).logits[at[:, 0], at[:, 1]]
    picked = picked.float()
    target = torch.tensor(wanted, device=device)
    logprob = torch.log_softmax(picked, dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return logprob.cpu(), (picked.argmax(-1) == target).cpu(), torch.tensor(owner)


def _batches(
    rows: list[_Row], examples: list[Example], budget: int, batch_size: int | None
) -> list[list[_Row]]:
    sizes = [
        len(row.context)
        + sum(len(examples[i].input_ids) - len(row.context) - 1 for i in row.members)
        for row in rows
    ]
    return [
        [rows[i] for i in batch]
        for batch in length_batches(sizes, batch_size=batch_size, token_budget=budget)
    ]


def _exact(model, row: _Row, examples: list[Example], pad_id: int, device) -> bool:
    """Whether ``model`` scores a packed row as it scores its examples one per row."""
    if model not in _HONOURS:
        logprob, _, owner = _forward(model, [row], examples, pad_id, device)
        packed = torch.zeros(len(examples)).index_add(0, owner, logprob)[row.members]
        plain = stats_for_examples(model, [examples[i] for i in row.members], pad_id).logprob
        _HONOURS[model] = bool(torch.allclose(packed, plain, atol=1e-3, rtol=1e-3))
    return _HONOURS[model]


@torch.no_grad()
def score_examples(
    model,
    examples: list[Example],
    pad_id: int,
    *,
    batch_size: int | None = None,
    token_budget: int = TOKEN_BUDGET,
) -> SequenceStats:
    """Sequence statistics of every example, in the order given (as
    :func:`excise.scoring.stats_for_examples`), shared contexts computed once."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    rows, plain = _rows(examples)
    window = getattr(getattr(model, "config", None), "sliding_window", None)
    shared = next((r for r in rows if len(r.members) > 1), rows[0] if rows else None)
    if shared is None or (window and window < ROW_CAP):
        packable = False
    else:
        packable = _exact(model, shared, examples, pad_id, device)
    if not packable:
        plain, rows = list(range(len(examples))), []
    logprob = torch.zeros(len(examples))
    tokens = torch.tensor([sum(label != IGNORE for label in e.labels) for e in examples])
    wrong = torch.zeros(len(examples), dtype=torch.long)
    with progress(total=len(examples), desc="score", unit="items") as bar:
        for batch in _batches(rows, examples, token_budget, batch_size):
            token_logprob, hit, owner = _forward(model, batch, examples, pad_id, device)
            logprob.index_add_(0, owner, token_logprob)
            wrong.index_add_(0, owner, (~hit).long())
            bar.update(sum(len(r.members) for r in batch))
        correct = (wrong == 0) & (tokens > 0)
        if plain:
            stats = stats_for_examples(
                model,
                [examples[i] for i in plain],
                pad_id,
                batch_size=batch_size,
                token_budget=token_budget,
            )
            index = torch.tensor(plain)
            logprob[index], tokens[index], correct[index] = (
                stats.logprob,
                stats.tokens,
                stats.correct,
            )
            bar.update(len(plain))
    model.train(was_training)
    return SequenceStats(logprob, tokens, correct)
