"""Where an edit acts: the subject's last token, the MLP keys there, and the residual stream.

Every closed-form editor (ROME, MEMIT, AlphaEdit) reads the input of a block's MLP output
projection (the *key*) at the last token of the subject, and nudges the residual stream at that
token. This module builds those prompts, finds that token and reads or shifts the activations.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from excise.arch import block_part, decoder_layers, run_until, write_norm
from excise.data.encode import IGNORE, completion_ids, lead_ids
from excise.errors import DataError


@dataclass(frozen=True)
class Row:
    """One tokenized prompt (optionally followed by a target) and its subject's last token."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]  # IGNORE except on target tokens
    position: int  # index of the subject's last token
    owner: int  # which request (or item) the row belongs to


def templated(tokenizer, prompt: str, template: str) -> str:
    """The prompt text exactly as the model reads it (chat template applied for ``chat``)."""
    if template == "chat":
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt.strip()}],
            add_generation_prompt=True,
            tokenize=False,
        )
    return prompt


def subject_row(
    tokenizer,
    prompt: str,
    subject: str,
    *,
    prefix: str = "",
    target: str | None = None,
    template: str = "raw",
    owner: int = 0,
) -> Row:
    """Tokenize ``prefix + prompt`` ("{}" replaced by ``subject``), then ``target`` if given.

    The subject's last token is found from character offsets, so it is right whatever the
    tokenizer does at word boundaries.
    """
    if "{}" not in prompt:
        raise DataError(f"edit prompt {prompt!r} has no '{{}}' where the subject goes")
    head, tail = prompt.split("{}", 1)
    user = prefix + head + subject + tail
    text = templated(tokenizer, user, template)
    lead = len(user) - len(user.lstrip()) if template == "chat" else 0
    content = user[lead:].rstrip() if template == "chat" else user
    start = text.rfind(content)
    if start < 0:
        raise DataError(f"the chat template rewrote prompt {prompt!r}; use --template raw")
    end = start + len(prefix + head + subject) - lead
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    before = [i for i, (s, _e) in enumerate(encoded["offset_mapping"]) if s < end]
    if not before:
        raise DataError(f"cannot find subject {subject!r} in prompt {prompt!r}")
    starts = lead_ids(tokenizer) if template == "raw" else []  # as prompt_ids starts a prompt
    ids = starts + list(encoded["input_ids"])
    labels = [IGNORE] * len(ids)
    if target is not None:
        answer = completion_ids(tokenizer, target, template)
        ids, labels = ids + answer, labels + answer
    return Row(tuple(ids), tuple(labels), len(starts) + before[-1], owner)


def batch_rows(rows: Sequence[Row], pad_id: int, device) -> dict[str, torch.Tensor]:
    width = max(len(r.input_ids) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row.input_ids)
        input_ids[i, :n] = torch.tensor(row.input_ids)
        labels[i, :n] = torch.tensor(row.labels)
        mask[i, :n] = 1
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": mask.to(device),
        "labels": labels.to(device),
        "position": torch.tensor([r.position for r in rows], device=device),
    }


def _hidden(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def shifted(block: nn.Module, positions: torch.Tensor, delta: torch.Tensor) -> Iterator[None]:
    """Add ``delta[i]`` to block ``block``'s output at row ``i``, token ``positions[i]``."""

    def hook(_module, _inputs, output):
        hidden = _hidden(output)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        bump = torch.zeros_like(hidden)
        bump[rows, positions] = delta.to(hidden.dtype)
        hidden = hidden + bump
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def read_at(
    model,
    rows: Sequence[Row],
    layers: Sequence[int],
    pad_id: int,
    *,
    what: str,
    batch_size: int = 64,
) -> dict[int, torch.Tensor]:
    """Activations at each row's subject token, per layer: (rows, dim) float32.

    ``what="key"`` reads the input of the MLP output projection; ``"residual"`` the block output.
    """
    device = next(model.parameters()).device
    found: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    current: dict[str, torch.Tensor] = {}

    def grab(layer: int):
        def pre(_module, args):
            found[layer].append(args[0][torch.arange(len(current["p"])), current["p"]].float())

        def post(_module, _inputs, output):
            hidden = _hidden(output)
            found[layer].append(hidden[torch.arange(len(current["p"])), current["p"]].float())

        return pre, post

    handles = []
    for layer in layers:
        pre, post = grab(layer)
        if what == "key":
            handles.append(block_part(model, layer, "mlp_out").register_forward_pre_hook(pre))
        else:
            handles.append(decoder_layers(model)[layer].register_forward_hook(post))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(rows), batch_size):
            batch = batch_rows(rows[start : start + batch_size], pad_id, device)
            current["p"] = batch["position"]
            run_until(  # nothing above the deepest layer read is needed
                model,
                max(layers),
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
            )
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {layer: torch.cat(found[layer]).cpu() for layer in layers}


def write_scale(model, layer: int, weight: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Per row (rows, 1), float64: 1 / rms(W k) where block ``layer`` normalises its MLP's
    output (a change of y reaches the stream divided by rms(y), and the key statistics weigh
    keys so: :func:`excise.editing.stats.compute`), else 1."""
    if write_norm(model, layer) is None:
        return torch.ones(keys.shape[0], 1, dtype=torch.float64)
    with torch.no_grad():
        outputs = keys.double() @ weight.detach().double().cpu().T
    return 1.0 / outputs.pow(2).mean(1, keepdim=True).sqrt().clamp(min=1e-30)


def mean_by_owner(values: torch.Tensor, rows: Sequence[Row], owners: int) -> torch.Tensor:
    """Average the rows that belong to each owner (e.g. one request's context variants)."""
    index = torch.tensor([r.owner for r in rows])
    total = torch.zeros(owners, values.shape[1], dtype=values.dtype).index_add_(0, index, values)
    count = torch.bincount(index, minlength=owners).clamp(min=1).unsqueeze(1)
    return total / count


def out_in(module: nn.Module) -> torch.Tensor:
    """The projection's weight as (out, in), a view that in-place updates write through.

    ``nn.Linear`` stores (out, in); GPT-2's ``Conv1D`` stores (in, out).
    """
    if isinstance(module, nn.Linear):
        return module.weight
    if type(module).__name__ == "Conv1D":
        return module.weight.T
    raise DataError(f"cannot edit a {type(module).__name__}: expected a linear projection")
