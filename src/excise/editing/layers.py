"""Which layers an editor changes, by architecture family.

Published settings place factual-recall edits in the early-middle MLPs: ROME edits layer 17 of
48 in GPT-2 XL and 5 of 28 in GPT-J; MEMIT spreads edits over layers 13-17 of GPT-2 XL and 3-8 of
GPT-J; AlphaEdit uses 4-8 of 32 in Llama-3-8B. excise keeps those positions as fractions of depth
per family so they carry over to other sizes (see `excise edit --help` and bench/editing.py for
the layer sweep on the bundled model).
"""

from __future__ import annotations

from excise.arch import layout, num_layers
from excise.errors import ConfigError

# (first, last) MEMIT layer as a fraction of depth, and ROME's single layer
WINDOWS: dict[str, tuple[float, float, float]] = {
    "llama": (4 / 32, 8 / 32, 5 / 32),
    "mistral": (4 / 32, 8 / 32, 5 / 32),
    "qwen2": (4 / 28, 8 / 28, 5 / 28),
    "qwen3": (4 / 28, 8 / 28, 5 / 28),
    "gemma": (4 / 28, 8 / 28, 5 / 28),
    "gemma2": (4 / 26, 8 / 26, 5 / 26),
    # Gemma 3: Gemma 2's fractions (no published edit layers yet); 18 layers -> MEMIT 3-6, ROME 3
    "gemma3_text": (4 / 26, 8 / 26, 5 / 26),
    "phi3": (4 / 32, 8 / 32, 5 / 32),
    "olmo2": (4 / 32, 8 / 32, 5 / 32),
    "gpt2": (13 / 48, 17 / 48, 17 / 48),
    "gpt_neox": (3 / 28, 8 / 28, 5 / 28),
    "opt": (3 / 32, 8 / 32, 5 / 32),
}


def default_layers(model, count: int = 5) -> list[int]:
    """MEMIT/AlphaEdit layers: ``count`` consecutive blocks in the family's window."""
    family = layout(model) and model.config.model_type
    first, last, _ = WINDOWS.get(family, WINDOWS["llama"])
    depth = num_layers(model)
    lo = min(depth - 1, round(first * depth))
    hi = min(depth - 1, max(lo, round(last * depth)))
    span = list(range(lo, hi + 1))
    return span[-count:] if len(span) > count else span


def default_layer(model) -> int:
    """ROME / constrained fine-tuning: one block."""
    family = layout(model) and model.config.model_type
    _, _, single = WINDOWS.get(family, WINDOWS["llama"])
    return min(num_layers(model) - 1, round(single * num_layers(model)))


def check_layers(model, layers: list[int]) -> list[int]:
    depth = num_layers(model)
    if not layers:
        raise ConfigError("no layers to edit")
    bad = [layer for layer in layers if not 0 <= layer < depth]
    if bad:
        raise ConfigError(f"layer(s) {bad} out of range: the model has layers 0..{depth - 1}")
    return sorted(set(layers))
