"""Activations at the prompt, and changes of a block's output while it runs (a hook, directional
ablation of the residual stream)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch

from excise.arch import decoder_layers
from excise.data.encode import prompt_ids
from excise.progress import progress


def _block_output(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def prompt_states(
    model,
    tokenizer,
    prompts: Sequence[str],
    template: str,
    *,
    reduce: Literal["last", "mean"] = "last",
    batch_size: int = 32,
) -> torch.Tensor:
    """Residual stream after every decoder block at the prompt: (layers, prompts, hidden) float32.

    ``last`` takes the last prompt token (where the answer's first token is predicted); ``mean``
    averages the prompt's tokens except the first, whose norm is outsized (attention sink).
    """
    device = next(model.parameters()).device
    captured: list[torch.Tensor] = []
    handles = [
        block.register_forward_hook(lambda _m, _i, out: captured.append(_block_output(out)))
        for block in decoder_layers(model)
    ]
    was_training = model.training
    model.eval()
    chunks = []
    try:
        starts = range(0, len(prompts), batch_size)
        for start in progress(starts, desc="activations", unit="batches"):
            encoded = [
                prompt_ids(tokenizer, p, template) for p in prompts[start : start + batch_size]
            ]
            width = max(len(ids) for ids in encoded)
            input_ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(input_ids)
            for row, ids in enumerate(encoded):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                mask[row, : len(ids)] = 1
            captured.clear()
            model(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False)
            lengths = mask.sum(1).to(device)
            if reduce == "last":
                rows = torch.arange(len(encoded), device=device)
                picked = [h[rows, lengths - 1] for h in captured]
            else:
                weights = mask.to(device, torch.float32)
                weights[:, 0] = (lengths == 1).float()  # keep the first token only if it is alone
                weights = weights / weights.sum(1, keepdim=True)
                picked = [torch.einsum("bsh,bs->bh", h.float(), weights) for h in captured]
            chunks.append(torch.stack(picked).float().cpu())  # (layers, batch, hidden)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return torch.cat(chunks, dim=1)


def ablate(hidden: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Remove the component along the unit vector ``direction``: x - (x·r) r."""
    return hidden - (hidden @ direction).unsqueeze(-1) * direction


@contextmanager
def direction_ablated(model, direction: torch.Tensor) -> Iterator[None]:
    """Project ``direction`` out of the residual stream: the input of the first block and the
    output of every block (so no block reads it, and the unembedding never sees it)."""
    blocks = decoder_layers(model)
    param = next(model.parameters())
    unit = (direction / direction.norm().clamp(min=1e-12)).to(param.device, param.dtype)

    def pre(_module, args, kwargs):
        if args:
            return (ablate(args[0], unit), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": ablate(kwargs["hidden_states"], unit)}

    def post(_module, _inputs, output):
        if isinstance(output, tuple):
            return (ablate(output[0], unit), *output[1:])
        return ablate(output, unit)

    handles = [blocks[0].register_forward_pre_hook(pre, with_kwargs=True)]
    handles += [block.register_forward_hook(post) for block in blocks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def hooked(
    module: torch.nn.Module, change: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[None]:
    """Apply ``change`` to ``module``'s output (a decoder block: its hidden states) while inside."""

    def hook(_module, _inputs, output):
        if isinstance(output, tuple):
            return (change(output[0]), *output[1:])
        return change(output)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
