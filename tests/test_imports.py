import importlib
import pkgutil

import excise


def test_every_module_imports():
    names = [m.name for m in pkgutil.walk_packages(excise.__path__, "excise.")]
    assert "excise.train" in names and "excise.methods.rmu" in names
    for name in names:
        if ".builtin." in name:
            continue
        importlib.import_module(name)


def test_public_api():
    for name in excise.__all__:
        assert getattr(excise, name) is not None
