"""Edits as reversible deltas: what an edit changed, saved beside the checkpoint.

Deltas are stored in float64. Two float32 (or bf16/fp16) values differ by an amount that float64
holds exactly for all practical exponent gaps, so ``base + delta`` rounds back to the edited
weight and ``edited - delta`` to the base weight: apply and revert are exact, bit for bit (tested).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from excise.errors import DataError, ModelError


def snapshot(model, names: list[str]) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {name: params[name].detach().double().cpu().clone() for name in names}


def difference(model, before: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {name: params[name].detach().double().cpu() - old for name, old in before.items()}


def merge(total: dict[str, torch.Tensor], more: dict[str, torch.Tensor]) -> None:
    for name, delta in more.items():
        total[name] = total[name] + delta if name in total else delta


@torch.no_grad()
def apply_delta(model, deltas: dict[str, torch.Tensor], *, sign: float = 1.0) -> None:
    """Add (``sign=1``) or subtract (``sign=-1``) ``deltas`` in place."""
    params = dict(model.named_parameters())
    missing = sorted(set(deltas) - set(params))
    if missing:
        raise ModelError(f"the delta names parameters this model lacks: {', '.join(missing[:3])}")
    for name, delta in deltas.items():
        param = params[name]
        if tuple(param.shape) != tuple(delta.shape):
            raise ModelError(
                f"delta for {name} has shape {tuple(delta.shape)}, the model {tuple(param.shape)}"
            )
        result = param.detach().double().cpu() + sign * delta
        param.copy_(result.to(param.dtype))


def save_delta(deltas: dict[str, torch.Tensor], path: str | Path, meta: dict[str, str]) -> None:
    save_file({k: v.contiguous() for k, v in deltas.items()}, str(path), metadata=meta)


DELTA_KEYS = ("method", "base_fingerprint")  # what `excise edit` writes into the header


def load_delta(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a delta of `excise edit`; anything else (a whole model's weights, a truncated or
    foreign file) is refused: adding a checkpoint to a model would double every weight."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"delta file not found: {path}")
    not_delta = f"{path} is not a delta file written by `excise edit`"
    try:
        with safe_open(str(path), "pt") as handle:
            meta = handle.metadata() or {}
            if missing := [key for key in DELTA_KEYS if key not in meta]:
                raise DataError(
                    f"{not_delta} (its header lacks {', '.join(missing)}; a model's own "
                    "weights are no delta): give OUT/delta.safetensors of an edit"
                )
            deltas = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    except DataError:
        raise
    except Exception as error:  # safetensors raises several types for a corrupt file
        raise DataError(f"{not_delta} (unreadable: {str(error).splitlines()[0]})") from None
    if any(t.dtype != torch.float64 for t in deltas.values()):
        raise DataError(f"{not_delta} (deltas are float64 tensors)")
    if not all(torch.isfinite(t).all() for t in deltas.values()):
        raise DataError(f"{path} holds non-finite deltas; the edit that wrote it diverged")
    return deltas, meta
