"""``ablate``: directional ablation by weight orthogonalization, and its inverse (adding a direction).

Arditi et al. 2024, "Refusal in language models is mediated by a single direction". At each
candidate layer l the direction is the difference of the mean residual states of positive and
negative fit-side prompts, r_l = (mu+ - mu-) / ||mu+ - mu-||, made orthogonal to the attention-sink
subspace (:func:`excise.activations.states.sink_subspace`; without that, removing the chem-symbols
direction everywhere took SmolLM2-135M's perplexity from 23 to ~1200). The layer is chosen by a
held-out score: ``scorer(model, held_out_positive_items)`` under runtime ablation when given
(e.g. retain minus forget accuracy on held-out items), else the held-out separation (AUC) of the
projection on r_l, among candidates whose ablation raises perplexity by at most
``max_perplexity_rise``. Then W <- (I - r r^T) W for every residual writer (embeddings,
attention and MLP outputs, biases), so the stream has no component along r at any layer.

``form="runtime"`` removes linear access at every layer instead of one direction everywhere: each
block in ``layers`` (default: all) gets its own difference-of-means direction, fitted on that
block's output once the earlier blocks' directions are projected out (concept scrubbing, in one
pass: :mod:`excise.erasure.scrub`), and projected out of that block's output at every position by
a runtime hook (the weights are unchanged; ``EXCISE_HOOKS.md`` in the output). The projection is
orthogonal except along the protected sink directions (``fit_leace(method="orth", protect=)``), so
the class means become equal at every hooked block. Why: one direction folded into the weights
leaves a concept carried by many directions readable (bias, ablate at block 22: relative
projection 0.14 -> 0, yet a fresh probe still reads gender at 0.999); iterating the folded form
(re-fitting at blocks 7 and 29 after each fold, 2 directions a round) did not shrink block 7's
class gap (0.035 -> 0.027 -> 0.034) while perplexity rose 24 -> 72 in 3 rounds.

``scale`` != 0 does the opposite: scale * (mu+ - mu-) at the chosen layer is added to the stream
from that block on (as its MLP output bias; see :func:`excise.activations.fold.add_to_stream`), to
strengthen the positive behaviour (e.g. refusal, with harmful prompts as positives).

Hyper-parameters: ``layer`` (None: chosen), ``candidates`` (6 layers spread over the first 80%
of the depth, as Arditi et al. skip the last 20%), ``positions`` ("all"), ``protect_sink`` (4),
``scale`` (0.0), ``max_perplexity_rise`` (0.5, relative), ``form`` ("folded"), ``layers`` (None:
every block; runtime form only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from excise.activations.contrast import Contrast
from excise.activations.fold import add_to_stream, check_foldable, fold_affine
from excise.activations.prompts import direction_ablated
from excise.activations.states import block_states, residual_states, sink_subspace
from excise.arch import candidate_layers, num_layers
from excise.erasure import ERASERS, EraserSpec
from excise.erasure.core import ErasureResult, check_layer
from excise.errors import ConfigError
from excise.metrics import perplexity
from excise.metrics.quality import auc

Scorer = Callable[[object, list[int]], float]


@dataclass
class AblateConfig:
    layer: int | None = None
    candidates: int = 6
    positions: Literal["all", "last"] = "all"
    protect_sink: int = 4
    scale: float = 0.0
    max_perplexity_rise: float = 0.5
    form: Literal["folded", "runtime"] = "folded"
    layers: list[int] | None = None

    def __post_init__(self) -> None:
        if self.candidates < 1 or self.protect_sink < 0 or self.max_perplexity_rise <= 0:
            raise ConfigError("candidates >= 1, protect_sink >= 0, max_perplexity_rise > 0")
        if self.positions not in ("all", "last"):
            raise ConfigError("positions must be all or last")
        if self.form not in ("folded", "runtime"):
            raise ConfigError("ablate form must be folded or runtime")
        if self.form == "runtime" and self.scale != 0:
            raise ConfigError("ablate scale (adding a direction) is folded only; drop form=runtime")
        if self.layers is not None and (
            not isinstance(self.layers, list)
            or not self.layers
            or not all(isinstance(v, int) for v in self.layers)
        ):
            raise ConfigError(
                "ablate layers must be a non-empty list of block indices, e.g. [7, 29]"
            )
        if self.layers is not None and self.form != "runtime":
            raise ConfigError("ablate layers is for form=runtime; the folded form takes layer")


def directions(model, tokenizer, data: Contrast, layers: list[int], config, template: str):
    """{layer: (unit direction, difference of means, held-out AUC)} from the fit side."""
    found = residual_states(
        model, tokenizer, data.prompts, layers, template=template, positions=config.positions
    )
    labels, fit = data.label[found.prompt], data.fit[found.prompt]
    protect = None
    if config.protect_sink:
        protect = sink_subspace(
            model, tokenizer, data.prompts, template=template, size=config.protect_sink
        )
    out = {}
    for layer in layers:
        x = found.by_layer[layer]
        difference = x[fit & (labels == 1)].mean(0) - x[fit & (labels == 0)].mean(0)
        unit = difference if protect is None else difference - protect @ (protect.T @ difference)
        unit = unit / unit.norm().clamp(min=1e-12)
        held = x[~fit] @ unit
        out[layer] = (unit, difference, auc(held[labels[~fit] == 1], held[labels[~fit] == 0]))
    return out


def choose(model, tokenizer, data, found, config, texts, scorer: Scorer | None):
    """(layer, rows): the best candidate by held-out score, and every candidate's figures."""
    base = perplexity(model, tokenizer, texts[:16])
    rows = []
    for layer, (unit, _, separation) in found.items():
        with direction_ablated(model, unit):
            ratio = perplexity(model, tokenizer, texts[:16]) / base
            score = scorer(model, data.held_out(1)) if scorer is not None else separation
        rows.append({"layer": layer, "score": score, "auc": separation, "perplexity_ratio": ratio})
    allowed = [r for r in rows if r["perplexity_ratio"] <= 1 + config.max_perplexity_rise]
    return max(allowed or rows, key=lambda r: r["score"])["layer"], rows


@torch.no_grad()
def relative_projection(model, tokenizer, prompts: list[str], unit: torch.Tensor, template: str):
    """Per layer (-1: embeddings, then every block), the largest |h . r| / ||h|| over all tokens."""
    from excise.data.encode import prompt_ids

    layers = list(range(-1, num_layers(model)))
    worst = torch.zeros(len(layers), dtype=torch.float64)
    device = next(model.parameters()).device
    for prompt in prompts:
        ids = torch.tensor([prompt_ids(tokenizer, prompt, template)], device=device)
        states = block_states(
            model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, layers
        )
        for index, layer in enumerate(layers):
            h = states[layer][0].double().cpu()
            ratio = (h @ unit.double()).abs() / h.norm(dim=-1).clamp(min=1e-12)
            worst[index] = max(worst[index], ratio.max())
    return dict(zip(layers, worst.tolist(), strict=True))


def run(model, tokenizer, data: Contrast, config: AblateConfig, *, template, texts, scorer=None):
    if config.form == "runtime":
        return run_runtime(model, tokenizer, data, config, template=template, texts=texts)
    check_foldable(model)
    depth = num_layers(model)
    layers = (
        [check_layer(model, config.layer)]
        if config.layer is not None
        else candidate_layers(depth, config.candidates)
    )
    found = directions(model, tokenizer, data, layers, config, template)
    layer, rows = (
        (layers[0], [])
        if len(layers) == 1
        else choose(model, tokenizer, data, found, config, texts, scorer)
    )
    unit, difference, separation = found[layer]
    held_prompts = data.side(False)[:: max(1, len(data.side(False)) // 48)]
    metrics = {"held_out_auc": separation, "perplexity_before": perplexity(model, tokenizer, texts)}
    before = relative_projection(model, tokenizer, held_prompts, unit, template)
    if config.scale == 0:
        fold_affine(model, torch.eye(unit.numel()) - torch.outer(unit, unit))
        note = f"direction from block {layer} projected out of every residual writer"
    else:
        model = add_to_stream(model, layer, config.scale * difference)
        note = f"{config.scale} x difference of means added to the stream from block {layer} on"
    after = relative_projection(model, tokenizer, held_prompts, unit, template)
    metrics["relative_projection_before"] = max(before.values())
    metrics["relative_projection_after"] = max(after.values())
    metrics["perplexity_after"] = perplexity(model, tokenizer, texts)
    details = {
        "layer": layer,
        "candidates": rows,
        "projection_by_layer": {"before": before, "after": after},
    }
    tensors = {"direction": unit, "difference": difference}
    return model, ErasureResult("ablate", layer, True, metrics, details, tensors, [note])


def probe_layers(layers: list[int], count: int = 8) -> list[int]:
    """The scrubbed blocks a held-out probe checks: all of them, or ``count`` spread from the
    first to the last."""
    if len(layers) <= count:
        return layers
    return sorted({layers[round((len(layers) - 1) * i / (count - 1))] for i in range(count)})


def run_runtime(model, tokenizer, data: Contrast, config: AblateConfig, *, template, texts):
    """Each block in ``config.layers`` (None: all) gets its own direction, fitted in order and
    projected out of its output by a runtime hook; probes before and after at up to 8 of them."""
    from excise.erasure.adapter import register
    from excise.erasure.concept import class_gap, held_out_probe
    from excise.erasure.leace import fit_leace
    from excise.erasure.scrub import fit_per_block

    depth = num_layers(model)
    wanted = sorted({check_layer(model, v) for v in (config.layers or range(depth))})
    protect = None
    if config.protect_sink:
        protect = sink_subspace(
            model, tokenizer, data.prompts, template=template, size=config.protect_sink
        )
    erasers = fit_per_block(
        model, tokenizer, data.prompts, data.label, data.fit, wanted,
        lambda rows, labels: fit_leace(rows, labels, method="orth", protect=protect),
        template=template, positions=config.positions,
    )  # fmt: skip
    hooks = [{"name": f"ablate{layer}", "kind": "affine", "layer": layer} for layer in wanted]
    tensors = {}
    for layer, eraser in erasers.items():
        tensors[f"ablate{layer}.left"] = eraser.proj_left
        tensors[f"ablate{layer}.right"] = eraser.proj_right
        tensors[f"ablate{layer}.mean"] = eraser.mean
    checked = probe_layers(wanted)

    def measure(tag: str) -> dict[str, float]:
        found = residual_states(
            model, tokenizer, data.prompts, checked, template=template, positions=config.positions
        )
        labels, groups, held = (t[found.prompt] for t in (data.label, data.group, ~data.fit))
        out = {}
        for layer in checked:
            x = found.by_layer[layer][held]
            probe = held_out_probe(x, labels[held], groups[held])
            out[f"probe_{tag}_block{layer}"] = probe.accuracy
            out[f"probe_{tag}_block{layer}_ci95"] = probe.ci95
            out[f"class_gap_{tag}_block{layer}"] = class_gap(x, labels[held])
            out["chance"] = probe.chance
        return out

    metrics = measure("before")
    metrics["perplexity_before"] = perplexity(model, tokenizer, texts)
    handles = [h for hook in hooks for h in register(model, hook, tensors)]
    try:
        metrics.update(measure("after"))
        metrics["perplexity_after"] = perplexity(model, tokenizer, texts)
    finally:
        for handle in handles:
            handle.remove()
    metrics["probe_after_max"] = max(metrics[f"probe_after_block{layer}"] for layer in checked)
    details = {"layers": wanted, "probed": checked, "rows": {"fit": int(data.fit.sum())}}
    note = (
        f"a difference-of-means direction per block ({len(wanted)} blocks, {wanted[0]}..{wanted[-1]}),"
        " each fitted on the stream the earlier projections leave and projected out of that "
        "block's output by a runtime hook (weights unchanged; see EXCISE_HOOKS.md)"
    )
    return model, ErasureResult(
        "ablate", wanted[-1], False, metrics, details, tensors, [note], {"hooks": hooks}
    )


SPEC = ERASERS.register(
    EraserSpec(
        "ablate",
        "directional ablation by weight orthogonalization (Arditi et al. 2024)",
        AblateConfig,
        run,
    )
)
