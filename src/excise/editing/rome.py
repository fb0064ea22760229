"""ROME (Meng et al. 2022): a rank-one edit of one MLP output projection per fact.

With key ``k`` (the projection's input at the subject's last token, averaged over contexts),
the shift ``delta`` its output should make (:mod:`excise.editing.targets`) and the key second
moment ``C``, the update

    W <- W + delta (C^-1 k)^T / (k^T C^-1 k)

makes ``W k`` move by exactly ``delta`` while changing the output least for keys typical of
ordinary text. The same averaged key is used in numerator and denominator (the mismatch in the
original implementation caused "disabling" edits, Gupta et al. 2024), and an edit whose update is
non-finite or larger than ``max_update`` times the weight's norm is refused and reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from excise.arch import block_part
from excise.editing import EDITORS, EditorSpec, EditOutcome
from excise.editing.layers import check_layers, default_layer
from excise.editing.locate import mean_by_owner, out_in, read_at
from excise.editing.stats import DEFAULT_TOKENS
from excise.editing.targets import TargetConfig, optimise_deltas, request_rows


@dataclass
class RomeConfig(TargetConfig):
    layer: int | None = None  # default: per architecture (excise.editing.layers)
    stats_tokens: int = DEFAULT_TOKENS
    ridge: float = 1e-3  # added to C, relative to its mean diagonal, before solving
    max_update: float = 0.5  # refuse an edit with |dW|_F > max_update * |W|_F

    def layers_for(self, model) -> list[int]:
        return check_layers(model, [default_layer(model) if self.layer is None else self.layer])


def regularised(moment: torch.Tensor, ridge: float) -> torch.Tensor:
    scale = moment.diagonal().mean()
    return moment + ridge * scale * torch.eye(moment.shape[0], dtype=moment.dtype)


def rank_one_update(
    covariance: torch.Tensor, key: torch.Tensor, delta: torch.Tensor
) -> tuple[torch.Tensor, float]:
    """dW = delta (C^-1 k)^T / (k^T C^-1 k), so that dW k = delta; and the denominator."""
    left = torch.linalg.solve(covariance, key)
    denominator = float(left @ key)
    return torch.outer(delta, left) / denominator, denominator


def apply(ctx, requests) -> EditOutcome:
    config: RomeConfig = ctx.config
    (layer,) = config.layers_for(ctx.model)
    weight = out_in(block_part(ctx.model, layer, "mlp_out"))
    covariance = regularised(ctx.stats.covariance(layer), config.ridge)
    refused, nlls = [], []
    for request in requests:  # ROME is one fact at a time: each edit sees the previous ones
        deltas, _, nll = optimise_deltas(
            ctx.model,
            ctx.tokenizer,
            [request],
            layer,
            config,
            template=ctx.template,
            prefixes=ctx.prefixes,
        )
        rows = request_rows(ctx.tokenizer, [request], ctx.prefixes, ctx.template, target=False)
        keys = read_at(ctx.model, rows, [layer], ctx.pad_id, what="key")[layer]
        key = mean_by_owner(keys, rows, 1)[0].double()
        update, denominator = rank_one_update(covariance, key, deltas[0].double())
        ratio = float(update.norm() / weight.detach().double().norm())
        if not (denominator > 0 and torch.isfinite(update).all() and ratio <= config.max_update):
            refused.append(
                {"case_id": request.case_id, "reason": f"update/weight norm {ratio:.3g}"}
            )
            continue
        with torch.no_grad():
            weight.add_(update.to(weight))  # solved on the CPU in float64
        nlls.extend(nll)
    return EditOutcome(nlls, refused)


SPEC = EDITORS.register(
    EditorSpec(
        "rome", "rank-one edit of one MLP, one fact at a time (Meng et al. 2022)", RomeConfig, apply
    )
)
