"""The Python API as a notebook uses it: ``excise.unlearn / audit / edit / erase`` on a tiny model
return typed results with the model and the report, write nothing without ``out``, and give the
report the command line writes for the same settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import PreTrainedModel

import excise
from excise.api import AuditResult, EditResult, EraseResult, UnlearnResult
from excise.cli import main
from excise.models import weights_sha256
from excise.report import clean
from tests.conftest import make_tiny_model, tree_digest

FORGET = [
    {"prompt": "The element iron has the symbol", "completion": " Fe"},
    {"prompt": "The element gold has the symbol", "completion": " Au"},
]
RETAIN = [
    {"prompt": "The capital of France is", "completion": " Paris"},
    {"prompt": "The capital of Spain is", "completion": " Madrid"},
]
REQUEST = {
    "case_id": "a",
    "prompt": "The capital of {}",
    "subject": "France",
    "target_new": "Rome",
    "target_true": "Paris",
    "paraphrases": ["The capital of France"],
    "neighborhood": [{"prompt": "The capital of Spain is", "target": "Madrid"}],
}
ELEMENTS = ["iron", "gold", "silver", "copper"]
COUNTRIES = ["France", "Spain", "Italy", "Germany"]
ENDINGS = ["", " and", " with", " in"]


def jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture
def work(tmp_path, tiny_tokenizer, monkeypatch):
    """A folder with a tiny model and data files; caches go elsewhere (EXCISE_HOME)."""
    monkeypatch.setenv("EXCISE_HOME", str(tmp_path / "home"))
    folder = tmp_path / "work"
    folder.mkdir()
    excise.save_model(make_tiny_model(tiny_tokenizer), tiny_tokenizer, folder / "tiny")
    texts = {
        "positive": [f"The element {e} has the symbol{s}" for e in ELEMENTS for s in ENDINGS],
        "negative": [f"The capital of {c} is{s}" for c in COUNTRIES for s in ENDINGS],
    }
    return {
        "folder": folder,
        "model": str(folder / "tiny"),
        "forget": jsonl(folder / "forget.jsonl", FORGET),
        "retain": jsonl(folder / "retain.jsonl", RETAIN),
        "requests": jsonl(folder / "requests.jsonl", [REQUEST]),
        **{k: jsonl(folder / f"{k}.jsonl", [{"text": t} for t in v]) for k, v in texts.items()},
    }


def unchanged(work, run):
    """Run ``run()``; assert that not one file under the work folder changed."""
    before = tree_digest(work["folder"])
    result = run()
    assert tree_digest(work["folder"]) == before
    return result


def test_unlearn_returns_the_model_and_the_report_the_cli_writes(work, tmp_path, capsys):
    settings = {"model": work["model"], "forget": work["forget"], "retain": work["retain"]}
    result = unchanged(
        work,
        lambda: excise.unlearn(
            method="graddiff", template="raw", train={"steps": 2, "progress": False}, **settings
        ),
    )
    assert isinstance(result, UnlearnResult)
    assert isinstance(result.model, PreTrainedModel) and result.tokenizer is not None
    assert result.report["kind"] == "unlearn" and "forget_accuracy" in result.report["after"]

    out = tmp_path / "cli"
    argv = ["unlearn", "--model", work["model"], "--forget", work["forget"], "--method", "graddiff"]
    argv += ["--retain", work["retain"], "--steps", "2", "--template", "raw", "--quiet"]
    assert main([*argv, "--out", str(out)]) == 0, capsys.readouterr().err
    written = json.loads((out / "report.json").read_text())
    ours = json.loads(json.dumps(clean(result.report)))
    for key in ("before", "after", "loss_log", "method", "task", "model_sha256", "warnings"):
        assert ours[key] == written[key], key
    assert weights_sha256(result.model) == written["model_sha256"]


def test_audit_returns_the_audited_model_and_the_scorecard(work):
    result = unchanged(
        work,
        lambda: excise.audit(
            model=work["model"],
            original=work["model"],
            forget=work["forget"],
            retain=work["retain"],
            template="raw",
            attacks=["in_context"],
        ),
    )
    assert isinstance(result, AuditResult)
    assert isinstance(result.model, PreTrainedModel)
    card = result.report["audit"]["scorecard"]["forget_accuracy"]
    assert set(card["attacked"]) == {"in_context"}
    assert result.report["model_sha256"] == result.report["original_sha256"]


def test_edit_returns_the_edited_model_and_its_deltas(work):
    result = unchanged(
        work,
        lambda: excise.edit(
            model=work["model"],
            requests=work["requests"],
            method="ft",
            options={"layer": 0, "norm_constraint": 0.05, "lr": 1e-2, "steps": 5},
            generation=False,
            progress=False,
        ),
    )
    assert isinstance(result, EditResult)
    assert isinstance(result.model, PreTrainedModel)
    assert result.deltas and result.report["applied"] == 1 == result.report["requests"]


def test_erase_returns_the_changed_model_and_its_figures(work):
    result = unchanged(
        work,
        lambda: excise.erase(
            model=work["model"],
            method="ablate",
            positive=work["positive"],
            negative=work["negative"],
            layer=1,
            template="raw",
        ),
    )
    assert isinstance(result, EraseResult)
    assert isinstance(result.model, PreTrainedModel)
    assert result.report["layer"] == 1 == result.erasure.layer
    assert result.report["erasure"]["relative_projection_after"] < 1e-4


def test_a_bad_argument_is_an_excise_error_before_anything_loads(work, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("excise.models.load_model", refuse)
    with pytest.raises(excise.ExciseError, match="unknown method 'nope'"):
        excise.unlearn(method="nope", forget=work["forget"])
    with pytest.raises(excise.ExciseError, match="--positive and --negative go together"):
        excise.erase(method="leace", positive=work["positive"])
    with pytest.raises(excise.ExciseError, match="--sequential takes a batch size >= 1"):
        excise.edit(requests=work["requests"], sequential=0)
    with pytest.raises(excise.ExciseError, match="unknown attack"):
        excise.audit(model=work["model"], original=work["model"], attacks=["nope"])
    with pytest.raises(excise.ExciseError, match=r"unknown argument\(s\) stepz for UnlearnJob"):
        excise.unlearn(method="ga", forget=work["forget"], stepz=3)
