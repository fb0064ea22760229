"""Representation misdirection for unlearning (``rmu``).

Li et al. 2024, "The WMDP benchmark: measuring and reducing malicious use with unlearning".
At decoder layer L, forget activations are pushed towards c * u (u a fixed random unit vector)
and retain activations are held at the frozen model's:
    loss = mean ||h_L(forget) - c*u||^2 + alpha * mean ||h_L(retain) - h_L^frozen(retain)||^2
Only the MLP output projections of layers L-k+1..L change.

Efficiency: the forward stops at layer L (a hook ends it), so layers above L never run; the
frozen activations on the retain set are computed once before training and cached, so no frozen
copy of the model is held.

Hyper-parameters (defaults tuned on the bundled smollm2-135m, 30 layers):
- ``layer`` (None: a quarter of the depth, 7 of 30; WMDP used 7 of 32; a third where each MLP's
  write is normalised before the residual add, Gemma 3: 5 of 18)
- ``update_layers`` (None: 3; 1 where MLP writes are normalised): layers up to ``layer`` trained
- ``steering_coeff`` (None: ``steering_scale`` x median forget token norm at ``layer``)
- ``steering_scale`` (8.0); ``alpha`` (1000.0): retain weight; ``seed`` (0): the random direction
- training: 150 steps, lr 5e-4, batch 8 forget + 8 retain (chem-symbols, measured: forget accuracy
  100% -> 0.6%, paraphrases 100% -> 0.5%, held-out retain 100% -> 98%, perplexity +2%; ~30 s)

The layer (a quarter of the depth) and the coefficient (a multiple of the model's own token
norms) carry over to other sizes by construction. The forget term skips the leading special
tokens every prompt shares (:func:`shared_prefix`: Gemma's <bos>, none for SmolLM2's raw
prompts): their states are the same in every forget and retain prompt, so steering them moved
all prompts. Measured on gemma3-270m (chem-symbols quick sample, 2026-12-07) with <bos> steered:
forget 0.03 but retain 0.56 and perplexity 244 -> 834, the same whatever alpha (1e3, 1e4) or
steering_scale (1, 8), and the same retain items broken each time. Gemma 3 also normalises each
MLP output before the residual add (its writes at layers 1-3 have median norm 160-720 against a
stream of ~2000 there), so the forget loss barely falls (4.2e5 -> 3.9e5) while forget accuracy
does: the trained projections turn their writes, they cannot lengthen them. The demo with
<bos> skipped is not yet measured (its one run stopped at the audit on an unrelated error).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from excise.activations.states import hidden_at
from excise.arch import block_part, normalised_writes, num_layers
from excise.data.encode import collate
from excise.errors import ConfigError
from excise.methods import MethodSpec, register


@dataclass
class RMUConfig:
    layer: int | None = None
    update_layers: int | None = None  # None: 3, or 1 where MLP writes are normalised (below)
    steering_coeff: float | None = None
    steering_scale: float = 8.0
    alpha: float = 1000.0
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.update_layers is not None and self.update_layers < 1) or (
            self.alpha < 0 or self.steering_scale <= 0
        ):
            raise ConfigError("update_layers must be >= 1, alpha >= 0, steering_scale > 0")
        if self.steering_coeff is not None and self.steering_coeff <= 0:
            raise ConfigError("steering_coeff must be > 0")


def resolve_update_layers(model, config: RMUConfig) -> int:
    """``update_layers``, or by default 3 (WMDP's RMU), 1 where MLP writes are normalised: there
    three trained MLPs pile bounded writes on each other and pull every prompt (gemma3-270m at
    layers 1-3: retain 0.50 of the original on the demo's quick sample; one MLP at layer 5:
    forget 0.031, retain 0.938, perplexity 16.97 -> 18.10, measured 2026-12-07)."""
    if config.update_layers is not None:
        return config.update_layers
    return 1 if normalised_writes(model) else 3


def resolve_layer(model, config: RMUConfig) -> int:
    depth = num_layers(model)
    # a quarter of the depth (WMDP: 7 of 32); a third where MLP writes are normalised (Gemma 3
    # 270M: 5 of 18; at 8 of 18 retain fell to 0.84, measured 2026-12-07)
    share = 3 if normalised_writes(model) else 4
    layer = config.layer if config.layer is not None else max(0, round(depth / share) - 1)
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
def _cache(ctx, examples, layer: int) -> dict[int, torch.Tensor]:
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
    layer = resolve_layer(model, config)
    trained = range(max(0, layer - resolve_update_layers(model, config) + 1), layer + 1)
    for param in model.parameters():
        param.requires_grad_(False)
    for index in trained:
        for param in block_part(model, index, "mlp_out").parameters():
            param.requires_grad_(True)
    ctx.state["layer"] = layer
    sequences = [e.input_ids for e in (*ctx.forget, *ctx.retain)]
    ctx.state["shared"] = shared_prefix(sequences, set(ctx.tokenizer.all_special_ids))
    ctx.state["retain_frozen"] = _cache(ctx, ctx.retain, layer) if config.alpha > 0 else {}
    generator = torch.Generator().manual_seed(config.seed)
    direction = torch.rand(model.config.hidden_size, generator=generator)
    direction = direction / direction.norm()
    coeff = config.steering_coeff
    if coeff is None:
        # the median token norm, skipping position 0 (attention sinks carry outsized norms)
        forget_hidden = _cache(ctx, ctx.forget[:64], layer)
        norms = torch.cat([h[1:].norm(dim=-1) for h in forget_hidden.values()])
        coeff = config.steering_scale * float(norms.median())
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
        "steer forget activations at one layer to a random vector; train 3 MLPs; truncated forward",
        RMUConfig,
        prepare,
        loss,
        train_defaults={"steps": 150, "lr": 5e-4},
        lr_from_weights=False,
    )
)
