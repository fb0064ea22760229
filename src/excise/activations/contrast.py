"""A concept given by contrast: positive prompts (it is present) and negative prompts (it is
not), split into a fit side and a held-out side. An item is a prompt or a group of prompts (say a
question and its paraphrases) that stays on one side of every split. The larger class is thinned
evenly to the size of the smaller; then half of the items, drawn at random (seeded), are the *fit*
side (directions and erasers are estimated there) and the rest the *held-out* side (every
reported score is measured there). Item k of the positive and of the negative list land on the
same side, so minimal pairs stay together. Random, not every other item: contrast sets are built
by nested loops (subject x template), and alternation then puts whole combinations on one side,
so the held-out side is another distribution and the erasure looks worse than it is (bias set,
LEACE: 0.78 vs 0.48 at chance 0.50)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from excise.errors import DataError

Item = str | Sequence[str]


@dataclass
class Contrast:
    prompts: list[str]
    label: torch.Tensor  # (prompts,) 1 positive, 0 negative
    group: torch.Tensor  # (prompts,) item index
    fit: torch.Tensor  # (prompts,) bool: on the fit side
    source: torch.Tensor  # (prompts,) index of the prompt's item in the list it was given in

    def held_out(self, label: int) -> list[int]:
        """Indices (in the list given) of the items of class ``label`` on the held-out side."""
        keep = (~self.fit) & (self.label == label)
        return sorted(set(self.source[keep].tolist()))

    def side(self, fit: bool, label: int | None = None) -> list[str]:
        keep = self.fit == fit
        if label is not None:
            keep &= self.label == label
        return [p for p, k in zip(self.prompts, keep.tolist(), strict=True) if k]


def _items(values: Sequence[Item], name: str) -> list[list[str]]:
    items = [[v] if isinstance(v, str) else list(v) for v in values]
    items = [[p for p in item if isinstance(p, str) and p.strip()] for item in items]
    if any(not item for item in items):
        raise DataError(f"the {name} set has an empty prompt")
    if len(items) < 4:
        raise DataError(f"the {name} set needs at least 4 prompts (items), got {len(items)}")
    return items


def contrast(positive: Sequence[Item], negative: Sequence[Item], *, seed: int = 0) -> Contrast:
    groups = [_items(positive, "positive"), _items(negative, "negative")]
    size = min(len(g) for g in groups)
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
    on_fit_side = (order % 2 == 0).tolist()  # half of the items, the same for both classes
    prompts, label, group, fit, source = [], [], [], [], []
    for cls, items in zip((1, 0), groups, strict=True):
        chosen = [(i * len(items)) // size for i in range(size)]  # evenly thinned
        for index, original in enumerate(chosen):
            for prompt in items[original]:
                prompts.append(prompt)
                label.append(cls)
                group.append(index + (1 - cls) * size)
                fit.append(on_fit_side[index])
                source.append(original)
    tensors = (torch.tensor(v) for v in (label, group, fit, source))
    return Contrast(prompts, *tensors)
