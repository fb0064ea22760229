"""Bound a concept in closed form, as ordinary weights: LEACE, directional ablation, clamping.

``erase(model, tokenizer, method, positive, negative, **options) -> (model, ErasureResult)``;
see :mod:`excise.erasure.core`. One module per algorithm (``leace`` the estimator, ``concept``
LEACE on a model, ``ablate``, ``clamp``), ``fold`` puts maps of the residual stream into weights,
``adapter`` keeps the runtime hooks that cannot be folded exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from excise.registry import Registry

__all__ = ["ERASERS", "EraserSpec", "erase", "ErasureResult"]


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

if TYPE_CHECKING:
    from excise.erasure.core import ErasureResult, erase


def __getattr__(name: str):
    # lazy: `excise --help` imports the erase command, which must not pull in torch
    if name in ("erase", "ErasureResult"):
        from excise.erasure import core

        return getattr(core, name)
    raise AttributeError(name)
