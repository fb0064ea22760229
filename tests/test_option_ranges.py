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
    from excise.attacks.bypass import BypassConfig
    from excise.editing import EDITORS
    from excise.erasure import ERASERS
    from excise.methods import all_methods
    from excise.train import TrainConfig
    from excise.train.lora import LoraSettings

    classes = {f"method:{n}": s.config_cls for n, s in all_methods().items()}
    classes |= {f"attack:{n}": s.budget_cls for n, s in all_attacks().items()}
    classes |= {f"editor:{n}": s.config_cls for n, s in EDITORS.all().items()}
    classes |= {f"eraser:{n}": s.config_cls for n, s in ERASERS.all().items()}
    classes |= {"bypass": BypassConfig}
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


def test_every_kind_is_one_registry_and_the_cli_lists_real_defaults(capsys):
    from excise.cli import main
    from excise.cli.erase import METHODS as ERASE_CHOICES
    from excise.erasure import ERASERS
    from excise.registry import Registry

    for name, cls in CLASSES.items():
        assert dataclasses.is_dataclass(cls), name
    # the names the CLI and recipes know without loading model code are the registry's
    assert ERASERS.names() == ERASE_CHOICES
    assert main(["methods"]) == 0 and main(["attacks"]) == 0
    listed = capsys.readouterr().out
    assert "MISSING" not in listed and "object at 0x" not in listed
    for name in CLASSES:
        if ":" in name:
            assert f"{name.split(':')[1]} " in listed, name
    # one shape for every kind: a spec needs a dataclass config, a name is registered once
    registry = Registry("widget", "excise.methods", ())

    @dataclasses.dataclass(frozen=True)
    class Widget:
        name: str
        summary: str
        config_cls: type

    registry.register(Widget("w", "a widget", CLASSES["train"]))
    with pytest.raises(ValueError, match="twice"):
        registry.register(Widget("w", "again", CLASSES["train"]))
    with pytest.raises(TypeError, match="dataclass"):
        registry.register(Widget("v", "no config", int))
    with pytest.raises(ExciseError, match="unknown widget 'x'; available: w"):
        registry.get("x")
