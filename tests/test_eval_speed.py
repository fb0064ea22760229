"""One-pass evaluation equals the per-set evaluation it replaced; the original's evaluation is
cached; quick evaluation is a fixed sample; evaluation during training keeps the best weights."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from excise.data.encode import encode_pair, encode_text
from excise.data.records import MC, QA
from excise.metrics import evaluate, quick_task
from excise.metrics.generate import generate_answers
from excise.metrics.packed import score_examples
from excise.metrics.quality import harmonic_mean, truth_ratios, truth_score
from excise.metrics.rouge import rouge_l_recall
from excise.scoring import score_pairs, stats_for_examples
from tests.conftest import make_tiny_model, teach, tiny_task

# --- the per-set evaluation as it was before the one-pass form (the reference) -----------------


def _reference_qa(model, tokenizer, items, template, prefix, truth):
    stats = score_pairs(
        model, tokenizer, [(q.prompt, q.completion) for q in items], template, batch_size=32
    )
    norm = stats.logprob / stats.tokens.clamp(min=1)
    metrics = {
        f"{prefix}_accuracy": float(stats.correct.float().mean()),
        f"{prefix}_prob": float(torch.exp(norm).mean()),
    }
    with_wrong = [i for i, q in enumerate(items) if q.perturbed]
    if truth and with_wrong:
        pairs = [(items[i].prompt, w) for i in with_wrong for w in items[i].perturbed]
        wrong = score_pairs(model, tokenizer, pairs, template, batch_size=32)
        wrong_norm = wrong.logprob / wrong.tokens.clamp(min=1)
        groups, start = [], 0
        for i in with_wrong:
            groups.append(wrong_norm[start : start + len(items[i].perturbed)])
            start += len(items[i].perturbed)
        metrics[f"{prefix}_truth"] = truth_score(truth_ratios(norm[with_wrong], groups))
    return metrics


def _reference_mc(model, tokenizer, questions):
    pairs = [(f"Question: {q.question}\nAnswer:", f" {c}") for q in questions for c in q.choices]
    stats = score_pairs(model, tokenizer, pairs, "raw", batch_size=32)
    right, start = 0, 0
    for q in questions:
        right += int(int(stats.logprob[start : start + len(q.choices)].argmax()) == q.answer)
        start += len(q.choices)
    return right / len(questions)


def _reference_evaluate(model, tokenizer, task, generate=16):
    metrics = {}
    for prefix, items, truth in (
        ("forget", task.forget_eval, True),
        ("paraphrase", task.paraphrases, False),
        ("retain", task.retain_eval, True),
        ("near_retain", task.near_retain_eval, False),
    ):
        if not items:
            continue
        metrics.update(_reference_qa(model, tokenizer, items, task.template, prefix, truth))
        if generate and prefix in ("forget", "retain"):
            chosen = items[:: max(1, len(items) // generate)][:generate]
            answers = generate_answers(model, tokenizer, [q.prompt for q in chosen], task.template)
            metrics[f"{prefix}_rouge"] = float(
                np.mean(
                    [rouge_l_recall(q.completion, a) for q, a in zip(chosen, answers, strict=True)]
                )
            )
    if task.utility:
        metrics["mc_accuracy"] = _reference_mc(model, tokenizer, task.utility)
    if task.forget_mc:
        metrics["forget_mc_accuracy"] = _reference_mc(model, tokenizer, task.forget_mc)
    if task.fluency:
        examples = [encode_text(tokenizer, t.text, i) for i, t in enumerate(task.fluency)]
        stats = stats_for_examples(model, examples, tokenizer.pad_token_id, batch_size=16)
        metrics["perplexity"] = math.exp(
            -float(stats.logprob.sum()) / max(1, int(stats.tokens.sum()))
        )
    parts = ("retain_prob", "retain_rouge", "retain_truth", "mc_accuracy")
    metrics["model_utility"] = harmonic_mean([metrics.get(k, float("nan")) for k in parts])
    return metrics


# --- a task with multi-token answers, wrong answers and choices (shared prompts) ----------------


def richer_task(template: str = "raw"):
    task = tiny_task(template)
    extra = [
        QA("The capital of France is", " Paris and Rome", (), (" Rome and Madrid", " Berlin")),
        QA("Iron", " has the symbol Fe", ("The element iron",), (" has the symbol Au",)),
        QA("The element gold has", " the symbol Au", (), ()),
    ]
    near = [QA("The town Velmora has the symbol", " Fe"), QA("Kestrick is", " not the capital")]
    forget_mc = [
        MC("The element iron has the symbol", ("Fe", "Au", "Ag", "Cu"), 0),
        MC("The element gold has the symbol", ("Fe and Au", "Au", "Ag is", "Cu"), 1),
    ]
    return replace(
        task,
        forget_eval=task.forget_eval + extra,
        retain_eval=task.retain_eval + extra[:1],
        near_retain_eval=near,
        forget_mc=forget_mc,
        utility=task.utility + forget_mc,
        fluency=task.fluency * 2 + [replace(task.fluency[0], text="The capital of Italy is Rome.")],
    )


@pytest.fixture(scope="module")
def taught(tiny_tokenizer):
    task = tiny_task()
    return teach(
        make_tiny_model(tiny_tokenizer), tiny_tokenizer, task.forget + task.retain, steps=40
    )


@pytest.mark.parametrize("template", ["raw", "chat"])
@pytest.mark.parametrize("which", ["fresh", "taught"])
def test_one_pass_evaluate_equals_per_set_reference(tiny_tokenizer, taught, template, which):
    model = taught if which == "taught" else make_tiny_model(tiny_tokenizer, seed=3)
    task = richer_task(template)
    new = evaluate(model, tiny_tokenizer, task).metrics
    old = _reference_evaluate(model, tiny_tokenizer, task)
    assert list(new) == list(old)  # same metrics, in the same order
    for key, value in old.items():
        if key.endswith(("_accuracy", "_rouge")):
            assert new[key] == value, key  # exact: counts of the same greedy decisions
        else:
            assert new[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    if which == "taught" and template == "raw":  # the comparison means something: it knows
        assert old["forget_accuracy"] > 0 and old["retain_rouge"] > 0


def test_packed_rows_equal_one_example_per_row(tiny_tokenizer, tiny_model):
    pairs = [
        ("The capital of France is", " Paris"),
        ("The capital of France is", " Paris and Rome"),
        ("The capital of France is", " Rome is the capital of Italy"),
        ("Iron", " has the symbol Fe"),
        ("Iron", " Fe"),
        ("Gold", " Au"),
    ]
    examples = [encode_pair(tiny_tokenizer, p, c, "raw", i) for i, (p, c) in enumerate(pairs)]
    examples.append(encode_text(tiny_tokenizer, "The capital of Spain is Madrid.", 6))
    packed = score_examples(tiny_model, examples, tiny_tokenizer.pad_token_id, token_budget=64)
    for i, example in enumerate(examples):
        single = stats_for_examples(tiny_model, [example], tiny_tokenizer.pad_token_id)
        assert float(packed.logprob[i]) == pytest.approx(float(single.logprob[0]), abs=1e-5)
        assert int(packed.tokens[i]) == int(single.tokens[0])
        assert bool(packed.correct[i]) == bool(single.correct[0])


class _IgnoresMask(torch.nn.Module):
    """A model that drops the attention mask and positions: packing would be wrong for it."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None, position_ids=None, **_):
        return self.inner(input_ids=input_ids, use_cache=False)


def test_a_model_that_ignores_the_mask_is_scored_plainly(tiny_tokenizer, tiny_model):
    pairs = [("The capital of France is", c) for c in (" Paris", " Rome and Madrid", " Berlin")]
    examples = [encode_pair(tiny_tokenizer, p, c, "raw", i) for i, (p, c) in enumerate(pairs)]
    wrapped = _IgnoresMask(tiny_model)
    stats = score_examples(wrapped, examples, tiny_tokenizer.pad_token_id)
    for i, example in enumerate(examples):  # one per row: no mask needed, so the true values
        single = stats_for_examples(tiny_model, [example], tiny_tokenizer.pad_token_id)
        assert float(stats.logprob[i]) == pytest.approx(float(single.logprob[0]), abs=1e-5)


def test_quick_task_is_a_fixed_even_sample():
    task = richer_task()
    big = replace(task, forget_eval=task.forget_eval * 20, utility=task.utility * 20)
    quick = quick_task(big, {"qa": 10, "mc": 5})
    assert len(quick.forget_eval) == 10 and len(quick.utility) == 5
    assert quick.forget_eval == quick_task(big, {"qa": 10, "mc": 5}).forget_eval
    assert quick.forget_eval[0] == big.forget_eval[0]
    assert quick.forget_eval[1] == big.forget_eval[len(big.forget_eval) // 10]
    assert quick.forget == big.forget  # training sets untouched


# --- the job: cached "before", --eval none, --eval-every ----------------------------------------


@pytest.fixture
def files(tmp_path, tiny_tokenizer, monkeypatch):
    import json

    import excise

    monkeypatch.setenv("EXCISE_HOME", str(tmp_path / "home"))
    teach_task = tiny_task()
    model = teach(
        make_tiny_model(tiny_tokenizer), tiny_tokenizer, teach_task.forget + teach_task.retain
    )
    excise.save_model(model, tiny_tokenizer, tmp_path / "tiny")

    def rows(items):
        return "".join(
            json.dumps({"prompt": q.prompt, "completion": q.completion}) + "\n" for q in items
        )

    (tmp_path / "forget.jsonl").write_text(rows(teach_task.forget))
    (tmp_path / "retain.jsonl").write_text(rows(teach_task.retain))
    return {
        "model": str(tmp_path / "tiny"),
        "forget": str(tmp_path / "forget.jsonl"),
        "retain": str(tmp_path / "retain.jsonl"),
        "template": "raw",
    }


def test_the_second_run_reads_the_original_evaluation_from_the_cache(files, monkeypatch):
    import excise
    import excise.jobs.common as common

    calls = []
    real = common.evaluate
    monkeypatch.setattr(common, "evaluate", lambda *a, **k: calls.append(1) or real(*a, **k))
    train = {"steps": 1, "progress": False}
    first = excise.unlearn(method="ga", train=train, **files).report
    assert len(calls) == 2 and not first["evaluation"]["before_from_cache"]
    second = excise.unlearn(method="ga", train=train, **files).report
    assert len(calls) == 3  # only "after" ran
    assert second["evaluation"]["before_from_cache"]
    assert second["before"] == first["before"] and second["examples"] == first["examples"]
    quick = excise.unlearn(method="ga", train=train, eval="quick", **files).report
    assert len(calls) == 5 and not quick["evaluation"]["before_from_cache"]  # another key


def test_eval_none_measures_nothing_and_writes_a_report(files, tmp_path, capsys):
    from excise.cli import main

    out = tmp_path / "none"
    argv = ["unlearn", "--model", files["model"], "--forget", files["forget"], "--retain"]
    argv += [files["retain"], "--method", "ga", "--steps", "1", "--template", "raw", "--quiet"]
    assert main([*argv, "--eval", "none", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "no evaluation" in printed
    import json

    report = json.loads((out / "report.json").read_text())
    assert report["before"] == {} and report["after"] == {} and report["examples"] == {}
    assert (out / "report.html").is_file() and (out / "model" / "README.md").is_file()
    assert "evaluate before" not in report["timings_s"]


def test_eval_every_keeps_the_best_step_and_restores_its_weights(files, tiny_tokenizer):
    import excise
    from excise.metrics import evaluate as run_evaluate
    from excise.metrics.watch import CURVE_KEYS

    train = {"steps": 6, "lr": 3e-3, "progress": False}
    result = excise.unlearn(method="graddiff", train=train, eval_every=2, **files)
    section = result.report["eval_curve"]
    assert [row["step"] for row in section["curve"]] == [2, 4, 6]
    original = excise.load_model(files["model"])[0]
    quick = run_evaluate(original, tiny_tokenizer, _job_task(files), quick=True).metrics
    allowed = [
        r for r in section["curve"] if r["retain_accuracy"] >= 0.95 * quick["retain_accuracy"]
    ]
    assert allowed, section  # the test needs a step that keeps retain
    best = next(r for r in section["curve"] if r["step"] == section["best_step"])
    assert best["forget_accuracy"] == min(r["forget_accuracy"] for r in allowed)
    assert best["forget_accuracy"] < quick["forget_accuracy"]  # something was forgotten
    assert section["restored"] == (section["best_step"] != 6)
    # the weights kept are the best step's: their quick evaluation is that row
    now = run_evaluate(result.model, tiny_tokenizer, _job_task(files), quick=True, generate=0)
    for key in CURVE_KEYS:
        if key in best:
            assert now.metrics[key] == pytest.approx(best[key]), key


def _job_task(files):
    from excise.data.tasks import custom_task

    return custom_task(files["forget"], files["retain"], template="raw")


def test_bad_eval_choices_fail_before_loading():
    from excise.errors import ConfigError
    from excise.jobs.unlearn import UnlearnJob

    with pytest.raises(ConfigError, match="eval"):
        UnlearnJob(method="ga", task="chem-symbols", eval="some")
    with pytest.raises(ConfigError, match="eval_every"):
        UnlearnJob(method="ga", task="chem-symbols", eval_every=0)


def test_the_quick_audit_prints_the_worst_case_under_attack(files, capsys):
    import excise
    from excise.cli.show import print_unlearn
    from excise.jobs.common import QUICK_AUDIT

    train = {"steps": 2, "lr": 3e-3, "progress": False}
    report = excise.unlearn(method="graddiff", train=train, quick_audit=True, **files).report
    budget = report["audit"]["budgets"]["relearn"]
    assert list(budget["steps"]) == QUICK_AUDIT["relearn"]["steps"]
    assert report["audit"]["attacks"] == ["relearn"]
    print_unlearn(report, "out", 0.0)
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("worst case"))
    worst = report["audit"]["scorecard"]["forget_accuracy"]["worst"]
    assert f"{worst:.3f}" in line
