"""Bound a concept in closed form, as ordinary weights: LEACE, directional ablation, clamping.

``erase(model, tokenizer, method, positive, negative, **options) -> (model, ErasureResult)``;
see :mod:`excise.erasure.core`. One module per algorithm (``leace`` the estimator, ``concept``
LEACE on a model, ``ablate``, ``clamp``), ``fold`` puts maps of the residual stream into weights,
``adapter`` keeps the runtime hooks that cannot be folded exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["erase", "ErasureResult"]

if TYPE_CHECKING:
    from excise.erasure.core import ErasureResult, erase


def __getattr__(name: str):
    # lazy: `excise --help` imports the erase command, which must not pull in torch
    if name in __all__:
        from excise.erasure import core

        return getattr(core, name)
    raise AttributeError(name)
