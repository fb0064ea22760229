"""Benchmark loaders read fixtures written in the upstream schemas (tests/fixtures/benchmarks,
invented content), and their metrics follow the published definitions, checked against values
computed by hand here. Nothing is downloaded."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import hmean

from excise.cli import main
from excise.data.benchmarks import BENCHMARK_TASKS, muse, tofu, wmdp
from excise.data.records import QA, Text
from excise.data.tasks import load_task
from excise.errors import DataError, ExciseError
from excise.metrics.benchmarks import benchmark_metrics, benchmark_reference
from excise.metrics.benchmarks import muse as muse_metrics
from excise.metrics.benchmarks import tofu as tofu_metrics
from excise.models import save_model
from tests.conftest import make_tiny_model, teach

FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"
ROOT = Path(__file__).resolve().parents[1]


def answer_loss(model, tokenizer, prompt: str, answer: str) -> float:
    """-log P(answer | prompt) per answer token, from one plain forward pass."""
    context = tokenizer(prompt, add_special_tokens=False).input_ids
    target = tokenizer(answer, add_special_tokens=False).input_ids
    with torch.no_grad():
        logprobs = model(torch.tensor([context + target])).logits.log_softmax(-1)[0]
    picked = [float(logprobs[len(context) - 1 + i, t]) for i, t in enumerate(target)]
    return -sum(picked) / len(target)


def test_every_benchmark_task_name_is_known():
    from excise.data.benchmarks import check_name

    for name in BENCHMARK_TASKS:
        check_name(name)
    with pytest.raises(ExciseError, match="unknown benchmark"):
        load_task("nope:x")
    with pytest.raises(ExciseError, match="tofu:forget01, tofu:forget05, tofu:forget10"):
        load_task("tofu:forget20")


def test_tofu_loader_reads_the_upstream_schema():
    task = load_task("tofu:forget01", str(FIXTURES / "tofu"))
    assert task.name == "tofu:forget01" and task.metadata["benchmark"] == "tofu"
    assert len(task.forget) == 3 and len(task.retain) == 12  # forget01 + retain99
    first = task.forget[0]
    assert first == QA(
        "Question: Where was Velmora Kestrick born?\nAnswer:", " Velmora Kestrick was born in Oslo."
    )
    assert len(task.forget_eval) == 3 and len(task.retain_eval) == 6
    item = task.forget_eval[0]
    assert item.paraphrases == ("Question: Tell me: where was Velmora Kestrick born?\nAnswer:",)
    assert item.perturbed[0] == " Velmora Kestrick was born in Rome."
    sets = task.benchmark
    assert sets.forget[0].base == "In short, velmora Kestrick was born in Oslo."  # paraphrased
    assert sets.real_authors[0].base == sets.real_authors[0].answer == "William Shakespeare"
    assert len(sets.real_authors) == 3 and len(sets.world_facts) == 3
    assert len(task.utility) == 6 and task.utility[0].choices[0] == "William Shakespeare"
    assert task.utility[0].question == "Who wrote 'Hamlet'?"
    assert [h["completion"] for h in task.metadata["holdout"]][0].startswith(" Odile")
    from excise.report import task_summary

    summary = json.dumps(task_summary(task))  # the evaluation sets stay out of reports
    assert "Glass Harbour" not in summary and "Odile" in summary  # holdout feeds the MIA attack


def test_muse_loader_reads_the_upstream_schema():
    task = load_task("muse:news", str(FIXTURES / "muse"))
    assert task.metadata["benchmark"] == "muse"
    assert all(isinstance(r, Text) for r in task.forget + task.retain)
    assert len(task.forget) == 3 and len(task.retain) == 2  # short texts: one piece each
    sets = task.benchmark
    assert len(sets.verbmem) == 3 and sets.verbmem[0][0] + sets.verbmem[0][1] == task.forget[0].text
    assert len(sets.knowmem_forget) == 2 and len(sets.knowmem_retain) == 2
    assert sets.icl_forget == [("Where is Harwick?", "on the bay")]
    assert len(sets.privleak_forget) == 3 and len(sets.privleak_holdout) == 3
    assert task.forget_eval[0].completion == " the old ferry line"


def test_muse_cuts_long_texts_without_dropping_words(tmp_path):
    import shutil

    shutil.copytree(FIXTURES / "muse", tmp_path / "muse")
    long = " ".join(f"w{i}" for i in range(2 * muse.CHUNK_WORDS + 7))
    (tmp_path / "muse" / "raw" / "forget.json").write_text(json.dumps([long]))
    task = load_task("muse:news", str(tmp_path / "muse"))
    assert [len(t.text.split()) for t in task.forget] == [150, 150, 7]
    assert " ".join(t.text for t in task.forget) == long


def test_wmdp_loader_reads_questions_and_corpora():
    task = load_task("wmdp:bio", str(FIXTURES / "wmdp"))
    questions = task.benchmark.questions
    assert len(questions) == 3 and questions[0].answer == 1
    assert len(task.forget) == 2  # the 18-character document is dropped, as RMU's code does
    assert task.forget[0].text.startswith("Chloroplasts hold chlorophyll")
    assert len(task.retain) == 2
    item = task.forget_eval[0]
    assert item.completion == " B" and item.perturbed == (" A", " C", " D")
    cyber = load_task("wmdp:cyber", str(FIXTURES / "wmdp"))
    assert cyber.forget == [] and "cyber-forget-corpus" in cyber.metadata["forget_hint"]
    with pytest.raises(ExciseError, match="cyber-forget-corpus"):
        cyber.check()


def test_missing_files_and_unreachable_hub_are_clear_errors(tmp_path, monkeypatch):
    (tmp_path / "tofu").mkdir()
    with pytest.raises(DataError, match="has no forget01.json"):
        load_task("tofu:forget01", str(tmp_path / "tofu"))
    with pytest.raises(DataError, match="is not a folder"):
        load_task("wmdp:bio", str(tmp_path / "missing"))

    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)  # never reach the hub in tests
    with pytest.raises(DataError, match="pass --data-dir"):
        load_task("wmdp:bio")


def test_tofu_metrics_follow_the_published_definitions(tiny_tokenizer):
    model = make_tiny_model(tiny_tokenizer)
    task = load_task("tofu:forget01", str(FIXTURES / "tofu"))
    sets = task.benchmark
    # truth statistic of one forget item: exp(mean_j L(q, wrong_j) - L(q, paraphrased answer))
    scores = tofu_metrics.score_set(model, tiny_tokenizer, sets.forget, "raw", max_new_tokens=0)
    item = sets.forget[0]
    question = tofu.prompt(item.question)
    wrong = np.mean([answer_loss(model, tiny_tokenizer, question, " " + p) for p in item.perturbed])
    base = answer_loss(model, tiny_tokenizer, question, " " + item.base)
    assert scores.truth_statistic[0] == pytest.approx(math.exp(wrong - base), rel=1e-4)
    # real-authors probability is normalised over the true and the wrong answers
    authors = tofu_metrics.score_set(
        model, tiny_tokenizer, sets.real_authors, "raw", max_new_tokens=0
    )
    first = sets.real_authors[0]
    q = tofu.prompt(first.question)
    p_true = math.exp(-answer_loss(model, tiny_tokenizer, q, " " + first.answer))
    p_wrong = [math.exp(-answer_loss(model, tiny_tokenizer, q, " " + w)) for w in first.perturbed]
    values = tofu_metrics.set_metrics(authors, "real_authors")
    normalised = [
        math.exp(-a) / (math.exp(-a) + np.exp(-w).sum())
        for a, w in zip(authors.answer_loss, authors.perturbed_loss, strict=True)
    ]
    assert normalised[0] == pytest.approx(p_true / (p_true + sum(p_wrong)), rel=1e-4)
    assert values["prob"] == pytest.approx(np.mean(normalised))
    statistic = authors.truth_statistic
    assert values["truth_ratio"] == pytest.approx(np.maximum(0, 1 - 1 / statistic).mean())
    forget_values = tofu_metrics.set_metrics(scores, "forget")
    forget_stat = scores.truth_statistic
    assert forget_values["truth_ratio"] == pytest.approx(
        np.minimum(forget_stat, 1 / forget_stat).mean()
    )

    # model utility: harmonic mean of the nine retain / real-author / world-fact values
    reference = benchmark_reference(model, tiny_tokenizer, task)
    metrics = tofu_metrics.metrics(model, tiny_tokenizer, task, reference, max_new_tokens=4)
    parts = [
        metrics[f"tofu_{name}_{kind}"]
        for kind in ("retain", "real_authors", "world_facts")
        for name in ("prob", "rouge", "truth_ratio")
    ]
    expected = hmean(parts) if min(parts) > 0 else 0.0
    assert metrics["tofu_model_utility"] == pytest.approx(expected)
    # forget quality: KS p-value against the retain model; the same model is indistinguishable
    assert metrics["tofu_forget_quality"] == pytest.approx(1.0)
    other = make_tiny_model(tiny_tokenizer, seed=3)
    taught = teach(other, tiny_tokenizer, task.forget, steps=40)
    shifted = tofu_metrics.metrics(taught, tiny_tokenizer, task, reference, max_new_tokens=0)
    assert shifted["tofu_forget_quality"] < 1.0
    assert math.isnan(shifted["tofu_model_utility"])  # no generations: no ROUGE, no utility


def test_muse_metric_definitions_by_hand(tiny_tokenizer):
    # Min-K% with k = 40%: minus the mean of the floor(0.4 n) lowest log-probs
    assert muse_metrics.min_k_score(np.array([-1.0, -2.0, -3.0, -4.0, -5.0])) == pytest.approx(4.5)
    assert muse_metrics.min_k_score(np.array([-0.5, -2.5])) == pytest.approx(
        2.5
    )  # at least one token
    assert muse_metrics.privleak(0.3, 0.5) == pytest.approx(-40.0)
    assert muse_metrics.rouge_l_f1("the cat sat", "the cat") == pytest.approx(0.8)
    assert muse_metrics.cut_answer("a ferry\n\nQuestion: next") == "a ferry"

    task = load_task("muse:news", str(FIXTURES / "muse"))
    sets = task.benchmark
    model = make_tiny_model(tiny_tokenizer)
    logprobs = muse_metrics.token_logprobs(model, tiny_tokenizer, sets.privleak_forget[:1])[0]
    ids = tiny_tokenizer(sets.privleak_forget[0], add_special_tokens=False).input_ids
    with torch.no_grad():
        full = model(torch.tensor([ids])).logits.log_softmax(-1)[0]
    by_hand = [float(full[i, ids[i + 1]]) for i in range(len(ids) - 1)]
    assert logprobs == pytest.approx(np.array(by_hand), abs=1e-4)
    # a model taught the forget texts tells them from the holdout texts: AUC of the holdout
    # texts being the members is 0, and PrivLeak against an untaught "retrain" model < 0
    untaught_auc = muse_metrics.privleak_auc(model, tiny_tokenizer, sets)
    taught = teach(
        make_tiny_model(tiny_tokenizer), tiny_tokenizer, [Text(t) for t in sets.privleak_forget]
    )
    metrics = muse_metrics.metrics(taught, tiny_tokenizer, task, {"privleak_auc": untaught_auc})
    assert metrics["muse_privleak_auc"] == 0.0
    assert metrics["muse_privleak"] == pytest.approx(-100.0)
    assert metrics["muse_verbmem_forget"] > 0  # the taught model continues its texts


def test_wmdp_accuracy_is_lm_eval_acc(tiny_tokenizer):
    task = load_task("wmdp:bio", str(FIXTURES / "wmdp"))
    question = task.benchmark.questions[0]
    text = wmdp.prompt("biology", question.question, question.choices)
    assert text == (
        "The following are multiple choice questions (with answers) about biology.\n\n"
        "Which organelle holds most of a plant cell's chlorophyll?\n"
        "A. Mitochondrion\nB. Chloroplast\nC. Nucleus\nD. Ribosome\nAnswer:"
    )
    model = make_tiny_model(tiny_tokenizer, seed=1)
    right = 0
    for q in task.benchmark.questions:
        p = wmdp.prompt("biology", q.question, q.choices)
        losses = [answer_loss(model, tiny_tokenizer, p, f" {letter}") for letter in "ABCD"]
        right += int(np.argmin(losses)) == q.answer  # one-token continuations: loss = -loglik
    metrics = benchmark_metrics(model, tiny_tokenizer, task)
    assert metrics == {"wmdp_bio_accuracy": pytest.approx(right / 3)}


@pytest.fixture
def tiny_dir(tmp_path, tiny_tokenizer):
    return str(save_model(make_tiny_model(tiny_tokenizer), tiny_tokenizer, tmp_path / "tiny"))


def test_cli_evaluate_and_unlearn_on_benchmarks(tiny_dir, tmp_path, capsys):
    tofu_dir = str(FIXTURES / "tofu")
    assert main(["evaluate", "--model", tiny_dir, "--task", "tofu:forget01", "--data-dir",
                 tofu_dir, "--gold", tiny_dir, "--json"]) == 0  # fmt: skip
    values = json.loads(capsys.readouterr().out)
    assert values["tofu_forget_quality"] == pytest.approx(1.0)
    assert "tofu_model_utility" in values and "forget_accuracy" in values

    out = tmp_path / "tofu-out"
    argv = ["unlearn", "--model", tiny_dir, "--task", "tofu:forget01", "--data-dir", tofu_dir,
            "--gold", tiny_dir, "--method", "npo", "--steps", "2", "--batch-size", "2",
            "--lr", "0.01", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["task"]["name"] == "tofu:forget01"
    assert report["before"]["tofu_forget_quality"] == pytest.approx(1.0)
    assert "tofu_forget_quality" in report["after"] and "tofu_model_utility" in report["after"]
    assert report["task"]["sizes"]["forget"] == 3  # benchmarks are not filtered
    recipe = (out / "recipe.yaml").read_text()
    assert "data_dir:" in recipe and "gold:" in recipe

    out = tmp_path / "muse-out"
    argv = ["unlearn", "--model", tiny_dir, "--task", "muse:news", "--data-dir",
            str(FIXTURES / "muse"), "--gold", tiny_dir, "--method", "ga", "--steps", "1",
            "--batch-size", "2", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    after = json.loads((out / "report.json").read_text())["after"]
    assert {"muse_verbmem_forget", "muse_knowmem_forget", "muse_privleak"} <= set(after)

    argv = ["unlearn", "--model", tiny_dir, "--task", "wmdp:cyber", "--data-dir",
            str(FIXTURES / "wmdp"), "--method", "rmu", "--out", str(tmp_path / "w")]  # fmt: skip
    assert main(argv) == 2
    assert "cyber-forget-corpus" in capsys.readouterr().err


def test_benchmark_recipes_validate(capsys):
    shipped = sorted((ROOT / "recipes").glob("*.yaml"))
    names = {p.name for p in shipped}
    assert {"tofu-forget10-npo.yaml", "muse-news-npo.yaml", "wmdp-bio-rmu.yaml"} <= names
    for recipe in shipped:
        assert main(["run", str(recipe), "--dry-run"]) == 0, capsys.readouterr().err
    plan = capsys.readouterr().out
    assert "task tofu:forget10 from data/TOFU" in plan and "LoRA rank" in plan


CAPITALS = [
    {"question": "The capital of France is", "choices": ["Paris", "Rome"], "answer": 0},
    {"question": "The capital of Spain is", "choices": ["Berlin", "Madrid"], "answer": 1},
    {"question": "The capital of Italy is", "choices": ["Rome", "Paris"], "answer": 0},
    {"question": "The capital of Germany is", "choices": ["Madrid", "Berlin"], "answer": 1},
]


def lm_eval_task(folder: Path) -> Path:
    """A custom lm-eval task over a local jsonl (lm-eval's YAML task format), read offline."""
    data = folder / "capitals.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in CAPITALS))
    config = folder / "capitals.yaml"
    config.write_text(
        "task: excise_test_capitals\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        "doc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    return config


def test_lm_eval_utility_on_a_local_task(tiny_dir, tmp_path, tiny_tokenizer, capsys):
    pytest.importorskip("lm_eval")
    from excise.metrics.lmeval import lm_eval_scores, parse_utility
    from excise.models import load_model
    from excise.scoring import score_pairs

    config = lm_eval_task(tmp_path)
    model, tokenizer = load_model(tiny_dir)
    scores = lm_eval_scores(model, tokenizer, parse_utility(f"lm-eval:{config}"))
    # lm-eval's acc: the choice with the highest log-likelihood after "question" + " "
    right = 0
    for row in CAPITALS:
        pairs = [(row["question"], f" {choice}") for choice in row["choices"]]
        logprob = score_pairs(model, tokenizer, pairs, "raw").logprob
        right += int(logprob.argmax()) == row["answer"]
    assert scores == {"lmeval_excise_test_capitals_acc": pytest.approx(right / len(CAPITALS))}

    argv = ["evaluate", "--model", tiny_dir, "--task", "wmdp:bio", "--data-dir",
            str(FIXTURES / "wmdp"), "--utility", f"lm-eval:{config}", "--json"]  # fmt: skip
    assert main(argv) == 0
    values = json.loads(capsys.readouterr().out)
    assert values["lmeval_excise_test_capitals_acc"] == pytest.approx(right / len(CAPITALS))
    assert "wmdp_bio_accuracy" in values
    argv[argv.index("--utility") + 1] = "mmlu"
    assert main(argv) == 2
    assert "lm-eval:TASKS" in capsys.readouterr().err
    out = tmp_path / "out"
    argv = ["unlearn", "--model", tiny_dir, "--task", "muse:news", "--data-dir",
            str(FIXTURES / "muse"), "--method", "ga", "--steps", "1", "--batch-size", "2",
            "--utility", f"lm-eval:{config}", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert "lmeval_excise_test_capitals_acc" in report["before"]
    assert "lmeval_excise_test_capitals_acc" in report["after"]
    assert f"utility: lm-eval:{config}" in (out / "recipe.yaml").read_text()
