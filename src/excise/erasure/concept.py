"""``leace`` on a model: fit LEACE on one layer's residual stream, fold it into weights, measure.

Exact form (``form="runtime"``): the eraser r(x) = P x + c of :mod:`excise.erasure.leace` on
block ``layer``'s output, as a hook saved beside the unchanged weights (:mod:`.adapter`).

Folded form (``form="folded"``, default): P is folded into the embeddings and every attention and
MLP output projection of blocks 0..``layer`` (:func:`excise.activations.fold.fold_affine`), so the
stream after block ``layer`` is P y, exactly; blocks above it are unchanged. Two things differ
from the runtime eraser. (1) The affine term c is dropped: folded through the embeddings it is
added at every layer, where the stream's scale is unlike block ``layer``'s (on SmolLM2-135M, c has
norm 8.6 at block 7, token embeddings ~2.6); without it the class means are still equal
(P Cov(x, z) = 0) but the stream's mean moves by c. (2) The blocks below ``layer`` read an erased
stream too, so the state y reaching ``layer`` is not the original x, and the moment condition,
exact for x, need not hold for y: the model can recompute the concept in other directions.
``refit`` rounds refit the eraser on the folded model's own states and fold again (one more
direction each). The report gives probe accuracy and perplexity for the original model, the
runtime eraser and the folded model, on held-out prompts: the approximation's cost, measured.

Attention sink: the first token's state carries outsized components the model relies on; the
eraser leaves the top ``protect_sink`` directions of those states unchanged (P v = v there).

Which projection. LEACE's oblique P is the least-change eraser for block ``layer``'s states, but
it reads the stream through the whitening of that layer's covariance; folded into the lower
blocks too it costs far more (SmolLM2-135M, block 7: perplexity 22.9 -> 40.8 folded vs 23.8 for
the orthogonal projection, with the same probe figures). So the folded form defaults to the
orthogonal projection ("orth": P = I - u u^T, u the class-mean difference, itself a concept
eraser: P Cov(x, z) = 0) and the runtime form to LEACE proper.

How it is judged. Items (a prompt with its paraphrases) are split at random between the fit side, where
the eraser is estimated, and the held-out side, where a fresh logistic probe is cross-fitted:
trained on half of the held-out items and tested on the other half, then the other way round
(``probe_X``, with ``probe_X_ci95`` a 95% interval clustered by item: rows of one item are not
independent). ``probe_X_fit_trained`` is a probe trained on the fit side's (erased) rows.

More than one direction: ``rounds`` k > 0 erases k logistic-probe directions before the LEACE
step (INLP, :mod:`excise.erasure.inlp`), an orthogonal projection of rank k + 1. LEACE makes the
class means equal on the rows it saw, so a probe trained on *those* rows is constant; a probe
trained on new items still finds the concept when it is carried by many token-identity
directions (a topic), which one mean difference from ~80 items per class cannot pin down.

Hyper-parameters: ``layer`` (None: a quarter of the depth), ``projection`` (None: see above),
``positions`` ("all" prompt tokens but the first, or "last"), ``protect_sink`` (4), ``refit``
(0), ``rounds`` (0), ``form`` ("folded"). The guarantee covers linear read-outs of the layer it
was fitted on (for the runtime form) on the rows it was fitted on; it says nothing about
fine-tuning, which can bring the concept back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from excise.activations.contrast import Contrast
from excise.activations.fold import check_foldable, fold_affine
from excise.activations.probe import alternate, fit_logistic, probe_accuracy
from excise.activations.prompts import hooked
from excise.activations.states import residual_states, sink_subspace
from excise.arch import decoder_layers, num_layers
from excise.erasure import ERASERS, EraserSpec
from excise.erasure.core import ErasureResult, check_layer
from excise.erasure.inlp import fit_inlp
from excise.erasure.leace import LeaceEraser, Method, fit_leace
from excise.errors import ConfigError
from excise.metrics import perplexity


@dataclass
class LeaceConfig:
    layer: int | None = None
    projection: Method | None = None  # None: "orth" folded, "leace" runtime
    positions: Literal["all", "last"] = "all"
    protect_sink: int = 4
    refit: int = 0
    rounds: int = 0
    form: Literal["folded", "runtime"] = "folded"

    def __post_init__(self) -> None:
        if self.projection not in (None, "leace", "orth") or self.positions not in ("all", "last"):
            raise ConfigError("leace projection must be leace or orth, positions all or last")
        if self.protect_sink < 0 or self.refit < 0 or self.rounds < 0:
            raise ConfigError("protect_sink, refit and rounds must be >= 0")
        if self.form not in ("folded", "runtime"):
            raise ConfigError("leace form must be folded or runtime")
        if self.projection is None:
            self.projection = "orth" if self.form == "folded" else "leace"


@dataclass(frozen=True)
class ProbeScore:
    accuracy: float  # pooled over both folds: every held-out row is tested once
    chance: float  # share of test rows in the majority class of their fold's training half
    ci95: float  # half-width of a 95% interval for accuracy, clustered by item
    rows: int
    items: int


def held_out_probe(states: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> ProbeScore:
    """A fresh logistic probe, cross-fitted on the held-out rows: trained on one half of the items
    and tested on the other, then the other way round. Rows of one item (a prompt and its
    paraphrases, all their tokens) are not independent, so the interval treats items as the
    sampling unit (ratio estimator over items)."""
    side = alternate(groups, labels)
    correct = torch.zeros(len(labels))
    majority = torch.zeros(len(labels))
    for train in (side, ~side):
        test = ~train
        correct[test] = (probe_predictions(states, labels, train) == labels[test]).float()
        counts = torch.bincount(labels[train], minlength=int(labels.max()) + 1)
        majority[test] = (labels[test] == counts.argmax()).float()
    items = torch.unique(groups)
    per_item = torch.stack([correct[groups == g].sum() for g in items])
    sizes = torch.stack([(groups == g).sum() for g in items]).double()
    accuracy = float(correct.mean())
    spread = ((per_item - accuracy * sizes) ** 2).sum() * len(items) / max(1, len(items) - 1)
    ci95 = 1.96 * float(spread.sqrt() / sizes.sum())
    return ProbeScore(accuracy, float(majority.mean()), ci95, len(labels), len(items))


def probe_predictions(
    features: torch.Tensor, labels: torch.Tensor, train: torch.Tensor
) -> torch.Tensor:
    """Classes predicted for the rows outside ``train`` by the probe of
    :func:`excise.activations.states.probe_accuracy` (logistic, L2 1e-2, standardised features)."""
    x_train = features[train].float()
    mean, std = x_train.mean(0), x_train.std(0).clamp(min=1e-6)
    with torch.enable_grad():
        weight, bias = fit_logistic(
            (x_train - mean) / std, labels[train], int(labels.max()) + 1, l2=1e-2, steps=100
        )
    return (((features[~train].float() - mean) / std) @ weight + bias).argmax(-1)


def class_gap(x: torch.Tensor, labels: torch.Tensor) -> float:
    """Distance between the class means relative to the mean row norm (0 after exact erasure)."""
    gap = x[labels == 1].mean(0) - x[labels == 0].mean(0)
    return float(gap.norm() / x.norm(dim=-1).mean().clamp(min=1e-12))


def run(
    model,
    tokenizer,
    data: Contrast,
    config: LeaceConfig,
    *,
    template: str,
    texts: list[str],
    scorer=None,  # the other erasers' utility scorer; LEACE measures fluency on ``texts`` only
) -> tuple[object, ErasureResult]:
    if config.form == "folded":
        check_foldable(model)
    default = max(0, round(num_layers(model) / 4) - 1)
    layer = check_layer(model, config.layer if config.layer is not None else default)

    def collect(current) -> tuple[torch.Tensor, torch.Tensor]:
        found = residual_states(
            current, tokenizer, data.prompts, [layer], template=template, positions=config.positions
        )
        return found.by_layer[layer], found.prompt

    x, owner = collect(model)
    labels, groups, fit = data.label[owner], data.group[owner], data.fit[owner]
    held = ~fit

    def measure(states: torch.Tensor, name: str) -> None:
        probe = held_out_probe(states[held], labels[held], groups[held])
        metrics[f"probe_{name}"], metrics[f"probe_{name}_ci95"] = probe.accuracy, probe.ci95
        metrics["chance"], details["probe"] = (
            probe.chance,
            {"rows": probe.rows, "items": probe.items},
        )
        metrics[f"probe_{name}_fit_trained"] = probe_accuracy(states, labels, fit)[0]
        metrics[f"class_gap_{name}"] = class_gap(states[held], labels[held])

    def fit_eraser(rows: torch.Tensor, classes: torch.Tensor) -> LeaceEraser:
        if config.rounds:
            return fit_inlp(rows, classes, rounds=config.rounds, protect=protect)
        return fit_leace(rows, classes, method=config.projection, protect=protect)

    protect = None
    if config.protect_sink:
        protect = sink_subspace(
            model, tokenizer, data.prompts, template=template, size=config.protect_sink
        )
    eraser = fit_eraser(x[fit], labels[fit])
    metrics: dict[str, float] = {}
    details = {"layer": layer, "rows": {"fit": int(fit.sum()), "held_out": int(held.sum())}}
    details["rank"] = eraser.rank
    measure(x, "before")
    measure(eraser(x), "runtime")
    metrics["perplexity_before"] = perplexity(model, tokenizer, texts)
    with hooked(decoder_layers(model)[layer], eraser):
        metrics["perplexity_runtime"] = perplexity(model, tokenizer, texts)
    tensors = {"eraser.left": eraser.proj_left, "eraser.right": eraser.proj_right}
    tensors["eraser.mean"] = eraser.mean
    if config.form == "runtime":
        hook = {"name": "eraser", "kind": "affine", "layer": layer}
        note = f"exact LEACE eraser on block {layer}'s output, saved as a runtime hook"
        return model, ErasureResult(
            "leace", layer, False, metrics, details, tensors, [note], {"hooks": [hook]}
        )
    fold_affine(model, eraser.matrix, None, last=layer)
    rounds = []
    for index in range(config.refit):
        # blocks below ``layer`` now read an erased stream and may carry the concept elsewhere:
        # erase what the folded model shows at ``layer`` too (one more direction per round)
        seen = collect(model)[0]
        rounds.append(
            {
                "fit_class_gap": class_gap(seen[fit], labels[fit]),
                "probe": held_out_probe(seen[held], labels[held], groups[held]).accuracy,
            }
        )
        extra = fit_eraser(seen[fit], labels[fit])
        fold_affine(model, extra.matrix, None, last=layer)
        tensors[f"refit{index}.left"] = extra.proj_left
        tensors[f"refit{index}.right"] = extra.proj_right
    folded = collect(model)[0]
    measure(folded, "after")
    metrics["fit_class_gap_after"] = class_gap(folded[fit], labels[fit])
    metrics["perplexity_after"] = perplexity(model, tokenizer, texts)
    details["rounds"] = rounds
    notes = [
        f"LEACE ({config.projection}, {config.rounds} INLP round(s), rank {eraser.rank}) fitted "
        f"on block {layer}'s output ({config.positions} prompt "
        f"positions, {int(fit.sum())} fit-side rows); P folded into the embeddings and the "
        f"attention/MLP outputs of blocks 0..{layer}, {config.refit} refit round(s); the affine "
        "term is dropped (see excise.erasure.concept)",
        "probe_X: fresh logistic probe cross-fitted on held-out items (trained on one half, tested"
        " on the other, both ways), probe_X_ci95 its 95% interval clustered by item; "
        "probe_X_fit_trained: trained on the eraser's fit side, tested on held-out prompts",
        "the guarantee covers linear read-outs of this layer on this distribution, not fine-tuning",
    ]
    return model, ErasureResult("leace", layer, True, metrics, details, tensors, notes)


SPEC = ERASERS.register(
    EraserSpec(
        "leace",
        "least-squares concept erasure: no linear probe reads the concept (Belrose et al. 2023)",
        LeaceConfig,
        run,
    )
)
