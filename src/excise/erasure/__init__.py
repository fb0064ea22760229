"""Bound a concept in closed form, as ordinary weights: LEACE, directional ablation, clamping.

``excise.erasure.core.erase(model, tokenizer, method, positive, negative, **options)`` returns
(model, ErasureResult); each eraser registers an :class:`EraserSpec` in :data:`ERASERS`. One
module per algorithm (``leace`` the estimator, ``concept`` LEACE on a model, ``ablate``,
``clamp``); ``adapter`` keeps the runtime hooks that cannot be folded exactly (folding itself is
:mod:`excise.activations.fold`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from excise.registry import Registry

__all__ = ["ERASERS", "EraserSpec"]


@dataclass(frozen=True)
class EraserSpec:
    name: str
    summary: str  # one line, for listings
    config_cls: type
    # (model, tokenizer, contrast, config, *, template, texts, scorer) -> (model, ErasureResult)
    run: Callable[..., tuple[Any, Any]]


ERASERS: Registry[EraserSpec] = Registry(
    "erasure method", "excise.erasure", ("concept", "ablate", "clamp")
)
