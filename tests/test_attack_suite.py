"""The stronger default audit on tiny models: the relearning grid with its early stops, the
soft-prompt attack, many-shot prompts and the token-surgery probe (embed_head).

Each new attack recovers knowledge from a deliberately weak removal (the attack works) and stays
near zero on a model never taught the facts (it does not invent them); none changes the model.
"""

import pytest
import torch

from excise.attacks import ATTACKS, make_budget, run_attack
from excise.attacks.relearn import RelearnBudget, configurations, training_records
from excise.attacks.relearn_run import Stops, run_configuration
from excise.attacks.scorecard import audit
from excise.data.records import MC, QA, Text
from excise.data.tasks import Task
from excise.errors import ConfigError
from excise.jobs.training import unlearn
from excise.models import clone_model, fingerprint
from excise.report.audit_html import audit_sections
from tests.conftest import make_tiny_model, teach

NAMES = ["Ana", "Bex", "Cal", "Dov", "Eli", "Fay", "Gus", "Hal", "Ivy", "Jon", "Kim", "Lou"]
WORDS = [" Fe", " Au", " Ag", " Cu", " iron", " gold", " silver", " copper", " answer", " idea"]
WORDS += [" know", " sure"]
CITIES = [" Paris", " Madrid", " Rome", " Berlin"]
OTHERS = ["Vic", "Wes", "Xan", "Yul", "Zed", "Bo", "Cy", "Di"]


def fact_task() -> Task:
    forget = [QA(f"The word of {n} is", w) for n, w in zip(NAMES, WORDS, strict=True)]
    retain = [QA(f"The city of {n} is", CITIES[i % 4]) for i, n in enumerate(OTHERS)]
    utility = [MC("The capital of France is", ("Paris", "Rome"), 0)]
    return Task("facts", forget, retain, forget, retain, utility, [Text("The word of Ana is Fe.")])


@pytest.fixture(scope="module")
def task():
    return fact_task()


@pytest.fixture(scope="module")
def taught(tiny_tokenizer, task):
    return teach(make_tiny_model(tiny_tokenizer), tiny_tokenizer, task.forget + task.retain, 250)


@pytest.fixture(scope="module")
def fresh(tiny_tokenizer):
    return make_tiny_model(tiny_tokenizer, seed=1)


@pytest.fixture(scope="module")
def hidden(taught, tiny_tokenizer, task):
    """A weak removal: a few steps of "I don't know" training hide the answers, not remove them."""
    model = clone_model(taught)
    options = {"steps": 45, "lr": 1e-3, "batch_size": 8, "progress": False}
    unlearn(model, tiny_tokenizer, task, "idk", train_options=options)
    return model


def forget_acc(model, tokenizer, task):
    from excise.attacks.base import accuracy

    return accuracy(model, tokenizer, task.forget_eval, task.template)


def test_the_default_audit_runs_the_new_attacks():
    assert {"relearn", "soft_prompt", "embed_head", "in_context"} <= set(ATTACKS)
    grid = configurations(RelearnBudget())
    assert len(grid) == 18 and grid[0].name == "forget_full"  # the reference configuration first
    assert {c.lr for c in grid} == {1e-5, 1e-4, 1e-3}
    assert {c.variant.split("_")[0] for c in grid} == {"forget", "retain", "text"}
    assert make_budget("in_context").shots == (3, 16, 32)
    assert make_budget("in_context", {"shots": 4}).shots == (4,)
    with pytest.raises(ConfigError, match="learning rates"):
        make_budget("relearn", {"lr_grid": (0.0,)})
    with pytest.raises(ConfigError, match="soft_prompt"):
        make_budget("soft_prompt", {"tokens": 0})


def test_general_text_leaves_out_passages_that_name_a_forget_answer(task):
    budget = RelearnBudget(text_passages=400)
    texts = [r.text for r in training_records(task, "text_full", budget)]
    assert 0 < len(texts) <= 400
    assert not any(" gold " in f" {t} " or " iron " in f" {t} " for t in texts)


@pytest.mark.parametrize("name", ["soft_prompt", "relearn"])
def test_attack_recovers_a_hidden_answer_and_invents_none(
    name, hidden, fresh, tiny_tokenizer, task
):
    budgets = {
        "soft_prompt": {"steps": 40, "lr": 3e-2, "tokens": 4, "batch_size": 6},
        "relearn": {"steps": (0, 5, 10, 20), "variants": ("forget_lora",), "lr_lora": 3e-3,
                    "lr_grid": (3e-3,)},
    }  # fmt: skip
    scores = {}
    for label, model in (("hidden", hidden), ("fresh", fresh)):
        before = fingerprint(model)
        result = run_attack(name, model, tiny_tokenizer, task, budget=budgets[name])
        assert fingerprint(model) == before, f"{name} changed the model it attacked"
        scores[label] = result.metrics["forget_accuracy"]
    clean = forget_acc(hidden, tiny_tokenizer, task)
    assert clean <= 0.2 and scores["hidden"] >= clean + 0.3, (clean, scores)
    assert scores["fresh"] <= 0.2, scores


def test_soft_prompt_leaves_every_weight_and_gradient_alone(taught, tiny_tokenizer, task):
    model = clone_model(taught)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    run_attack("soft_prompt", model, tiny_tokenizer, task, budget={"steps": 3, "tokens": 2})
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]) and param.grad is None, name


def test_many_shot_reports_each_count_and_the_best(taught, fresh, tiny_tokenizer, task):
    result = run_attack("in_context", taught, tiny_tokenizer, task, budget={"shots": (1, 3, 32)})
    by_shots = result.details["by_shots"]
    assert set(by_shots) == {"1", "3", "11"}  # 32 shots capped at the other 11 items
    assert result.metrics["forget_accuracy"] == max(by_shots.values()) >= 0.75
    control = run_attack("in_context", fresh, tiny_tokenizer, task, budget={"shots": (3, 11)})
    assert control.metrics["forget_accuracy"] <= 0.25


SURGERY_WORDS = ["iron", "gold", "silver", "copper"]


def surgery_task() -> Task:
    """Facts whose subjects are ordinary words; general text uses the words, not the facts."""
    answers = [" Paris", " Madrid", " Rome", " Berlin"]
    forget = [QA(f"The {w} capital is", a) for w, a in zip(SURGERY_WORDS, answers, strict=True)]
    retain = [QA("The capital of France is", " Paris"), QA("The capital of Spain is", " Madrid")]
    return Task("surgery", forget, retain, forget, retain, [], [])


def surgery_text() -> list[str]:
    """Other uses of the subject words (what the forget facts are not about)."""
    symbols = [" Fe", " Au", " Cu", " Ag"]
    return [
        f"The element {w} has the symbol{s}." for w, s in zip(SURGERY_WORDS, symbols, strict=True)
    ]


def test_embed_head_exposes_token_surgery_and_invents_nothing(tiny_tokenizer, monkeypatch):
    import excise.attacks.relearn as relearn

    monkeypatch.setattr(relearn, "general_text", lambda count: surgery_text()[:count])
    task = surgery_task()
    records = task.forget + task.retain + [Text(t) for t in surgery_text()]
    taught = teach(make_tiny_model(tiny_tokenizer), tiny_tokenizer, records, steps=200)
    assert forget_acc(taught, tiny_tokenizer, task) == 1.0
    # token surgery: the subject words' embedding rows (tied to the head) replaced by noise
    cut = clone_model(taught)
    rows = {tiny_tokenizer(f" {w}", add_special_tokens=False).input_ids[-1] for w in SURGERY_WORDS}
    with torch.no_grad():
        weight = cut.get_input_embeddings().weight
        weight[sorted(rows)] = torch.randn(len(rows), weight.shape[1]) * weight.std()
    assert forget_acc(cut, tiny_tokenizer, task) <= 0.25
    budget = {"steps": 40, "lr": 1e-2, "text_passages": 16}
    before = fingerprint(cut)
    result = run_attack("embed_head", cut, tiny_tokenizer, task, budget=budget)
    assert fingerprint(cut) == before
    assert result.details["tied"] and result.details["trained"] == ["embed"]
    # the rows are retrained from the words' other uses: facts read through them come back
    assert result.metrics["forget_accuracy"] >= 0.5, result.metrics
    control = run_attack("embed_head", make_tiny_model(tiny_tokenizer, seed=2), tiny_tokenizer,
                         task, budget=budget)  # fmt: skip
    assert control.metrics["forget_accuracy"] <= 0.25


def test_grid_stops_early_and_names_the_winner(hidden, taught, tiny_tokenizer, task):
    budget = {
        "steps": (0, 5, 10, 20),
        "variants": ("forget_full", "forget_lora", "retain_full"),
        "lr_grid": (1e-2, 1e-5),
        "lr_full": 1e-2,
        "patience": 10,
    }
    result = run_attack("relearn", hidden, tiny_tokenizer, task, budget=budget, original=taught)
    ends = result.details["configurations"]
    assert result.details["grid"][0] == "forget_full"
    # lr 1e-5 moves nothing in 10 steps: stopped on the plateau, before the last checkpoint
    assert ends["forget_lora@1e-05"]["stopped"] in ("plateau", "finished")
    assert any(e["stopped"] == "plateau" and e["last_step"] < 20 for e in ends.values())
    worst = result.details["worst"]
    assert result.metrics["forget_accuracy"] == ends[worst["variant"]]["best_forget_accuracy"]
    assert {"source", "mode", "lr", "step"} <= set(worst)
    assert result.details["original_forget_accuracy"] == 1.0
    if any(e["stopped"] == "recovered" for e in ends.values()):  # the rest of the grid skipped
        assert result.details["skipped"]


def test_a_configuration_far_behind_the_leader_stops_at_step_10(hidden, tiny_tokenizer, task):
    budget = RelearnBudget(steps=(0, 5, 10, 20), lr_grid=(1e-5,))
    records = training_records(task, "retain_full", budget)
    stops = Stops(behind=0.5, leader=lambda step: 1.0 if step >= 10 else 0.0)
    rows, end = run_configuration(
        hidden, tiny_tokenizer, task, records, "retain_full", budget, lr=1e-5, stops=stops
    )
    assert end["stopped"] == "behind" and [r["step"] for r in rows] == [0, 5, 10]
    assert "retain_accuracy" not in end  # it cannot win the grid: its retain is not measured
    rows, end = run_configuration(
        hidden, tiny_tokenizer, task, records, "retain_full", budget, lr=1e-5,
        stops=Stops(behind=0.5, leader=lambda step: 1.0, floor=1.0),
    )  # fmt: skip
    assert end["stopped"] == "finished" and rows[-1]["step"] == 20  # below the floor: runs on


def test_a_diverging_configuration_fails_alone(hidden, tiny_tokenizer, task):
    budget = {"steps": (0, 2, 4), "variants": ("forget_full",), "lr_grid": (1e30,), "lr_full": 1e-3}
    result = run_attack("relearn", hidden, tiny_tokenizer, task, budget=budget)
    ends = result.details["configurations"]
    assert ends["forget_full@1e+30"]["stopped"] == "diverged"
    assert ends["forget_full"]["stopped"] in ("finished", "recovered")


def test_scorecard_headline_is_the_highest_recovery(hidden, taught, tiny_tokenizer, task):
    report = audit(
        hidden, tiny_tokenizer, task, original=taught, attacks=["paraphrase", "relearn", "in_context"],
        budgets={"relearn": {"steps": (0, 5, 10), "variants": ("forget_lora",), "lr_lora": 3e-3,
                             "lr_grid": (3e-3,)}, "in_context": {"shots": (3,)}},
    )  # fmt: skip
    head = report["scorecard"]["recovery"]
    finite = {k: v for k, v in report["recovery"].items() if v is not None}
    assert head["worst"] == max(finite.values())
    assert report["recovery"][head["worst_attack"]] == head["worst"]
    if head["worst_attack"] == "relearn":
        assert head["configuration"]["variant"] == "forget_lora"
    html = "".join(audit_sections({"audit": report}))
    assert "worst-case recovery" in html and "forget_lora" in html
