"""Fit one eraser per decoder block, in order, in one pass over the contrast prompts.

Belrose et al. 2023 ("LEACE", section 6, concept scrubbing): to remove linear access to a concept
at every layer, not just one, erase it from block 0's output, then fit the eraser of block 1 on
the states block 1 produces from the *erased* stream, and so on. Each eraser must be fitted on
what its block sees once every earlier eraser is in place, so a plain implementation runs the
prompts through the model once per block (30 blocks: 465 block-forwards a prompt). Here the
prompts go through the model once to record what every block is called with (masks, position
embeddings), then the blocks are replayed one at a time on the stored stream: every block runs
once per prompt, the stream of all prompts (prompts x tokens x hidden) is the only thing held.

The erasers are applied to every position of a block's output (the runtime hooks of
:mod:`excise.erasure.adapter` do the same), and fitted on the rows ``positions`` selects
(:func:`excise.activations.states.residual_states`' convention: ``last`` prompt token, or ``all``
but the first).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from excise.activations.states import encode_prompts
from excise.arch import decoder_layers, run_until
from excise.erasure.leace import LeaceEraser
from excise.progress import progress

Fit = Callable[[torch.Tensor, torch.Tensor], LeaceEraser]


def _record(model, input_ids, mask, last: int) -> tuple[torch.Tensor, list[tuple[tuple, dict]]]:
    """(block 0's input, [(extra args, kwargs) per block 0..last]) of one forward."""
    blocks = decoder_layers(model)
    calls: list[tuple[tuple, dict[str, Any]]] = [((), {})] * (last + 1)
    first: list[torch.Tensor] = []

    def keep(index: int):
        def hook(_module, args, kwargs):
            rest = dict(kwargs)
            hidden = args[0] if args else rest.pop("hidden_states")
            if index == 0:
                first.append(hidden)
            calls[index] = (args[1:], rest)

        return hook

    handles = [
        blocks[i].register_forward_pre_hook(keep(i), with_kwargs=True) for i in range(last + 1)
    ]
    try:
        run_until(model, last, input_ids=input_ids, attention_mask=mask)
    finally:
        for handle in handles:
            handle.remove()
    return first[0], calls


@torch.no_grad()
def fit_per_block(
    model,
    tokenizer,
    prompts: Sequence[str],
    labels: torch.Tensor,
    fit: torch.Tensor,
    layers: Sequence[int],
    fit_eraser: Fit,
    *,
    template: str = "raw",
    positions: str = "last",
    batch_size: int = 64,
) -> dict[int, LeaceEraser]:
    """{block: eraser} for ``layers``, each fitted (by ``fit_eraser(rows, labels)``) on the fit
    side's rows of that block's output with the erasers of the earlier blocks applied.

    ``labels`` and ``fit`` are per prompt. The model is not changed; attach the erasers with
    :func:`excise.erasure.adapter.register` (kind ``affine``) to reproduce what they were fitted
    on."""
    wanted = sorted(set(layers))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    stream, calls, kept = [], [], []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            input_ids, mask, keep = encode_prompts(tokenizer, chunk, template, positions)
            hidden, recorded = _record(model, input_ids.to(device), mask.to(device), wanted[-1])
            stream.append(hidden)
            calls.append(recorded)
            kept.append(keep.to(device))
        owner = torch.cat([k.nonzero()[:, 0] + i * batch_size for i, k in enumerate(kept)])
        row_labels, row_fit = labels[owner.cpu()], fit[owner.cpu()]
        blocks = decoder_layers(model)
        erasers: dict[int, LeaceEraser] = {}
        for index in progress(range(wanted[-1] + 1), desc="fit per block", unit="blocks"):
            for b, (args, kwargs) in enumerate(call[index] for call in calls):
                out = blocks[index](stream[b], *args, **kwargs)
                stream[b] = out[0] if isinstance(out, tuple) else out
            if index not in wanted:
                continue
            rows = torch.cat([s[k].float().cpu() for s, k in zip(stream, kept, strict=True)])
            eraser = fit_eraser(rows[row_fit], row_labels[row_fit])
            erasers[index] = eraser
            stream = [eraser(s) for s in stream]
    finally:
        model.train(was_training)
    return erasers
