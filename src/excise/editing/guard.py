"""Drift guard for sequential editing: keep what the edits did not touch (``--guard``).

After ENCORE (Gupta et al. 2025, "Lifelong knowledge editing requires better regularization"):
sequential locate-then-edit degrades a model through (1) over-optimised target activations and
(2) the growing norm of the edited matrices. The guard answers each, as options of ``memit`` and
``alphaedit``:

- ``most_probable`` (:mod:`excise.editing.targets`): most-probable early stopping; a request's
  shift stops once its target is the argmax in every context, and ``stop_margin`` (nats) above
  the runner-up: edits written to a bare argmax held right after their batch (0.90) but later
  batches flipped them (0.68 of 50 edits held; bench/results/editing-guard-2026-12-07.md).
- ``hold_rounds``: MEMIT's spread writes only part of the shift found at the last edited layer
  (lambda C keeps ordinary text), so a shift stopped at a bare argmax often does not hold after
  the write: on the bundled model the early stop alone left 7 of a batch's 10 edits short
  (alphaedit, bench/results/editing-guard-2026-12-07.md). After the write, the requests whose
  target is not the argmax on the edited model are optimised and written again, up to this many
  times; each round asks only for what is still missing. With a ``stop_margin``, an edit holds
  when its target leads by ``HOLD_SHARE`` of it on the edited model (a write carries only part
  of the shift, so asking for the whole margin would rewrite every edit every round).
- ``norm_anchor``: a Frobenius-norm constraint. The update also minimises
  ``a |W + dW - W_0|_F^2``, with ``W_0`` the weights before the run's first batch, so the
  drift ``D = W - W_0`` of earlier batches is pulled back wherever the edits' and the kept keys
  leave room. MEMIT's closed form becomes ``dW = (R^T K - a D)(lambda C + K^T K + K_p + a I)^-1``
  (AlphaEdit's likewise, inside its projection). ``a = norm_anchor * lambda * mean eig(C)``:
  in units of ``lambda C``'s average eigenvalue, so the value carries across models (at
  ``lambda`` = key width that is the squared norm of an average key). ENCORE anchors at the
  weights before each edit (a plain ridge); anchoring at the run's start also undoes old drift.
- ``max_update``: a hard cap, ``|dW|_F <= max_update * |W_0|_F`` per batch and layer.

``GUARD`` holds the defaults that ``--guard`` (``edit(guard=True)``) sets; ``--set`` overrides.
The output stays a plain checkpoint: the guard only changes the weight update.
"""

from __future__ import annotations

from typing import Any

import torch

from excise.errors import ConfigError

GUARD: dict[str, Any] = {
    "most_probable": True,
    "stop_margin": 2.0,
    "hold_rounds": 2,
    "norm_anchor": 0.05,
    "max_update": None,
}
METHODS = ("memit", "alphaedit")
HOLD_SHARE = 0.5  # an edit holds when it leads by this share of stop_margin after the write


def guard_options(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with the guard's defaults under them (the user's own values win)."""
    if method not in METHODS:
        raise ConfigError(f"--guard works with {' and '.join(METHODS)}, not {method!r}")
    return GUARD | options


def check(norm_anchor: float, max_update: float | None, hold_rounds: int = 0) -> None:
    if hold_rounds < 0:
        raise ConfigError(f"hold_rounds must be >= 0, got {hold_rounds}")
    if norm_anchor < 0:
        raise ConfigError(f"norm_anchor must be >= 0, got {norm_anchor}")
    if max_update is not None and max_update <= 0:
        raise ConfigError(f"max_update must be > 0 (None: no cap), got {max_update}")


def not_held(ctx, requests) -> list[int]:
    """Indexes of ``requests`` whose new target is not the argmax at every token of the plain
    prompt on the model as it is now (teacher forced), or, with a ``stop_margin``, does not lead
    the runner-up by ``HOLD_SHARE`` of it."""
    from excise.editing.requests import answer
    from excise.editing.targets import target_margins
    from excise.scoring import score_pairs

    config = ctx.config
    need = HOLD_SHARE * config.stop_margin if config.most_probable else 0.0
    if need > 0:
        leads = target_margins(ctx.model, ctx.tokenizer, requests, ctx.template)
        return [i for i, lead in enumerate(leads) if not lead >= need]
    pairs = [(r.text(), answer(r.target_new, ctx.template)) for r in requests]
    correct = score_pairs(ctx.model, ctx.tokenizer, pairs, ctx.template).correct
    return [i for i, ok in enumerate(correct.tolist()) if not ok]


def origin(ctx, layer: int, weight: torch.Tensor) -> torch.Tensor:
    """The layer's weight before the run's first batch (float64, CPU), kept in ``ctx.state``."""
    kept = ctx.state.setdefault("origin", {})
    if layer not in kept:
        kept[layer] = weight.detach().double().cpu().clone()
    return kept[layer]


def anchor(ctx, layer: int, weight: torch.Tensor, moment: torch.Tensor, scale: float):
    """``(a, D)`` for the norm anchor (``a = 0``, ``D = None`` when it is off); ``scale`` is
    the solve's weight on ``moment`` (lambda)."""
    strength = ctx.config.norm_anchor
    start = origin(ctx, layer, weight)  # read before the first update, whatever the options
    if not strength:
        return 0.0, None
    drift = weight.detach().double().cpu() - start  # (hidden, d_ff)
    return strength * scale * float(moment.diagonal().mean()), drift


def capped(ctx, layer: int, update: torch.Tensor) -> torch.Tensor:
    """``update`` scaled down to ``max_update * |W_0|_F`` when it is larger."""
    limit = ctx.config.max_update
    if limit is None:
        return update
    bound = limit * float(ctx.state["origin"][layer].norm())
    size = float(update.norm())
    return update * (bound / size) if size > bound else update
