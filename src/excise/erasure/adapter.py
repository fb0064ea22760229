"""Runtime hooks saved beside a checkpoint, for the bounds that are not exact as weights.

Two kinds: ``affine`` (an exact LEACE eraser on block ``layer``'s output:
x - ((x - mean) @ right^T) @ left^T) and ``clamp`` (the projections of the stream on orthonormal
``directions`` held inside [low, high] after every block from ``layer`` on). A model folder holding ``excise_hooks.json`` + ``excise_hooks.safetensors`` loads as a
plain model with ``from_pretrained`` (without the bound!); attach the hooks with::

    from excise.erasure.adapter import attach
    handles = attach(model, folder)   # handle.remove() for each to detach
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from excise.arch import decoder_layers
from excise.errors import ModelError

CONFIG = "excise_hooks.json"
TENSORS = "excise_hooks.safetensors"
NOTE = "EXCISE_HOOKS.md"


def save(folder: Path, hooks: list[dict[str, Any]], tensors: dict[str, torch.Tensor]) -> None:
    (folder / CONFIG).write_text(json.dumps({"hooks": hooks}, indent=2) + "\n")
    save_file({k: v.detach().float().cpu().clone() for k, v in tensors.items()}, folder / TENSORS)
    (folder / NOTE).write_text(
        "# Runtime bound (excise)\n\n"
        "These weights load with plain `from_pretrained`, but the bound this folder was made\n"
        "with is a runtime hook, not part of the weights. Attach it after loading:\n\n"
        "```python\nfrom transformers import AutoModelForCausalLM\n"
        "from excise.erasure.adapter import attach\n\n"
        "model = AutoModelForCausalLM.from_pretrained(folder)\n"
        "handles = attach(model, folder)\n```\n\n"
        f"Hooks: {json.dumps(hooks)}\n"
    )


def affine_change(left: torch.Tensor, right: torch.Tensor, mean: torch.Tensor):
    def change(x: torch.Tensor) -> torch.Tensor:
        lt, rt, mt = (t.to(x) for t in (left, right, mean))
        return x - ((x - mt) @ rt.T) @ lt.T

    return change


def clamp_change(directions: torch.Tensor, low: torch.Tensor, high: torch.Tensor):
    def change(x: torch.Tensor) -> torch.Tensor:
        d, lo, hi = (t.to(x) for t in (directions, low, high))
        projection = x @ d.T  # (..., k)
        return x + (torch.minimum(torch.maximum(projection, lo), hi) - projection) @ d

    return change


def _output_hook(change):
    def hook(_module, _inputs, output):
        if isinstance(output, tuple):
            return (change(output[0]), *output[1:])
        return change(output)

    return hook


def register(model, hook: dict[str, Any], tensors: dict[str, torch.Tensor]) -> list:
    """Register one hook description on ``model``; returns the handles."""
    blocks = decoder_layers(model)
    name, layer = hook["name"], int(hook["layer"])
    if not 0 <= layer < len(blocks):
        raise ModelError(f"hook {name!r} needs block {layer}; the model has {len(blocks)}")
    if hook["kind"] == "affine":
        change = affine_change(*(tensors[f"{name}.{k}"] for k in ("left", "right", "mean")))
        return [blocks[layer].register_forward_hook(_output_hook(change))]
    if hook["kind"] == "clamp":
        change = clamp_change(*(tensors[f"{name}.{k}"] for k in ("directions", "low", "high")))
        return [b.register_forward_hook(_output_hook(change)) for b in blocks[layer:]]
    raise ModelError(f"unknown hook kind {hook['kind']!r} in {CONFIG}")


def attach(model, folder: str | Path) -> list:
    """Attach the hooks saved in ``folder`` to ``model``; returns the handles."""
    folder = Path(folder)
    if not (folder / CONFIG).is_file():
        raise ModelError(f"{folder} has no {CONFIG}: nothing to attach")
    tensors = load_file(folder / TENSORS)
    handles = []
    for hook in json.loads((folder / CONFIG).read_text())["hooks"]:
        handles += register(model, hook, tensors)
    return handles
