"""Where each model family keeps its blocks. Architecture differences live here and nowhere else.

Every method that reaches inside a model (RMU's layer activations, later erasure and editing)
asks this module for module paths instead of branching on model classes.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from excise.errors import ModelError


@dataclass(frozen=True)
class Layout:
    """Dotted paths, relative to the causal-LM object, of the parts excise touches."""

    layers: str  # the list of decoder blocks
    mlp_out: str  # inside a block: the MLP's output projection (writes to the residual stream)
    mlp_in: str  # inside a block: the MLP's input projection(s) (first of them)
    attn_out: str  # inside a block: the attention output projection
    final_norm: str  # after the last block, before the unembedding


LAYOUTS: dict[str, Layout] = {
    # Llama, Mistral, Qwen2/3, Gemma 1-3, Phi-3, OLMo, SmolLM2 share the HF Llama module names.
    "llama": Layout(
        "model.layers", "mlp.down_proj", "mlp.up_proj", "self_attn.o_proj", "model.norm"
    ),
    "mistral": Layout(
        "model.layers", "mlp.down_proj", "mlp.up_proj", "self_attn.o_proj", "model.norm"
    ),
    "qwen2": Layout(
        "model.layers", "mlp.down_proj", "mlp.up_proj", "self_attn.o_proj", "model.norm"
    ),
    "qwen3": Layout(
        "model.layers", "mlp.down_proj", "mlp.up_proj", "self_attn.o_proj", "model.norm"
    ),
    "gemma": Layout(
        "model.layers", "mlp.down_proj", "mlp.up_proj", "self_attn.o_proj", "model.norm"
    ),
    "gemma2": Layout(
        "model.layers", "mlp.down_proj", "mlp.up_proj", "self_attn.o_proj", "model.norm"
    ),
    # Gemma 3 (Gemma3ForCausalLM, text only): the Llama module names, plus QK-norm, a norm after
    # each writer (post_attention_layernorm, post_feedforward_layernorm: not foldable, see
    # excise.activations.fold), token embeddings scaled by sqrt(hidden) inside embed_tokens, and
    # sliding-window layers between global ones (config.layer_types); none changes these paths.
    "gemma3_text": Layout(
        "model.layers", "mlp.down_proj", "mlp.up_proj", "self_attn.o_proj", "model.norm"
    ),
    "phi3": Layout(
        "model.layers", "mlp.down_proj", "mlp.gate_up_proj", "self_attn.o_proj", "model.norm"
    ),
    "olmo2": Layout(
        "model.layers", "mlp.down_proj", "mlp.up_proj", "self_attn.o_proj", "model.norm"
    ),
    "gpt2": Layout("transformer.h", "mlp.c_proj", "mlp.c_fc", "attn.c_proj", "transformer.ln_f"),
    "gpt_neox": Layout(
        "gpt_neox.layers",
        "mlp.dense_4h_to_h",
        "mlp.dense_h_to_4h",
        "attention.dense",
        "gpt_neox.final_layer_norm",
    ),
    "opt": Layout(
        "model.decoder.layers", "fc2", "fc1", "self_attn.out_proj", "model.decoder.final_layer_norm"
    ),
}


def layout(model: nn.Module) -> Layout:
    """The layout of ``model``'s family, or a clear error naming the supported families."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in LAYOUTS:
        raise ModelError(
            f"architecture {model_type!r} is not supported for this method; "
            f"supported: {', '.join(sorted(LAYOUTS))}"
        )
    return LAYOUTS[model_type]


def get_module(root: nn.Module, path: str) -> nn.Module:
    module = root
    for part in path.split("."):
        module = module[int(part)] if part.isdigit() else getattr(module, part)
    return module


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return get_module(model, layout(model).layers)


def normalised_writes(model: nn.Module) -> bool:
    """Whether each block normalises its MLP's output before the residual add (Gemma 2 and 3,
    OLMo 2: ``post_feedforward_layernorm``), which bounds what one MLP can write."""
    return write_norm(model, 0) is not None


def write_norm(model: nn.Module, layer: int) -> nn.Module | None:
    """The norm block ``layer`` applies to its MLP's output before adding it to the stream
    (Gemma 2/3, OLMo 2), or None where the output is added as it is."""
    return getattr(decoder_layers(model)[layer], "post_feedforward_layernorm", None)


def block_part(model: nn.Module, layer: int, part: str) -> nn.Module:
    """A named part (``mlp_out``, ``mlp_in``, ``attn_out``) of decoder block ``layer``."""
    return get_module(decoder_layers(model)[layer], getattr(layout(model), part))


def num_layers(model: nn.Module) -> int:
    return len(decoder_layers(model))


class _Stop(Exception):
    """Raised by a hook to end a forward pass early."""


def run_until(model: nn.Module, layer: int, **inputs) -> None:
    """Run ``model`` forward up to and including decoder block ``layer``; blocks above never run.

    For passes that only read activations at or below ``layer`` (hooks see them as usual).
    """

    def stop(_module, _inputs, _output):
        raise _Stop

    handle = decoder_layers(model)[layer].register_forward_hook(stop)
    try:
        model(**inputs, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()


def candidate_layers(depth: int, count: int, first: int = 0) -> list[int]:
    """``count`` layers spread evenly from ``first`` to 80% of the depth."""
    first = min(first, depth - 1)
    top = max(first, int(depth * 0.8) - 1)
    if count == 1:
        return [(first + top) // 2]
    return sorted({first + round((top - first) * i / (count - 1)) for i in range(count)})


# the median rms of SmolLM2-135M's weight matrices (embeddings aside), where the methods'
# learning rates were tuned
TUNED_WEIGHT_RMS = 0.1903


def weight_scale(model: nn.Module) -> float:
    """The median rms of ``model``'s weight matrices (embeddings aside) over SmolLM2-135M's.

    Adam moves every weight by about its learning rate whatever the gradient's size, so an lr
    tuned on one model is a relative step that much larger on a model with smaller weights:
    gemma-3-270m's matrices have rms 0.040 (0.21 of SmolLM2's), and npo at SmolLM2's lr took
    its perplexity 17.5 -> 118 and near-retain accuracy to 0.07; at 0.21x the lr, 20.4 (docs/results.md).
    """
    values = sorted(
        float(p.detach().float().pow(2).mean().sqrt())
        for name, p in model.named_parameters()
        if p.dim() == 2 and "embed" not in name and "lm_head" not in name
    )
    return values[len(values) // 2] / TUNED_WEIGHT_RMS if values else 1.0
