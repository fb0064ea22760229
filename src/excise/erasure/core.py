"""``erase``: bound a concept in closed form, as weights, with the measurements that back it. The
concept comes as a contrast set (:mod:`excise.activations.contrast`: positive and negative
prompts, a fit side and a held-out side)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from excise.activations.contrast import Item, contrast
from excise.errors import ConfigError


@dataclass
class ErasureResult:
    """What was done and what it measured; ``tensors`` hold the fitted directions/erasers."""

    method: str
    layer: int
    folded: bool  # True: the change is in the weights; False: see ``adapter``
    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    adapter: dict[str, Any] | None = None  # a runtime hook's settings, when not folded


def resolve_options(model, method: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` checked against ``model`` before any work: unknown options are refused, and
    where the method's default form folds into the weights but the model normalises each writer's
    output (Gemma 2/3, OLMo 2: not foldable), the runtime form is chosen. A folded form asked for
    by name on such a model is refused here, in one line, not after the statistics."""
    from excise.activations.fold import check_foldable, foldable
    from excise.arch import normalised_writes
    from excise.erasure import ERASERS

    config = ERASERS.config(method, options)
    form = getattr(config, "form", None)
    if form not in ("folded", "point") or foldable(model):
        return dict(options)
    chosen = "form" in options or form == "point" or getattr(config, "scale", 0) != 0
    if chosen or not normalised_writes(model):  # other families: no tested runtime default
        check_foldable(model)  # raises ModelError: cannot fold into this family
    return {**options, "form": "runtime"}


def check_layer(model, layer: int, *, low: int = 0) -> int:
    from excise.arch import num_layers

    depth = num_layers(model)
    if not low <= layer < depth:
        raise ConfigError(f"layer {layer} is outside the model's {low}..{depth - 1}")
    return layer


def erase(
    model,
    tokenizer,
    method: str,
    positive: Sequence[Item],
    negative: Sequence[Item],
    *,
    template: str = "raw",
    texts: Sequence[str] | None = None,
    scorer: Callable[[Any], float] | None = None,
    split_seed: int = 0,
    **options: Any,
) -> tuple[Any, ErasureResult]:
    """Bound the concept that separates ``positive`` from ``negative`` prompts in ``model``.

    ``method``: ``leace`` (least-squares concept erasure, folded into the weights), ``ablate``
    (project a difference-of-means direction out of every residual write; ``scale`` != 0 adds it
    instead) or ``clamp`` (hold the projection on that direction at a value, folded, or inside a
    range, as a runtime hook). ``texts``: prose for perplexity (default: the built-in fluency set).
    ``scorer(model) -> float``: a held-out score to maximise when choosing the layer (ablate,
    clamp); without it the layer is chosen by held-out separation. ``split_seed`` draws the fit
    and held-out halves of the items. Options are the fields of the
    method's config (:class:`~excise.erasure.concept.LeaceConfig`, ``AblateConfig``,
    ``ClampConfig``); unknown ones are refused. Where the default form cannot be folded into the
    model, the runtime form is used (:func:`resolve_options`). ``model`` is changed in place where
    possible; use the returned model.
    """
    from excise.erasure import ERASERS

    spec = ERASERS.get(method)
    options = resolve_options(model, method, options)
    config = ERASERS.config(method, options)
    if texts is None:
        from excise.data.tasks import load_task

        texts = [t.text for t in load_task("chem-symbols").fluency]
    data = contrast(positive, negative, seed=split_seed)
    return spec.run(
        model, tokenizer, data, config, template=template, texts=list(texts), scorer=scorer
    )
