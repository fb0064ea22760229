"""Every option of every registered config (methods, attacks, editors, erasers, the bypass check,
training, LoRA) either builds or is refused with a one-line ConfigError for hostile values: never
another exception, never a non-finite number accepted."""

from __future__ import annotations

import dataclasses
import math

import pytest

from excise.errors import ExciseError
from excise.methods import make_config


def config_classes() -> dict[str, type]:
    from excise.attacks import all_attacks
    from excise.bypass import BypassConfig
    from excise.editing import EDITORS, editor
    from excise.erasure import ablate, clamp, concept
    from excise.lora import LoraSettings
    from excise.methods import all_methods
    from excise.train import TrainConfig

    classes = {f"method:{n}": s.config_cls for n, s in all_methods().items()}
    classes |= {f"attack:{n}": s.budget_cls for n, s in all_attacks().items()}
    classes |= {f"editor:{n}": editor(n)[1] for n in EDITORS}
    classes |= {"eraser:leace": concept.LeaceConfig, "eraser:ablate": ablate.AblateConfig}
    classes |= {"eraser:clamp": clamp.ClampConfig, "bypass": BypassConfig}
    return classes | {"train": TrainConfig, "lora": LoraSettings}


HOSTILE = [float("inf"), float("-inf"), float("nan"), -1, 0, 10**12, "1e-3", "x", None, [], True]
CLASSES = config_classes()
FIELDS = [
    (name, field.name)
    for name, cls in CLASSES.items()
    for field in dataclasses.fields(cls)
    if field.init
]


@pytest.mark.parametrize(("owner", "key"), FIELDS, ids=[f"{o}.{k}" for o, k in FIELDS])
def test_hostile_values_build_or_fail_in_one_line(owner, key):
    cls = CLASSES[owner]
    required = {
        f.name: 8
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    for value in HOSTILE:
        try:
            config = make_config(cls, {**required, key: value})
        except ExciseError as error:
            assert "\n" not in str(error).strip() and str(error), (key, value)
            continue
        built = getattr(config, key)
        for item in built if isinstance(built, list | tuple) else [built]:
            assert not (isinstance(item, float) and not math.isfinite(item)), (key, value, built)
