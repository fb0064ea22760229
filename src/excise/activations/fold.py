"""Fold an affine map of the residual stream into the weights that write to it.

In a pre-norm transformer the residual stream after block l is a plain sum of writes: the token
(and position) embeddings, then every attention output projection and every MLP output projection
up to l, each with its bias. Replacing every write w by M w, and adding a constant c once through
the token embeddings, makes the stream after *every* block equal to M y + c, where y is the plain
sum of the (new) writes. Nothing else in the model changes, so the result stays an ordinary
checkpoint. For an orthogonal projection M = I - R R^T the stream has no component along R at any
layer, exactly (up to float rounding).

What this cannot do: act on one layer only. Blocks read the stream through a (non-linear) norm,
so every block sees the changed stream, not just the layer an eraser was fitted on; see
:mod:`excise.erasure.leace` for what that costs and how it is measured.

Supported families are those whose blocks add writer outputs straight to the stream (no norm
after the writer): Llama, Mistral, Qwen2/3, Phi-3, Gemma, GPT-2, GPT-NeoX. Gemma2 and OLMo2
normalise each writer's output before adding it, so a linear map of the writer is not a linear map
of the stream; they are refused, like every family without a layout in :mod:`excise.arch` (the
erasers then take their runtime form: :func:`excise.erasure.core.resolve_options`).
Tied input/output embeddings are untied first (the unembedding keeps the original matrix).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from excise.arch import block_part, get_module, layout, num_layers
from excise.errors import ModelError

FOLDABLE = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gpt2", "gpt_neox")
# embeddings other than the token embeddings that are added to the stream at its start
EXTRA_EMBEDDINGS = {"gpt2": ("transformer.wpe",)}


def foldable(model: nn.Module) -> bool:
    """Whether a map of the residual stream can be folded into this model's writers."""
    return model.config.model_type in FOLDABLE


def check_foldable(model: nn.Module) -> None:
    layout(model)  # a clear error for families excise has no layout for
    model_type = model.config.model_type
    if not foldable(model):
        raise ModelError(
            f"cannot fold into {model_type!r}: its blocks normalise writer outputs before adding "
            f"them to the residual stream; foldable: {', '.join(FOLDABLE)}"
        )


def embed_scale(model: nn.Module) -> float:
    """The factor the model multiplies token embeddings by before the first block (Gemma: sqrt d)."""
    if model.config.model_type == "gemma":
        return float(model.config.hidden_size) ** 0.5
    return 1.0


def residual_writers(model: nn.Module, last: int | None = None) -> list[nn.Module]:
    """Every attention-output and MLP-output projection of blocks 0..``last`` (None: all)."""
    stop = num_layers(model) if last is None else last + 1
    return [
        block_part(model, layer, part) for layer in range(stop) for part in ("attn_out", "mlp_out")
    ]


def untie_embeddings(model: nn.Module) -> bool:
    """Give the unembedding its own copy of a tied embedding matrix; True if it was tied."""
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    if outputs is None or outputs.weight.data_ptr() != inputs.weight.data_ptr():
        return False
    outputs.weight = nn.Parameter(inputs.weight.detach().clone())
    for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        config.tie_word_embeddings = False
    return True


def _apply(weight: torch.Tensor, matrix: torch.Tensor, *, rows: bool) -> torch.Tensor:
    """``matrix`` applied to the hidden-size vectors of ``weight``: its rows or its columns."""
    work = weight.detach().to(torch.float64).cpu()
    return work @ matrix.T if rows else matrix @ work  # float64; copy_ casts back


@torch.no_grad()
def fold_affine(
    model: nn.Module,
    matrix: torch.Tensor,
    shift: torch.Tensor | None = None,
    *,
    last: int | None = None,
) -> None:
    """Replace every residual write w by ``matrix @ w``; add ``shift`` once, via the embeddings.

    ``matrix`` is (hidden, hidden), ``shift`` (hidden,) or None. With ``last`` only the writes
    up to block ``last`` change: the stream after that block is still ``matrix @ y + shift``,
    later blocks add to it unchanged. Changes ``model`` in place.
    """
    check_foldable(model)
    hidden = model.config.hidden_size
    if matrix.shape != (hidden, hidden) or (shift is not None and shift.shape != (hidden,)):
        raise ModelError(f"fold needs a ({hidden}, {hidden}) matrix and a ({hidden},) shift")
    untie_embeddings(model)
    matrix = matrix.detach().to(torch.float64).cpu()
    tokens = model.get_input_embeddings()
    new_rows = _apply(tokens.weight, matrix, rows=True)
    if shift is not None:
        new_rows += shift.detach().to(torch.float64).cpu() / embed_scale(model)
    tokens.weight.copy_(new_rows)
    for path in EXTRA_EMBEDDINGS.get(model.config.model_type, ()):
        extra = get_module(model, path)
        extra.weight.copy_(_apply(extra.weight, matrix, rows=True))
    for writer in residual_writers(model, last):
        # Linear keeps (out, in), GPT-2's Conv1D (in, out): the hidden side is out in both
        writer.weight.copy_(_apply(writer.weight, matrix, rows=isinstance(writer, Conv1D)))
        if writer.bias is not None:
            writer.bias.copy_(_apply(writer.bias[:, None], matrix, rows=False)[:, 0])


@torch.no_grad()
def add_to_stream(model: nn.Module, layer: int, vector: torch.Tensor) -> nn.Module:
    """Add ``vector`` to the residual stream at every position from block ``layer`` on.

    ``layer`` -1 adds it to every token embedding (before block 0); otherwise it becomes (part
    of) the bias of that block's MLP output projection. Llama-style MLPs without biases get them
    through ``config.mlp_bias`` (a rebuilt model, new biases zero but this one); families with
    neither raise. Returns the changed model (a new object when it had to be rebuilt).
    """
    check_foldable(model)
    if not -1 <= layer < num_layers(model):
        raise ModelError(f"layer {layer} is outside -1..{num_layers(model) - 1}")
    if layer == -1:
        untie_embeddings(model)
        tokens = model.get_input_embeddings()
        tokens.weight += (vector / embed_scale(model)).to(tokens.weight)
        return model
    writer = block_part(model, layer, "mlp_out")
    if writer.bias is None:
        model = _with_mlp_biases(model)
        writer = block_part(model, layer, "mlp_out")
    writer.bias += vector.to(writer.bias)
    return model


def _with_mlp_biases(model: nn.Module) -> nn.Module:
    from transformers import AutoModelForCausalLM

    if not hasattr(model.config, "mlp_bias"):
        raise ModelError(
            f"{model.config.model_type} has no MLP output bias to add a direction to; "
            "use layer -1 (the token embeddings) instead"
        )
    tied = model.config.tie_word_embeddings
    config = model.config.__class__.from_dict({**model.config.to_dict(), "mlp_bias": True})
    rebuilt = AutoModelForCausalLM.from_config(config, dtype=next(model.parameters()).dtype)
    missing, unexpected = rebuilt.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not name.endswith(".bias") for name in missing):
        raise ModelError("could not add MLP biases to this model (unexpected weight names)")
    for name, param in rebuilt.named_parameters():
        if name in missing:
            param.zero_()
    if tied:
        rebuilt.tie_weights()
    return rebuilt.to(next(model.parameters()).device).eval()
