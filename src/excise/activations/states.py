"""Residual-stream states of labelled prompts, and a fresh linear probe to read a concept from them.

Layer ``l`` >= 0 is the stream after decoder block ``l``; layer -1 is the stream entering block 0
(the embeddings). The forward stops after the deepest layer asked for. ``positions="all"`` keeps
every prompt token but the first (its state is the same for every prompt that starts with the same
token, and its norm is outsized: an attention sink); ``"last"`` keeps the last prompt token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from excise.arch import decoder_layers, run_until
from excise.data.encode import prompt_ids

Positions = Literal["all", "last"]


@dataclass
class States:
    by_layer: dict[int, torch.Tensor]  # layer -> (rows, hidden) float32, on the CPU
    prompt: torch.Tensor  # (rows,) index of the prompt each row comes from


def hidden_at(model: torch.nn.Module, layer: int, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Output of decoder block ``layer`` (batch, seq, hidden); blocks above it never run."""
    captured: list[torch.Tensor] = []

    def grab(module, inputs, output):
        captured.append(output[0] if isinstance(output, tuple) else output)

    handle = decoder_layers(model)[layer].register_forward_hook(grab)  # runs before the stop
    try:
        run_until(
            model, layer, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        )
    finally:
        handle.remove()
    return captured[0]


def block_states(model, batch: dict[str, torch.Tensor], layers: Sequence[int]):
    """{layer: (batch, seq, hidden)} for ``layers`` (-1: block 0's input), one truncated forward."""
    blocks = decoder_layers(model)
    captured: dict[int, torch.Tensor] = {}

    def keep(layer: int):
        def hook(_module, _inputs, output):
            captured[layer] = output[0] if isinstance(output, tuple) else output

        return hook

    def keep_input(_module, args, kwargs):
        captured[-1] = args[0] if args else kwargs["hidden_states"]

    handles = [blocks[0].register_forward_pre_hook(keep_input, with_kwargs=True)]
    handles += [blocks[layer].register_forward_hook(keep(layer)) for layer in layers if layer >= 0]
    try:
        hidden_at(model, max(0, *layers), batch)  # stops after the deepest block asked for
    finally:
        for handle in handles:
            handle.remove()
    return {layer: captured[layer] for layer in layers}


def encode_prompts(
    tokenizer, prompts: Sequence[str], template: str, positions: Positions
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, keep) of ``prompts``, right-padded; ``keep`` marks the rows
    ``positions`` selects."""
    encoded = [prompt_ids(tokenizer, p, template) for p in prompts]
    width = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    keep = torch.zeros(len(encoded), width, dtype=torch.bool)
    for row, ids in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = 1
        if positions == "last" or len(ids) == 1:
            keep[row, len(ids) - 1] = True
        else:
            keep[row, 1 : len(ids)] = True
    return input_ids, mask, keep


@torch.no_grad()
def residual_states(
    model,
    tokenizer,
    prompts: Sequence[str],
    layers: Sequence[int],
    *,
    template: str = "raw",
    positions: Positions = "all",
    batch_size: int = 32,
) -> States:
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    rows: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    owners: list[torch.Tensor] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            input_ids, mask, keep = encode_prompts(tokenizer, chunk, template, positions)
            batch = {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}
            states = block_states(model, batch, layers)
            for layer in layers:
                rows[layer].append(states[layer][keep.to(device)].float().cpu())
            owners.append(keep.nonzero()[:, 0] + start)
    finally:
        model.train(was_training)
    return States({layer: torch.cat(rows[layer]) for layer in layers}, torch.cat(owners))


@torch.no_grad()
def sink_subspace(
    model, tokenizer, prompts: Sequence[str], *, template: str = "raw", size: int = 4
) -> torch.Tensor:
    """(hidden, size) orthonormal basis of the first token's states over every layer.

    The first position is an attention sink: from the early blocks on its state carries a few
    outsized components that the model relies on (norm ~650 at block 7 of SmolLM2-135M against
    ~140 elsewhere). A direction fitted on the other positions can overlap them; removing it
    from every layer then breaks the sink (perplexity 22 -> 1200 when the chem-symbols direction is
    projected out everywhere, 24.6 once it is made orthogonal to the top sink direction).
    """
    layers = list(range(-1, len(decoder_layers(model))))
    device = next(model.parameters()).device
    rows = []
    for prompt in list(prompts)[:: max(1, len(prompts) // 32)][:32]:
        ids = torch.tensor([prompt_ids(tokenizer, prompt, template)], device=device)
        states = block_states(
            model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, layers
        )
        rows += [states[layer][0, 0].double().cpu() for layer in layers]
    _, _, right = torch.linalg.svd(torch.stack(rows), full_matrices=False)
    return right[:size].T.float()
