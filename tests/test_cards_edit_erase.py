"""`excise edit` and `excise erase` write model cards the Hub reads (front matter from
excise.report.card), with their figures and what the changed model now writes."""

import json

import pytest
from huggingface_hub import ModelCard

from excise.cli import main
from excise.models import save_model
from tests.conftest import make_tiny_model

REQUEST = {
    "case_id": "a",
    "prompt": "The capital of {} is",
    "subject": "France",
    "target_new": "Rome",
    "target_true": "Paris",
    "paraphrases": ["France has the capital"],
    "neighborhood": [{"prompt": "The capital of Spain is", "target": "Madrid"}],
}


@pytest.fixture
def tiny_dir(tmp_path, tiny_tokenizer):
    return str(save_model(make_tiny_model(tiny_tokenizer), tiny_tokenizer, tmp_path / "tiny"))


def write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_edit_card_is_hub_metadata_with_figures_and_examples(tmp_path, tiny_dir, monkeypatch):
    monkeypatch.setenv("EXCISE_HOME", str(tmp_path / "home"))
    out = tmp_path / "edited"
    argv = ["edit", "--model", tiny_dir, "--requests", write(tmp_path / "r.jsonl", [REQUEST])]
    argv += ["--method", "ft", "--set", "layer=1", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    card = ModelCard.load(out / "model" / "README.md")
    assert card.data.tags == ["excise", "model-editing", "ft"]
    assert card.data.pipeline_tag == "text-generation" and card.data.library_name == "transformers"
    assert card.data.base_model is None  # a local folder without a card of its own
    text = card.text
    assert "| metric | before | edited | in-context |" in text
    assert "| efficacy_score |" in text and "| perplexity |" in text
    assert "- method: `ft`, 1 of 1 edits applied" in text
    assert "## What edited prompts now produce" in text
    assert "| The capital of France is | Rome |" in text
    assert "| The capital of Spain is | Madrid |" in text
    for bad in ("| nan", "| inf"):
        assert bad not in text
    report = json.loads((out / "report.json").read_text())
    assert list(report["examples"]) == ["efficacy", "paraphrase", "neighborhood"]
    assert report["examples"]["efficacy"][0]["expected"] == "Rome"
    assert "<section id='examples'>" in (out / "report.html").read_text()


def test_edit_card_names_a_hub_base_model():
    from excise.report.edit import edit_card

    report = {
        "model": "smollm2-135m",
        "model_sha": "abc",
        "method": {"name": "rome", "options": {}},
        "requests": 2,
        "applied": 2,
        "before": {"edit": {"efficacy_tf": 0.0}, "utility": {"perplexity": float("nan")}},
        "after": {"edit": {"efficacy_tf": 1.0}, "utility": {"perplexity": 25.0}},
        "in_context": {},
        "refused": [],
    }
    text = edit_card(report)
    meta = text.split("---")[1]
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in meta
    assert "license: apache-2.0" in meta
    assert "| efficacy_tf | 0.000 | 1.000 | n/a |" in text
    assert "| perplexity | n/a | 25.000 |" in text


def test_erase_card_is_hub_metadata_with_figures_and_examples(tmp_path, tiny_dir):
    forget = [
        {"prompt": "The element iron has the symbol", "completion": " Fe"},
        {"prompt": "The element gold has the symbol", "completion": " Au"},
        {"prompt": "The element silver has the symbol", "completion": " Ag"},
        {"prompt": "The element copper has the symbol", "completion": " Cu"},
    ]
    retain = [
        {"prompt": "The capital of France is", "completion": " Paris"},
        {"prompt": "The capital of Spain is", "completion": " Madrid"},
        {"prompt": "The capital of Italy is", "completion": " Rome"},
        {"prompt": "The capital of Germany is", "completion": " Berlin"},
    ]
    out = tmp_path / "out"
    argv = ["erase", "--model", tiny_dir, "--method", "leace", "--layer", "1"]
    argv += ["--forget", write(tmp_path / "f.jsonl", forget)]
    argv += ["--retain", write(tmp_path / "r.jsonl", retain)]
    argv += ["--template", "raw", "--out", str(out)]
    assert main(argv) == 0
    card = ModelCard.load(out / "model" / "README.md")
    assert card.data.tags == ["excise", "concept-erasure", "leace"]
    assert card.data.pipeline_tag == "text-generation" and card.data.library_name == "transformers"
    text = card.text
    assert "## Erasure" in text and "## Before and after" in text
    assert "| forget_accuracy |" in text
    assert "## What the concept's prompts now produce" in text
    assert "| The element iron has the symbol | Fe |" in text
    report = json.loads((out / "report.json").read_text())
    assert report["examples"]["forget"][0]["prompt"] == forget[0]["prompt"]
    assert set(report["examples"]) == {"forget", "retain"}


def test_erase_card_from_contrast_prompts(tmp_path, tiny_dir):
    elements = ("iron", "gold", "silver", "copper")
    countries = ("France", "Spain", "Italy", "Germany")
    pos = write(tmp_path / "pos.jsonl", [{"text": f"The element {e} has"} for e in elements])
    neg = write(tmp_path / "neg.jsonl", [{"text": f"The capital of {c} is"} for c in countries])
    out = tmp_path / "out"
    argv = ["erase", "--model", tiny_dir, "--method", "ablate", "--positive", pos]
    argv += ["--negative", neg, "--out", str(out), "--layer", "1", "--template", "raw"]
    assert main(argv) == 0
    card = ModelCard.load(out / "model" / "README.md")
    assert card.data.tags == ["excise", "concept-erasure", "ablate"]
    assert "**Prompts with the concept (--positive)**" in card.text
    assert "| The element iron has | – |" in card.text
    report = json.loads((out / "report.json").read_text())
    assert [len(rows) for rows in report["examples"].values()] == [4, 4]
