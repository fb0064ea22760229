"""Collapse of irrelevant representations (``cir``).

Sondej & Yang 2025, "Collapse of Irrelevant Representations (CIR) ensures robust and
non-disruptive LLM unlearning". Their diagnosis: unlearning updates mostly follow what the forget
tokens share with all text (the mean and the main directions of the activations a weight reads
and of the gradients at its output), so they damage general representations, and fine-tuning on
anything restores them. CIR removes those shared components before the update is formed.

Here, for each trained MLP linear layer (every MLP below the top of ``layers``) with weight W0,
A an orthonormal basis of the mean and the ``act_components`` principal directions of its inputs,
G the same for the gradients at its output (``grad_components``), both measured once on the
original model before training, on the ``collapse`` set's tokens:
    W = W0 + (I - G^T G) D (I - A^T A),   D = W_trained - W0
so whatever the optimizer does, the change never reads a collapsed input direction and never
writes a collapsed output direction; the gradient of W_trained is exactly CIR's per-token outer
product of collapsed output gradients and collapsed activations. The projected weights are
written into the model after the last step (a plain checkpoint). Steps are the authors' plain
SGD (the loop's ``optimizer: sgd``; clipped to max_grad_norm 1, which the collapsed gradients
stay under here on SmolLM2): AdamW's per-weight scaling would blow tiny collapsed gradients up to
full steps. (One AdamW run, lr 1e-4, drifted the retain states while the forget loss did not
move, but it also applied the basis measurement's leftover gradients in its first step, since
fixed, so it does not separate the two causes.)

Forget loss ("MLP breaking", the authors' ``mlp_confuse``): at each layer of ``layers``, the MLP's
output on a forget token dotted with its original output, over the layer's mean squared original
norm, clipped below at ``floor``, averaged over tokens (the shared leading special tokens
skipped) and layers; it pushes each MLP's contribution on forget tokens to zero or past it.
Retain (``alpha`` > 0): the residual stream after the top layer on retain prompts held at the
original's (mean squared error over hidden units), cached once; the forward stops at that layer.

Whose common directions (``collapse``): the authors collapse the forget set's own (facts in
varied prose share little but general language). chem-symbols' forget prompts are a few
templates, so the forget set's mean and 24 components span 71-90% of its own activations' energy
and only 30-67% of the retain set's: the change then moved retain tokens more than forget tokens
(bundled model, 60 SGD steps at lr 0.1: forget 1.000 -> 1.000). Collapsing the retain set's
directions instead keeps 31-69% of the forget activations' energy and 14-30% of the retain's;
that is the default here (``collapse: retain``; ``forget`` is the authors' choice).

Hyper-parameters (the authors used layers 6-11 of Llama-3.2-1B's 16, 24 activation and 36
gradient components, SGD steps of norm 0.2 and a retaining loss): ``layers`` (None: 3/8 to 3/4 of
the depth, 11..21 of SmolLM2's 30), ``act_components`` (24), ``grad_components`` (36), ``floor``
(0.0), ``alpha`` (0.0: no retain term; at 10 the normalised steps along the retain gradient
overshot and oscillated), ``collapse`` (retain), ``pca_examples`` (256 prompts at most); 100
steps of SGD at lr 0.5. Bundled model, chem-symbols, quick sample (2026-12-07): forget 1.000 ->
0.031, paraphrases 0.042, retain 0.938, MC 0.733 -> 0.767, perplexity 24.10 -> 24.23.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from excise.activations.states import hidden_at
from excise.arch import decoder_layers, get_module, layout, normalised_writes, num_layers, run_until
from excise.data.encode import collate
from excise.errors import ConfigError
from excise.methods import MethodSpec, register
from excise.methods.rmu import cache_states, masked_mse, padded, shared_prefix


@dataclass
class CIRConfig:
    layers: str | None = None  # "LO-HI" (inclusive), None: 3/8 to 3/4 of the depth
    act_components: int = 24
    grad_components: int = 36
    floor: float = 0.0
    alpha: float = 0.0
    pca_examples: int = 256
    collapse: str = "retain"  # whose common directions: retain, or forget (the authors')

    def __post_init__(self) -> None:
        if self.collapse not in ("forget", "retain"):
            raise ConfigError(f"cir collapse {self.collapse!r}: forget or retain")
        if min(self.act_components, self.grad_components) < 0 or self.alpha < 0:
            raise ConfigError("act_components, grad_components and alpha must be >= 0")
        if self.pca_examples < 1:
            raise ConfigError("pca_examples must be >= 1")


def resolve_layers(model, config: CIRConfig) -> range:
    depth = num_layers(model)
    if config.layers is None:
        low, high = round(depth * 3 / 8), max(round(depth * 3 / 8), round(depth * 3 / 4) - 1)
    else:
        try:
            low, high = (int(part) for part in config.layers.split("-"))
        except ValueError:
            raise ConfigError(f"cir layers {config.layers!r}: write LO-HI, e.g. 11-21") from None
    if not 0 <= low <= high < depth:
        raise ConfigError(f"cir layers {low}-{high} are outside the model's 0..{depth - 1}")
    return range(low, high + 1)


def mlp_of(model, layer: int) -> torch.nn.Module:
    """The MLP module of block ``layer``: the parent of its output projection in the family's
    layout (``mlp.down_proj`` -> ``mlp``)."""
    parent, _, _ = layout(model).mlp_out.rpartition(".")
    if not parent:  # OPT: fc1 and fc2 sit in the block itself, with nothing that is the MLP
        raise ConfigError("cir needs each block's MLP as one module; this model family has none")
    return get_module(decoder_layers(model)[layer], parent)


def trained_linears(model, top: int) -> dict[str, torch.nn.Linear]:
    """Every linear layer inside the MLPs of blocks 0..top, by name."""
    found = {}
    for layer in range(top + 1):
        for name, module in mlp_of(model, layer).named_modules():
            if isinstance(module, torch.nn.Linear):
                found[f"{layer}.{name}"] = module
    return found


def collapse_basis(rows: torch.Tensor, components: int) -> torch.Tensor:
    """An orthonormal basis (k, d) of the mean of ``rows`` and their top principal directions."""
    rows = rows.float()
    mean = rows.mean(dim=0, keepdim=True)
    parts = [mean]
    count = min(components, rows.shape[0] - 1, rows.shape[1] - 1)
    if count > 0:
        _, _, directions = torch.pca_lowrank(rows - mean, q=count, center=False, niter=8)
        parts.append(directions.T)
    basis, _ = torch.linalg.qr(torch.cat(parts).T)  # (d, k), orthonormal columns
    return basis.T.contiguous()


def collapsed(delta: torch.Tensor, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """(I - G^T G) delta (I - A^T A) for orthonormal rows A (in) and G (out), in low rank."""
    delta = delta - (delta @ acts.T) @ acts
    return delta - grads.T @ (grads @ delta)


def effective_weight(ctx, name: str, weight: torch.Tensor) -> torch.Tensor:
    """W0 + collapse(W - W0): the weight the trained linear ``name`` acts with."""
    acts, grads = ctx.state["bases"][name]
    origin = ctx.state["origin"][name]
    return origin + collapsed(weight - origin, acts, grads)


def forget_loss(ctx, outputs: dict[int, torch.Tensor], batch) -> torch.Tensor:
    mask = batch["attention_mask"].bool().clone()
    mask[:, : ctx.state["shared"]] = False
    original = ctx.state["original"]
    rows = batch["index"].tolist()
    terms = []
    for layer, out in outputs.items():
        org = padded({i: original[i][layer] for i in rows}, rows, out.shape[1]).to(out.device)
        dot = (out * org).sum(-1) / ctx.state["norm2"][layer]
        terms.append(dot.clamp(min=ctx.config.floor)[mask].mean())
    return torch.stack(terms).mean()


def _capture(model, layers):
    outputs: dict[int, torch.Tensor] = {}

    def keep(layer):
        def hook(_module, _inputs, output):
            outputs[layer] = output

        return hook

    handles = [mlp_of(model, layer).register_forward_hook(keep(layer)) for layer in layers]
    return outputs, handles


@torch.no_grad()
def _original_outputs(ctx, layers) -> dict[int, dict[int, torch.Tensor]]:
    model = ctx.unwrapped
    cached: dict[int, dict[int, torch.Tensor]] = {}
    outputs, handles = _capture(model, layers)
    try:
        for start in range(0, len(ctx.forget), 32):
            chunk = ctx.forget[start : start + 32]
            batch = ctx.to_device(collate(chunk, ctx.pad_id))
            run_until(model, layers[-1], input_ids=batch["input_ids"],
                      attention_mask=batch["attention_mask"])  # fmt: skip
            for row, example in enumerate(chunk):
                size = len(example.input_ids)
                cached[example.index] = {
                    layer: outputs[layer][row, :size].detach().clone() for layer in layers
                }
    finally:
        for handle in handles:
            handle.remove()
    return cached


def _bases(ctx, linears, layers, examples) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each trained linear's (activation basis, gradient basis) on ``examples`` from the forget
    loss's forward and backward on the original model (there the loss's gradient at each MLP
    output is the output itself over its layer's mean squared norm, for any prompt)."""
    model, config = ctx.unwrapped, ctx.config
    acts: dict[str, list[torch.Tensor]] = {name: [] for name in linears}
    grads: dict[str, list[torch.Tensor]] = {name: [] for name in linears}
    current: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(_module, inputs, output):
            mask = current["mask"]
            acts[name].append(inputs[0].detach()[mask].float().cpu())
            output.register_hook(lambda grad: grads[name].append(grad[mask].float().cpu()))

        return hook

    handles = [module.register_forward_hook(keep(name)) for name, module in linears.items()]
    outputs, capture = _capture(model, layers)
    try:
        for start in range(0, len(examples), 32):
            batch = ctx.to_device(collate(examples[start : start + 32], ctx.pad_id))
            mask = batch["attention_mask"].bool().clone()
            mask[:, : ctx.state["shared"]] = False
            current["mask"] = mask
            with torch.enable_grad():
                run_until(model, layers[-1], input_ids=batch["input_ids"],
                          attention_mask=batch["attention_mask"])  # fmt: skip
                dots = [
                    ((out * out.detach()).sum(-1) / ctx.state["norm2"][layer])[mask].mean()
                    for layer, out in outputs.items()
                ]
                torch.stack(dots).mean().backward()
    finally:
        for handle in [*handles, *capture]:
            handle.remove()
        model.zero_grad(set_to_none=True)  # these backwards only measured; the loop steps later
    device = ctx.accelerator.device
    return {
        name: (
            collapse_basis(torch.cat(acts[name]), config.act_components).to(device),
            collapse_basis(torch.cat(grads[name]), config.grad_components).to(device),
        )
        for name in linears
    }


def _project_in_forward(ctx, linears) -> list:
    """Forward hooks that give each trained linear's output under W0 + collapse(W - W0)."""

    def make(name):
        def hook(module, inputs, _output):
            weight = effective_weight(ctx, name, module.weight)
            return torch.nn.functional.linear(inputs[0], weight, module.bias)

        return hook

    return [module.register_forward_hook(make(name)) for name, module in linears.items()]


def check_supported(model) -> None:
    """Refuse, right after loading, a model cir cannot train: normalised MLP writes (below), no
    MLP module (OPT), or MLPs without ``nn.Linear`` layers (GPT-2's Conv1D)."""
    refuse_normalised_writes(model)
    if not trained_linears(model, 0):
        raise ConfigError("cir trains the MLPs' nn.Linear layers; this model's MLPs have none")


def refuse_normalised_writes(model) -> None:
    """cir is not validated where each block normalises its MLP's write (Gemma 2/3, OLMo 2):
    on gemma3-270m (chem-symbols, 100 SGD steps, quick sample, 2026-12-07) its default lr broke
    the model (perplexity 16.97 -> 4e11 at 0.5 (30 steps), 7e5 at 0.1, 2981 at 0.02; retain 0.000) and at
    0.002 it forgot only to 0.188 (retain 0.938, perplexity 17.27): there breaking an MLP's
    output cannot shrink its write, only turn it, and the gradients, scaled by Gemma's ~20x
    larger activations, are clipped to full-length steps. Not tuned there yet."""
    if normalised_writes(model):
        raise ConfigError(
            "cir does not work yet on models that normalise each MLP's write (Gemma 2/3, "
            "OLMo 2): on gemma3-270m its default lr broke the model and 1/250 of it forgot "
            "only 81%; use rmu or npo"
        )


def prepare(ctx) -> None:
    model, config = ctx.unwrapped, ctx.config
    check_supported(model)
    layers = resolve_layers(model, config)
    for param in model.parameters():
        param.requires_grad_(False)
    linears = trained_linears(model, layers[-1])
    for module in linears.values():
        for param in module.parameters():
            param.requires_grad_(True)
    sequences = [e.input_ids for e in (*ctx.forget, *ctx.retain)]
    ctx.state["shared"] = shared_prefix(sequences, set(ctx.tokenizer.all_special_ids))
    ctx.state["layers"] = list(layers)
    original = _original_outputs(ctx, list(layers))
    ctx.state["original"] = original
    skip = ctx.state["shared"]
    ctx.state["norm2"] = {
        layer: float(
            torch.cat([out[layer][skip:] for out in original.values()]).norm(dim=-1).pow(2).mean()
        )
        for layer in layers
    }
    ctx.state["retain_frozen"] = (
        cache_states(ctx, ctx.retain, layers[-1]) if config.alpha > 0 else {}
    )
    source = ctx.forget if config.collapse == "forget" else ctx.retain
    ctx.state["bases"] = _bases(ctx, linears, list(layers), source[: config.pca_examples])
    ctx.state["origin"] = {name: m.weight.detach().clone() for name, m in linears.items()}
    ctx.state["linears"] = linears
    ctx.state["hooks"] = _project_in_forward(ctx, linears)


def loss(ctx, batch):
    layers = ctx.state["layers"]
    outputs, handles = _capture(ctx.unwrapped, layers)
    forget = batch["forget"]
    try:
        run_until(ctx.model, layers[-1], input_ids=forget["input_ids"],
                  attention_mask=forget["attention_mask"])  # fmt: skip
        total = forget_loss(ctx, outputs, forget)
    finally:
        for handle in handles:
            handle.remove()
    terms = {"forget_dot": float(total.detach())}
    if ctx.config.alpha > 0:
        total = ctx.release(total)
        retain = batch["retain"]
        hidden = hidden_at(ctx.model, layers[-1], retain)
        frozen = padded(ctx.state["retain_frozen"], retain["index"].tolist(), hidden.shape[1])
        retain_loss = masked_mse(hidden, frozen, retain["attention_mask"])
        total = total + ctx.config.alpha * retain_loss
        terms["retain_mse"] = float(retain_loss.detach())
    return total, terms


@torch.no_grad()
def finish(ctx) -> None:
    """Write the collapsed change into each trained weight and remove the hooks."""
    for handle in ctx.state.pop("hooks", []):
        handle.remove()
    for name, module in ctx.state["linears"].items():
        module.weight.copy_(effective_weight(ctx, name, module.weight))


SPEC = register(
    MethodSpec(
        "cir",
        "MLP breaking on forget tokens, the change kept out of the directions forget and general "
        "text share (mean + principal components of activations and gradients)",
        CIRConfig,
        prepare,
        loss,
        # plain SGD as the authors step it (AdamW's per-weight scaling would blow the tiny
        # collapsed gradients up to full-size steps)
        train_defaults={"steps": 100, "lr": 0.5, "optimizer": "sgd"},
        lr_from_weights=False,
        finish=finish,
        shardable=False,
        takes_lora=False,
        check_model=check_supported,
    )
)
