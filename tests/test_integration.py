"""Integration tests on the real bundled model (SmolLM2-135M, CPU). Marked slow; `make test` runs them."""

import dataclasses
import json
import os

import pytest
import torch

from excise.cli import main
from excise.data.tasks import filter_known, load_task
from excise.metrics import qa_metrics
from excise.models import load_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundled():
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    yield load_model("smollm2-135m")
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def chem(bundled):
    model, tokenizer = bundled
    return filter_known(load_task("chem-symbols"), model, tokenizer)


def test_bundled_model_loads_and_knows_the_filtered_items(bundled, chem):
    model, tokenizer = bundled
    assert model.config.num_hidden_layers == 30 and tokenizer.pad_token is not None
    counts = chem.metadata["filter"]
    assert counts["forget"][0] >= 60 and counts["retain_eval"][0] + counts["retain_train"][0] >= 100
    metrics, _ = qa_metrics(model, tokenizer, chem.forget_eval[:40], "raw", "forget")
    assert metrics["forget_accuracy"] == 1.0  # filtered to what the model knows


def test_npo_lowers_forget_probability_on_the_real_model(bundled, chem, tmp_path):
    from excise.jobs.training import unlearn
    from excise.models import clone_model

    model, tokenizer = bundled
    model = clone_model(model)
    small = dataclasses.replace(
        chem, forget=chem.forget[:16], forget_eval=chem.forget_eval[:16], retain=chem.retain[:16]
    )
    before, _ = qa_metrics(model, tokenizer, small.forget_eval, "raw", "forget")
    unlearn(
        model, tokenizer, small, "npo", train_options={"steps": 6, "lr": 5e-5, "progress": False}
    )
    after, _ = qa_metrics(model, tokenizer, small.forget_eval, "raw", "forget")
    assert after["forget_prob"] < before["forget_prob"] * 0.7


def test_cli_unlearn_on_user_files_with_a_local_folder(bundled, tmp_path, capsys):
    """The hub-id code path (from_pretrained on a folder), user data files, and a full output."""
    from excise.models import save_model

    model, tokenizer = bundled
    folder = save_model(model, tokenizer, tmp_path / "local")
    rows = [{"prompt": "The element gold has the symbol", "completion": " Au"}]
    (tmp_path / "f.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "r.jsonl").write_text(
        json.dumps({"prompt": "The capital of France is", "completion": " Paris"})
    )
    out = tmp_path / "out"
    code = main(
        [
            "unlearn",
            "--model",
            str(folder),
            "--forget",
            str(tmp_path / "f.jsonl"),
            "--retain",
            str(tmp_path / "r.jsonl"),
            "--method",
            "simnpo",
            "--steps",
            "2",
            "--template",
            "raw",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(out / "model")
    assert reloaded.config.model_type == "llama"
