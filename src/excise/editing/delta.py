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


def load_delta(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"delta file not found: {path}")
    try:
        with safe_open(str(path), "pt") as handle:
            meta = handle.metadata() or {}
            return {k: handle.get_tensor(k) for k in handle.keys()}, meta  # noqa: SIM118
    except Exception as error:  # safetensors raises several types for a corrupt header
        raise DataError(f"{path} is not a delta file written by `excise edit`") from error
