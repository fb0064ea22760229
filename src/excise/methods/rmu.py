"""Representation misdirection for unlearning (``rmu``).

Li et al. 2024, "The WMDP benchmark: measuring and reducing malicious use with unlearning".
At decoder layer L, forget activations are pushed towards c * u (u a fixed random unit vector)
and retain activations are held at the frozen model's:
    loss = mean ||h_L(forget) - c*u||^2 + alpha * mean ||h_L(retain) - h_L^frozen(retain)||^2
Only the MLP output projections of layers L-k+1..L change.

Efficiency: the forward stops at layer L (a hook ends it), so layers above L never run; the
frozen activations on the retain set are computed once before training and cached, so no frozen
copy of the model is held.

Hyper-parameters (defaults tuned on the bundled smollm2-135m, 30 layers; where each block
normalises its MLP's write before the residual add, Gemma 2/3 and OLMo 2, three of them follow
from that, measured on gemma3-270m):
- ``layer`` (None: a quarter of the depth, 7 of 30; WMDP used 7 of 32; with normalised writes
  the layer, a sixth to a third of the depth, whose write moves the forget tokens' stream the
  most: :func:`resolve_layer`, 3 of 18 on gemma3-270m)
- ``update_layers`` (None: 3; 1 with normalised writes): layers up to ``layer`` trained
- ``steering_coeff`` (None: ``steering_scale`` x median forget token norm at ``layer``)
- ``steering_scale`` (None: 8.0; 16.0 with normalised writes: :func:`resolve_steering_scale`);
  ``alpha`` (1000.0): retain weight; ``seed`` (0): the random direction
- training: 150 steps, lr 5e-4, batch 8 forget + 8 retain (chem-symbols, measured: forget accuracy
  100% -> 0.6%, paraphrases 100% -> 0.5%, held-out retain 100% -> 98%, perplexity +2%; ~30 s)

The layer and the coefficient (a multiple of the model's own token norms) carry over to other
sizes by construction. The forget term skips the leading special tokens every prompt shares
(:func:`shared_prefix`: Gemma's <bos>, none for SmolLM2's raw prompts): their states are the
same in every forget and retain prompt, so steering them moved all prompts. Gemma 3 normalises
each MLP output before the residual add (at layer 3 of gemma3-270m the write's length is 0.36 of
the stream's, at layer 4 0.18), so the forget loss barely falls while forget accuracy does: the
trained projection turns its write, it cannot lengthen it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from excise.activations.states import hidden_at
from excise.arch import (
    block_part,
    decoder_layers,
    normalised_writes,
    num_layers,
    run_until,
    write_norm,
)
from excise.data.encode import collate
from excise.errors import ConfigError
from excise.methods import MethodSpec, register


@dataclass
class RMUConfig:
    layer: int | None = None
    update_layers: int | None = None  # None: 3, or 1 where MLP writes are normalised (below)
    steering_coeff: float | None = None
    steering_scale: float | None = None  # None: 8, or 16 where MLP writes are normalised
    alpha: float = 1000.0
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.update_layers is not None and self.update_layers < 1) or (
            self.alpha < 0 or (self.steering_scale is not None and self.steering_scale <= 0)
        ):
            raise ConfigError("update_layers must be >= 1, alpha >= 0, steering_scale > 0")
        if self.steering_coeff is not None and self.steering_coeff <= 0:
            raise ConfigError("steering_coeff must be > 0")


def resolve_update_layers(model, config: RMUConfig) -> int:
    """``update_layers``, or by default 3 (WMDP's RMU), 1 where MLP writes are normalised: there
    trained MLPs pile bounded writes on each other and pull every prompt (gemma3-270m at layers
    1-3: retain 0.50 of the original on the demo's quick sample; chem-symbols, full evaluation,
    2026-12-07: layers 4-5 forget 0.017, retain 0.820, perplexity 17.53 -> 30.3; layer 5 alone
    0.087, 0.955, 18.90)."""
    if config.update_layers is not None:
        return config.update_layers
    return 1 if normalised_writes(model) else 3


def resolve_steering_scale(model, config: RMUConfig) -> float:
    """``steering_scale``, or by default 8 (tuned on smollm2-135m), 16 where MLP writes are
    normalised: there the one trained write can only turn, and the target's pull against the
    retain term decides how far. gemma3-270m at layer 3, 150 steps (chem-symbols, full
    evaluation, 2026-12-07): scale 8 forget 0.061, retain 0.982, perplexity 17.53 -> 18.88;
    16: 0.009 / 0.937 / 19.79 (seed 1: 0.017 / 0.928 / 20.25); 250 steps at 8 instead:
    0.009 / 0.919 / 19.50; alpha 300 at 8: 0.009 / 0.883 / 20.81."""
    if config.steering_scale is not None:
        return config.steering_scale
    return 16.0 if normalised_writes(model) else 8.0


def leverage_window(depth: int) -> range:
    """Where writes are normalised, the layers ``rmu`` chooses among: a sixth to a third of the
    depth (WMDP's layer 7 of 32 and SmolLM2's 7 of 30 sit between)."""
    low = max(0, round(depth / 6))
    return range(low, max(low, round(depth / 3) - 1) + 1)


@torch.no_grad()
def write_shares(model, batches, layers: Sequence[int]) -> dict[int, float]:
    """{layer: median over tokens of |MLP write| / |stream after the block|} on ``batches``
    (position 0, the attention sink, skipped): how far one trained MLP there can move a token's
    state when its write is normalised (its length is fixed; only its direction can change)."""
    blocks = decoder_layers(model)
    writes: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    streams: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}

    def keep(store, layer):
        def hook(_module, _inputs, output):
            store[layer].append(output[0] if isinstance(output, tuple) else output)

        return hook

    handles = []
    for layer in layers:
        handles.append(write_norm(model, layer).register_forward_hook(keep(writes, layer)))
        handles.append(blocks[layer].register_forward_hook(keep(streams, layer)))
    masks = []
    try:
        for batch in batches:
            run_until(
                model,
                max(layers),
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
            )
            mask = batch["attention_mask"].bool().clone()
            mask[:, 0] = False
            masks.append(mask)
    finally:
        for handle in handles:
            handle.remove()
    shares = {}
    for layer in layers:
        ratio = [
            (w.norm(dim=-1) / s.norm(dim=-1).clamp(min=1e-6))[m]
            for w, s, m in zip(writes[layer], streams[layer], masks, strict=True)
        ]
        shares[layer] = float(torch.cat(ratio).float().median())
    return shares


def resolve_layer(model, config: RMUConfig, shares: dict[int, float] | None = None) -> int:
    """``layer``, or by default a quarter of the depth (WMDP: 7 of 32; SmolLM2: 7 of 30); where
    MLP writes are normalised, the layer of :func:`leverage_window` whose write moves the forget
    tokens' stream the most (``shares``, from :func:`write_shares`; without them, the window's
    top). Measured on gemma3-270m (chem-symbols, full evaluation, 150 steps, steering scale 8,
    2026-12-07): layer 3 (write share 0.36) forget 0.061, retain 0.982; 4 (0.18) 0.217, 1.000;
    5 (0.27) 0.087, 0.955; 6 (0.20) 0.209, 0.973; 7 (0.27) 0.304, 0.955: forgetting follows the
    share, not the depth (layers 0-2 are outside the window: 0 is the embeddings' neighbour)."""
    depth = num_layers(model)
    if config.layer is not None:
        layer = config.layer
    elif normalised_writes(model):
        window = leverage_window(depth)
        layer = max(window, key=lambda i: shares[i]) if shares else window[-1]
    else:
        layer = max(0, round(depth / 4) - 1)
    if not 0 <= layer < depth:
        raise ConfigError(f"rmu layer {layer} is outside the model's 0..{depth - 1}")
    return layer


def masked_mse(actual: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the non-padding positions (mean over hidden units too)."""
    weights = mask.unsqueeze(-1).to(actual.dtype)
    return ((actual - target) ** 2 * weights).sum() / (weights.sum() * actual.shape[-1]).clamp(
        min=1
    )


@torch.no_grad()
def cache_states(ctx, examples, layer: int) -> dict[int, torch.Tensor]:
    """{example index: (tokens, hidden)} after block ``layer`` of the model as it is now."""
    cached = {}
    for start in range(0, len(examples), 32):
        chunk = examples[start : start + 32]
        batch = ctx.to_device(collate(chunk, ctx.pad_id))
        hidden = hidden_at(ctx.unwrapped, layer, batch)
        for row, example in enumerate(chunk):
            cached[example.index] = hidden[row, : len(example.input_ids)].clone()
    return cached


def prepare(ctx) -> None:
    model, config = ctx.unwrapped, ctx.config
    shares = None
    if config.layer is None and normalised_writes(model):
        sample = ctx.forget[:64]
        batches = [
            ctx.to_device(collate(sample[i : i + 32], ctx.pad_id))
            for i in range(0, len(sample), 32)
        ]
        shares = write_shares(model, batches, leverage_window(num_layers(model)))
        ctx.state["write_shares"] = shares
    layer = resolve_layer(model, config, shares)
    trained = range(max(0, layer - resolve_update_layers(model, config) + 1), layer + 1)
    for param in model.parameters():
        param.requires_grad_(False)
    for index in trained:
        for param in block_part(model, index, "mlp_out").parameters():
            param.requires_grad_(True)
    ctx.state["layer"] = layer
    sequences = [e.input_ids for e in (*ctx.forget, *ctx.retain)]
    ctx.state["shared"] = shared_prefix(sequences, set(ctx.tokenizer.all_special_ids))
    ctx.state["retain_frozen"] = cache_states(ctx, ctx.retain, layer) if config.alpha > 0 else {}
    generator = torch.Generator().manual_seed(config.seed)
    direction = torch.rand(model.config.hidden_size, generator=generator)
    direction = direction / direction.norm()
    coeff = config.steering_coeff
    if coeff is None:
        # the median token norm, skipping position 0 (attention sinks carry outsized norms)
        forget_hidden = cache_states(ctx, ctx.forget[:64], layer)
        norms = torch.cat([h[1:].norm(dim=-1) for h in forget_hidden.values()])
        coeff = resolve_steering_scale(model, config) * float(norms.median())
    ctx.state["coeff"] = coeff
    ctx.state["target"] = (coeff * direction).to(ctx.accelerator.device)


def shared_prefix(sequences: list[list[int]], special: set[int]) -> int:
    """How many leading special tokens every sequence shares (Gemma's raw prompts: <bos>;
    SmolLM2's: none).

    A causal model's states there are the same in every prompt, forget or retain alike, and are
    the attention sink the rest reads: steering them (while the retain term holds them) moves
    every prompt. On gemma3-270m with them steered, retain fell to 0.56 and perplexity rose
    244 -> 834 whatever alpha (1e3, 1e4) or steering_scale (1, 8) (measured 2026-12-07).
    Only special tokens count, so a shared first word (all prompts "The ...") is still trained.
    """
    if not sequences:
        return 0
    first = sequences[0]
    for position in range(min(len(s) for s in sequences)):
        if first[position] not in special or any(s[position] != first[position] for s in sequences):
            return position
    return min(len(s) for s in sequences)


def padded(cached: dict[int, torch.Tensor], rows: list[int], width: int) -> torch.Tensor:
    first = cached[rows[0]]
    out = first.new_zeros(len(rows), width, first.shape[-1])
    for row, index in enumerate(rows):
        out[row, : cached[index].shape[0]] = cached[index]
    return out


def loss(ctx, batch):
    layer, target = ctx.state["layer"], ctx.state["target"]
    forget = batch["forget"]
    forget_hidden = hidden_at(ctx.model, layer, forget)
    steered = forget["attention_mask"].clone()  # right-padded: the shared prefix comes first
    steered[:, : ctx.state["shared"]] = 0
    forget_loss = masked_mse(forget_hidden, target.expand_as(forget_hidden), steered)
    terms = {"forget_mse": float(forget_loss.detach())}
    total = forget_loss
    if ctx.config.alpha > 0:
        total = ctx.release(total)  # backwarded now where the loop allows it
        retain = batch["retain"]
        retain_hidden = hidden_at(ctx.model, layer, retain)
        frozen = padded(
            ctx.state["retain_frozen"], retain["index"].tolist(), retain_hidden.shape[1]
        )
        retain_loss = masked_mse(retain_hidden, frozen, retain["attention_mask"])
        total = total + ctx.config.alpha * retain_loss
        terms["retain_mse"] = float(retain_loss.detach())
    return total, terms


SPEC = register(
    MethodSpec(
        "rmu",
        "steer forget activations at one layer to a random vector; train the MLPs up to it; truncated forward",
        RMUConfig,
        prepare,
        loss,
        train_defaults={"steps": 150, "lr": 5e-4},
        lr_from_weights=False,
    )
)
