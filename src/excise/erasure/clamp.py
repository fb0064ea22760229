"""``clamp``: hold the residual stream's projection on a feature direction at a value or in a range.

The direction is found and its layer L chosen as for :mod:`excise.erasure.ablate` (difference of
means, held-out score). Two forms:
- ``point`` (default, folded, exact): x -> x - (r.x - c) r = (I - r r^T) x + c r. The projection
  I - r r^T is folded into every residual writer and c r is added as the bias of block L's MLP
  output, so r.h = 0 for the stream below block L and r.h = c from block L on, exactly, in a plain
  checkpoint. c defaults to the mean projection of the negative fit-side prompts at L (where the
  stream sits when the concept is absent); ``value`` sets it.
- ``range`` (runtime): r.h is clipped into [low, high] after every block from L on. Clipping is
  not linear, so it cannot be folded into weights exactly; it is saved as a small hook file beside
  the unchanged weights (:mod:`excise.erasure.adapter` says how to attach it). The bounds default
  to the ``quantiles`` (1%, 99%) of the negative fit-side projections at L; ``low``/``high`` set
  them.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import Literal

import torch

from excise.activations.contrast import Contrast
from excise.activations.fold import add_to_stream, check_foldable, fold_affine
from excise.activations.prompts import hooked
from excise.activations.states import residual_states
from excise.arch import candidate_layers, decoder_layers, num_layers
from excise.erasure import ERASERS, EraserSpec
from excise.erasure.ablate import AblateConfig, choose, directions
from excise.erasure.adapter import clamp_change
from excise.erasure.core import ErasureResult, check_layer
from excise.errors import ConfigError
from excise.metrics import perplexity


@dataclass
class ClampConfig:
    layer: int | None = None
    form: Literal["point", "range"] = "point"
    value: float | None = None
    low: float | None = None
    high: float | None = None
    quantiles: tuple[float, float] = (0.01, 0.99)
    candidates: int = 6
    positions: Literal["all", "last"] = "all"
    protect_sink: int = 4
    max_perplexity_rise: float = 0.5

    def __post_init__(self) -> None:
        if self.form not in ("point", "range"):
            raise ConfigError("clamp form must be point or range")
        low, high = self.quantiles
        if not 0 <= low <= high <= 1:
            raise ConfigError("clamp quantiles must satisfy 0 <= low <= high <= 1")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ConfigError("clamp low must be <= high")
        AblateConfig(
            None, self.candidates, self.positions, self.protect_sink, 0.0, self.max_perplexity_rise
        )


def projections(model, tokenizer, prompts: list[str], layers: list[int], unit, template: str):
    """{layer: (rows,) projections of the stream on ``unit``} at every prompt token but the first."""
    found = residual_states(model, tokenizer, prompts, layers, template=template)
    return {layer: found.by_layer[layer] @ unit for layer in layers}


def run(model, tokenizer, data: Contrast, config: ClampConfig, *, template, texts, scorer=None):
    if config.form == "point":
        check_foldable(model)
    settings = AblateConfig(
        config.layer,
        config.candidates,
        config.positions,
        config.protect_sink,
        0.0,
        config.max_perplexity_rise,
    )
    depth = num_layers(model)
    layers = (
        [check_layer(model, config.layer)]
        if config.layer is not None
        else candidate_layers(depth, config.candidates)
    )
    found = directions(model, tokenizer, data, layers, settings, template)
    layer, rows = (
        (layers[0], [])
        if len(layers) == 1
        else choose(model, tokenizer, data, found, settings, texts, scorer)
    )
    unit = found[layer][0]
    negatives = projections(model, tokenizer, data.side(True, 0), [layer], unit, template)[layer]
    held = data.side(False)
    watched = sorted({layer, (layer + depth - 1) // 2, depth - 1})
    before = projections(model, tokenizer, held, watched, unit, template)
    metrics = {"perplexity_before": perplexity(model, tokenizer, texts)}
    tensors = {"direction": unit}
    adapter = None
    if config.form == "point":
        value = float(negatives.mean()) if config.value is None else config.value
        fold_affine(model, torch.eye(unit.numel()) - torch.outer(unit, unit))
        model = add_to_stream(model, layer, value * unit)
        low = high = value
        after = projections(model, tokenizer, held, watched, unit, template)
        metrics["perplexity_after"] = perplexity(model, tokenizer, texts)
        note = f"projection on the block-{layer} direction held at {value:.4g} from block {layer} on (0 below), folded"
    else:
        q = torch.tensor(config.quantiles, dtype=negatives.dtype)
        low_q, high_q = torch.quantile(negatives, q).tolist()
        low = low_q if config.low is None else config.low
        high = high_q if config.high is None else config.high
        tensors.update(
            {
                "clamp.directions": unit[None],
                "clamp.low": torch.tensor([low]),
                "clamp.high": torch.tensor([high]),
            }
        )
        adapter = {"hooks": [{"name": "clamp", "kind": "clamp", "layer": layer}]}
        change = clamp_change(unit[None], torch.tensor([low]), torch.tensor([high]))
        with ExitStack() as stack:
            for block in decoder_layers(model)[layer:]:
                stack.enter_context(hooked(block, change))
            after = projections(model, tokenizer, held, watched, unit, template)
            metrics["perplexity_after"] = perplexity(model, tokenizer, texts)
        note = f"projection on the block-{layer} direction clipped to [{low:.4g}, {high:.4g}] after blocks {layer}.. (runtime hook)"
    metrics["low"], metrics["high"] = low, high
    tolerance = 1e-4 * max(1.0, abs(low), abs(high))
    inside = torch.cat([(p >= low - tolerance) & (p <= high + tolerance) for p in after.values()])
    metrics["inside_share_before"] = float(
        torch.cat([(p >= low) & (p <= high) for p in before.values()]).float().mean()
    )
    metrics["inside_share_after"] = float(inside.float().mean())
    metrics["max_excess_after"] = max(
        float(torch.clamp(torch.maximum(low - p, p - high), min=0).max()) for p in after.values()
    )
    details = {"layer": layer, "candidates": rows, "watched_layers": watched}
    return model, ErasureResult(
        "clamp", layer, config.form == "point", metrics, details, tensors, [note], adapter
    )


SPEC = ERASERS.register(
    EraserSpec(
        "clamp",
        "hold the stream's projection on a feature direction at a value or in a range",
        ClampConfig,
        run,
    )
)
