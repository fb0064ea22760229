"""MEMIT (Meng et al. 2023): many edits at once, spread over several MLP layers.

Targets ``z_i`` are found at the last edited layer (residual shift at the subject). Then for each
edited layer ``l`` in order, with the current keys ``K`` (requests x d_ff) and the remaining
residual ``R = (z - h_L) / (layers left)``, the least-squares update that keeps the keys of
ordinary text (second moment ``C``, weight ``lambda``) is

    dW = R^T K (lambda C + K^T K + w K_s^T K_s)^-1,

where ``K_s`` are the keys (every token) of texts to preserve (for memit none unless asked;
``edit(preserve=...)``), each weighted ``w`` (``preserve_weight``; see :func:`preserved`).
The drift guard's options (``most_probable``, ``stop_margin``, ``hold_rounds``, ``norm_anchor``,
``max_update``) are in :mod:`excise.editing.guard`; same-subject requests share one target
shift (``shared_subject``, :mod:`excise.editing.targets`).

Where each block normalises its MLP's output before the stream (Gemma 2/3, OLMo 2) the targets
are shifts of each layer's MLP output, one optimisation per layer (:func:`_write_under_norms`),
and keys and residuals are weighed by 1 / rms(W k) like the statistics
(:func:`excise.editing.stats.compute`).

AlphaEdit (:mod:`excise.editing.alphaedit`) shares this driver and swaps the solve.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from excise.arch import block_part, normalised_writes
from excise.editing import EDITORS, EditorSpec, EditOutcome
from excise.editing.guard import anchor, capped, check, not_held, origin
from excise.editing.layers import check_layers, default_layers
from excise.editing.locate import mean_by_owner, out_in, read_at, write_scale
from excise.editing.stats import DEFAULT_TOKENS
from excise.editing.targets import TargetConfig, optimise_deltas, request_rows
from excise.errors import ConfigError

Solver = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]
PRESERVE_MASS = 2.0  # the automatic preservation weight's total, in multiples of the key width


@dataclass
class MemitConfig(TargetConfig):
    layers: list[int] | None = None  # default: per architecture (excise.editing.layers)
    # lambda: how strongly ordinary text's keys are preserved. None: the key dimension d_ff, which
    # keeps lambda C and one edit's k k^T on the same scale across model sizes (MEMIT's 15000 for
    # GPT-J's 16384-wide keys is ~0.9 d_ff). On the bundled model 15000 (~10 d_ff) under-edits:
    # efficacy 0.60, paraphrase 0.41 on 30 counterfact-mini requests, vs 1.00 and 0.89 at d_ff.
    mom2_weight: float | None = None
    stats_tokens: int = DEFAULT_TOKENS
    # weight of each key of the preserved texts (``edit(preserve=...)``, ``--preserve``); None:
    # 1 (as much as an edited key) up to PRESERVE_MASS x d_ff keys, shared out beyond that
    preserve_weight: float | None = None
    # drift guard (excise.editing.guard): pull toward the run's starting weights, cap each update
    norm_anchor: float = 0.0
    max_update: float | None = None  # |dW|_F / |W_0|_F per batch and layer
    hold_rounds: int = 0  # extra writes for the requests whose target is not yet the argmax

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.preserve_weight is not None and self.preserve_weight < 0:
            raise ConfigError("preserve_weight must be >= 0 (None: automatic)")
        check(self.norm_anchor, self.max_update, self.hold_rounds)

    def layers_for(self, model) -> list[int]:
        return check_layers(model, list(self.layers) if self.layers else default_layers(model))


def spread(ctx, requests, solve: Solver) -> tuple[EditOutcome, dict[int, torch.Tensor]]:
    """Compute targets at the last layer, then update each layer with ``solve(layer, K, R)``;
    then, ``hold_rounds`` times, write again the requests whose target is not yet the argmax
    (:func:`excise.editing.guard.not_held`). Returns the outcome (the first write's target NLL)
    and the keys used at each layer (every round's, stacked)."""
    nll, keys_used = _write(ctx, requests, solve)
    for _ in range(ctx.config.hold_rounds):
        again = [requests[i] for i in not_held(ctx, requests)]
        if not again:
            break
        _, more = _write(ctx, again, solve)
        keys_used = {layer: torch.cat([keys_used[layer], more[layer]]) for layer in keys_used}
    return EditOutcome(nll), keys_used


def _write(ctx, requests, solve: Solver) -> tuple[list[float], dict[int, torch.Tensor]]:
    if normalised_writes(ctx.model):
        return _write_under_norms(ctx, requests, solve)
    layers = ctx.config.layers_for(ctx.model)
    top = layers[-1]
    deltas, base, nll = _targets(ctx, requests, top)
    z = (base + deltas).double()
    key_rows = request_rows(ctx.tokenizer, requests, ctx.prefixes, ctx.template, target=False)
    plain = request_rows(ctx.tokenizer, requests, [""], ctx.template, target=False)
    keys_used: dict[int, torch.Tensor] = {}
    for i, layer in enumerate(layers):
        keys = _keys(ctx, key_rows, layer, len(requests))
        current = read_at(ctx.model, plain, [top], ctx.pad_id, what="residual")[top].double()
        keys_used[layer] = _update(ctx, layer, keys, (z - current) / (len(layers) - i), solve)
    return nll, keys_used


def _write_under_norms(ctx, requests, solve: Solver):
    """MEMIT where each block normalises its MLP's write (Gemma 2/3, OLMo 2). One target at the
    last layer cannot be spread: a share of a stream shift is not something a lower MLP can
    write (on gemma-3-270m a lower layer's write of 465 cut the top's remaining residual by
    ~70). So each layer in turn, on the model its lower layers already changed, gets its own
    target (the change of its MLP output that makes the new answers, :mod:`.targets`) and
    writes ``1 / (layers left)`` of it; the last writes all that is left. One target
    optimisation per layer instead of one. The NLL reported is the last layer's."""
    layers = ctx.config.layers_for(ctx.model)
    key_rows = request_rows(ctx.tokenizer, requests, ctx.prefixes, ctx.template, target=False)
    keys_used: dict[int, torch.Tensor] = {}
    nll: list[float] = []
    for i, layer in enumerate(layers):
        deltas, _, nll = _targets(ctx, requests, layer)
        keys = _keys(ctx, key_rows, layer, len(requests))
        keys_used[layer] = _update(ctx, layer, keys, deltas.double() / (len(layers) - i), solve)
    return nll, keys_used


def _targets(ctx, requests, layer: int):
    return optimise_deltas(
        ctx.model,
        ctx.tokenizer,
        requests,
        layer,
        ctx.config,
        template=ctx.template,
        prefixes=ctx.prefixes,
    )


def _keys(ctx, key_rows, layer: int, owners: int) -> torch.Tensor:
    raw = read_at(ctx.model, key_rows, [layer], ctx.pad_id, what="key")[layer]
    return mean_by_owner(raw, key_rows, owners).double()


def _update(ctx, layer: int, keys, residual, solve: Solver) -> torch.Tensor:
    """Write ``residual`` (what the MLP output projection should add at ``keys``) into block
    ``layer``; returns the keys as the solve saw them."""
    weight = out_in(block_part(ctx.model, layer, "mlp_out"))
    scale = write_scale(ctx.model, layer, weight, keys)  # in the units of the key statistics
    keys, residual = keys * scale, residual * scale
    if ctx.config.norm_anchor or ctx.config.max_update is not None:
        origin(ctx, layer, weight)  # the run's starting weights, before any update
    update = capped(ctx, layer, solve(layer, keys, residual))  # (hidden, d_ff)
    with torch.no_grad():
        weight.add_(update.to(weight))  # solved on the CPU in float64
    return keys


def memit_update(
    moment: torch.Tensor,
    keys: torch.Tensor,
    residual: torch.Tensor,
    weight: float,
    kept: torch.Tensor | None = None,
    pull: float = 0.0,
    drift: torch.Tensor | None = None,
) -> torch.Tensor:
    """dW (hidden, d_ff) = (R^T K - pull D)(weight C + K^T K + kept + pull I)^-1 for keys
    (n, d_ff), residuals (n, hidden); ``kept`` is the (weighted) sum of k k^T over keys whose
    output must stay, ``drift`` D the change since the run began (the guard's norm anchor)."""
    system = weight * moment + keys.T @ keys
    if kept is not None:
        system = system + kept
    if drift is None or not pull:
        return residual.T @ torch.linalg.solve(system, keys.T).T
    system = system + pull * torch.eye(system.shape[0], dtype=system.dtype)
    target = residual.T @ keys - pull * drift  # (hidden, d_ff)
    return torch.linalg.solve(system, target.T).T  # the system is symmetric


def preserved(ctx, layer: int) -> torch.Tensor | None:
    """The preserved texts' summed k k^T at ``layer``, weighted (None: no texts).

    Automatic weight: each key counts 1 while the set holds at most ``PRESERVE_MASS`` x d_ff
    keys; a larger set shares that mass out. Every preserved key at weight 1 over 1,600 fact
    prompts (~12k keys) halved efficacy on the bundled model; ~3,600 keys kept it (bench)."""
    if "preserved" not in ctx.state:
        return None
    moments, count = ctx.state["preserved"]
    weight = ctx.config.preserve_weight
    if weight is None:
        width = moments[layer].shape[0]
        weight = min(1.0, PRESERVE_MASS * width / max(count, 1))
    return weight * moments[layer] if weight else None


def apply(ctx, requests) -> EditOutcome:
    def solve(layer: int, keys: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        weight = ctx.config.mom2_weight or keys.shape[1]
        moment = ctx.stats.covariance(layer)
        current = out_in(block_part(ctx.model, layer, "mlp_out"))
        pull, drift = anchor(ctx, layer, current, moment, weight)
        return memit_update(moment, keys, residual, weight, preserved(ctx, layer), pull, drift)

    return spread(ctx, requests, solve)[0]


SPEC = EDITORS.register(
    EditorSpec(
        "memit", "batched edits spread over several MLPs (Meng et al. 2023)", MemitConfig, apply
    )
)
