"""The audit attacks on tiny models: each finds knowledge a model has, and none invents it.

Every attack runs on a tiny model TAUGHT the facts (high forget accuracy under attack) and on a
FRESH one never taught them (stays low); neither run may change the model it was given.
"""

import math

import pytest
import torch

from excise.attacks import ATTACKS, all_attacks, get_attack, make_budget, run_attack
from excise.attacks.in_context import few_shot_items
from excise.attacks.quantize import quantize_weight
from excise.attacks.references import relearn_ratio
from excise.attacks.relearn import steps_to_threshold
from excise.attacks.scorecard import AUDIT_SCHEMA_VERSION, audit, recovery
from excise.data.records import MC, QA, Text
from excise.data.tasks import Task
from excise.errors import ConfigError, ExciseError
from excise.jobs.training import unlearn
from excise.metrics.quality import auc
from excise.models import clone_model, fingerprint
from excise.report.audit_html import audit_sections
from tests.conftest import make_tiny_model, teach

NAMES = ["Ana", "Bex", "Cal", "Dov", "Eli", "Fay", "Gus", "Hal", "Ivy", "Jon", "Kim", "Lou"]
OTHERS = ["Vic", "Wes", "Xan", "Yul", "Zed", "Bo", "Cy", "Di", "Ed", "Flo", "Gil", "Hu"]
WORDS = [" Fe", " Au", " Ag", " Cu", " iron", " gold", " silver", " copper", " answer", " idea"]
WORDS += [" know", " sure"]
CITIES = [" Paris", " Madrid", " Rome", " Berlin"]
FAST = {  # small budgets: the tiny model learns in a few steps at a large learning rate
    "relearn": {"steps": (0, 5, 10), "lr_full": 1e-3, "lr_lora": 1e-2, "lr_grid": (1e-3,)},
    "orthogonalize": {"candidates": 2},
    # the tiny tokenizer spells the shipped English text in the facts' byte pieces: a gentle rate
    "embed_head": {"steps": 10, "lr": 1e-4},
}


def fact_task() -> Task:
    """12 forget facts with unique one-token answers (and a paraphrase each), 8 retain facts."""
    forget = [
        QA(f"The word of {n} is", w, (f"{n} has the word",), (), {"kind": "word"})
        for n, w in zip(NAMES, WORDS, strict=True)
    ]
    retain = [QA(f"The city of {n} is", CITIES[i % 4]) for i, n in enumerate(OTHERS[:8])]
    utility = [
        MC("The capital of France is", ("Paris", "Rome"), 0),
        MC("The capital of Spain is", ("Berlin", "Madrid"), 1),
    ]
    # non-members for membership inference: new people, the same answers (never taught)
    holdout = [QA(f"The word of {n} is", WORDS[(i + 6) % 12]) for i, n in enumerate(OTHERS)]
    return Task(
        "facts", forget, retain, forget, retain, utility, [Text("The word of Ana is Fe.")],
        metadata={"holdout": holdout},
    )  # fmt: skip


def shared_answer_task() -> Task:
    """24 forget facts over 3 shared answers: what the answer-decoding probe needs."""
    forget = [QA(f"The home of {n} is", CITIES[i % 3]) for i, n in enumerate(NAMES + OTHERS)]
    return Task("shared", forget, [], forget, [], [], [])


@pytest.fixture(scope="module")
def task():
    return fact_task()


@pytest.fixture(scope="module")
def taught(tiny_tokenizer, task):
    facts = task.forget + task.paraphrases + task.retain
    shots = few_shot_items(task.forget, 3, "raw", "\n")  # the facts as the in-context attack asks
    return teach(make_tiny_model(tiny_tokenizer), tiny_tokenizer, facts + shots, steps=250)


@pytest.fixture(scope="module")
def fresh(tiny_tokenizer):
    return make_tiny_model(tiny_tokenizer, seed=1)


ANSWERING = [a for a in ATTACKS if a not in ("probe", "mia")]


@pytest.mark.parametrize("name", ANSWERING)
def test_attack_finds_taught_knowledge_and_invents_none(name, taught, fresh, tiny_tokenizer, task):
    for model, expect_high in ((taught, True), (fresh, False)):
        before = fingerprint(model)
        result = run_attack(name, model, tiny_tokenizer, task, budget=FAST.get(name))
        assert fingerprint(model) == before, f"{name} changed the model it attacked"
        score = result.metrics["forget_accuracy"]
        assert (score >= 0.75) if expect_high else (score <= 0.25), (name, expect_high, score)
        assert result.name == name and result.budget == vars(make_budget(name, FAST.get(name)))


def test_probe_decodes_taught_answers_only(tiny_tokenizer):
    shared = shared_answer_task()
    model = teach(make_tiny_model(tiny_tokenizer), tiny_tokenizer, shared.forget, steps=60)
    fresh = make_tiny_model(tiny_tokenizer, seed=3)
    taught_probe = run_attack("probe", model, tiny_tokenizer, shared)
    fresh_probe = run_attack("probe", fresh, tiny_tokenizer, shared)
    assert taught_probe.details["mode"] == "answer" and taught_probe.details["classes"] == 3
    # 12 test items, chance 1/3: 10 of 12 right is far above it (the p-value says so)
    assert taught_probe.metrics["probe_accuracy"] >= 0.75 and taught_probe.metrics["p_value"] < 0.05
    assert fresh_probe.metrics["probe_accuracy"] <= 0.6 and fresh_probe.metrics["p_value"] > 0.05
    assert len(taught_probe.details["layer_accuracy"]) == 4
    assert taught_probe.metrics["chance"] == pytest.approx(1 / 3)


def test_probe_falls_back_to_the_concept_when_answers_are_unique(taught, tiny_tokenizer, task):
    result = run_attack("probe", taught, tiny_tokenizer, task, budget={"layers": (1, 3)})
    assert result.details["mode"] == "concept" and result.details["layers"] == [1, 3]
    assert "forget_accuracy" not in result.metrics and result.metrics["chance"] == 0.5


def test_logit_lens_reads_intermediate_layers_and_reports_the_output_apart(
    taught, tiny_tokenizer, task
):
    result = run_attack("logit_lens", taught, tiny_tokenizer, task)
    assert result.details["layers"] == [0, 1, 2, 3] and result.metrics["best_layer"] < 3
    assert result.details["final_layer_top1"] == 1.0  # the taught model's own first tokens
    assert len(result.details["top1"]) == len(result.details["mean_rank"]) == 4


def test_mia_separates_members_only_in_a_taught_model(taught, fresh, tiny_tokenizer, task):
    for model, expect_high in ((taught, True), (fresh, False)):
        before = fingerprint(model)
        result = run_attack("mia", model, tiny_tokenizer, task)
        assert fingerprint(model) == before
        assert result.details["mode"] == "holdout"
        value = result.metrics["auc_loss"]
        assert (value >= 0.95) if expect_high else (abs(value - 0.5) <= 0.3), (expect_high, value)


def test_mia_without_non_members_is_skipped_and_gold_is_a_reference(
    taught, fresh, tiny_tokenizer, task
):
    bare = Task("bare", task.forget, task.retain, task.forget_eval, task.retain_eval, [], [])
    assert run_attack("mia", taught, tiny_tokenizer, bare).details["skipped"]
    versus_gold = run_attack("mia", taught, tiny_tokenizer, bare, gold=fresh)
    assert versus_gold.details["mode"] == "gold_reference"
    assert versus_gold.metrics["auc_loss"] == 1.0  # taught vs never-taught: perfectly separable


def test_auc_by_hand():
    assert auc([3, 4], [1, 2]) == 1.0
    assert auc([1, 2], [3, 4]) == 0.0
    assert auc([1, 1], [1, 1]) == 0.5  # all ties count half
    # pairs (m, n): (2,1) win, (2,2) tie, (2,3) loss, (4,*) three wins -> (1 + 0.5 + 3) / 6
    assert auc([2, 4], [1, 2, 3]) == pytest.approx(4.5 / 6)
    assert math.isnan(auc([], [1.0]))


def test_quantize_round_trip_error_is_bounded():
    torch.manual_seed(0)
    weight = torch.randn(16, 70)  # 70: the last group is partial
    errors = {}
    for bits, group in ((8, 32), (4, 32)):
        restored = quantize_weight(weight, bits, group)
        qmax = 2 ** (bits - 1) - 1
        for start in range(0, 70, group):
            block = weight[:, start : start + group]
            bound = block.abs().amax(1, keepdim=True) / qmax / 2
            assert ((restored[:, start : start + group] - block).abs() <= bound + 1e-6).all()
        assert len(torch.unique(restored[:, :32][0])) <= 2 * qmax + 1
        errors[bits] = float((restored - weight).abs().mean())
    assert errors[8] < errors[4] / 8
    assert torch.equal(
        quantize_weight(quantize_weight(weight, 4, 32), 4, 32), quantize_weight(weight, 4, 32)
    )


def test_quantize_reports_utility_beside_recovery(taught, tiny_tokenizer, task):
    result = run_attack(
        "quantize", taught, tiny_tokenizer, task, budget={"bits": (8,), "group_sizes": (16,)}
    )
    assert set(result.details["settings"][0]) >= {
        "forget_accuracy",
        "retain_accuracy",
        "mc_accuracy",
    }
    assert "int8_g16_retain_accuracy" in result.metrics


def test_relearn_brings_back_what_shallow_unlearning_hid(taught, fresh, tiny_tokenizer, task):
    hidden = clone_model(taught)
    options = {"steps": 45, "lr": 1e-3, "batch_size": 8, "progress": False}
    unlearn(hidden, tiny_tokenizer, task, "idk", train_options=options)
    budget = {"steps": (0, 5, 10, 20), "lr_lora": 3e-3, "variants": ("forget_lora",)}
    budget |= {"lr_grid": (3e-3,), "patience": 0}  # one configuration, the whole curve
    result = run_attack("relearn", hidden, tiny_tokenizer, task, budget=budget)
    curve = [row["forget_accuracy"] for row in result.curve]
    assert [row["step"] for row in result.curve] == [0, 5, 10, 20]
    assert "retain_accuracy" in result.details["configurations"]["forget_lora"]  # at its end
    assert result.details["clean_forget_accuracy"] == curve[0] <= 0.2
    assert max(curve) >= curve[0] + 0.15  # held-out facts come back from training on the others
    # control: the same training teaches a model that never knew them nothing about half B
    control = run_attack("relearn", fresh, tiny_tokenizer, task, budget=budget)
    assert max(row["forget_accuracy"] for row in control.curve) == 0.0


def test_steps_to_threshold_and_relearn_ratio_by_hand():
    curve = [
        {"variant": "a", "step": 0, "forget_accuracy": 0.0},
        {"variant": "a", "step": 10, "forget_accuracy": 0.4},
        {"variant": "a", "step": 5, "forget_accuracy": 0.5},
        {"variant": "b", "step": 0, "forget_accuracy": 0.9},
    ]
    assert steps_to_threshold(curve, 0.45, variant="a") == 5
    assert steps_to_threshold(curve, 0.6, variant="a") is None
    assert steps_to_threshold(curve, 0.6, variant="b") == 0
    assert relearn_ratio(10, 40, 50) == {"ratio": 0.25, "bound": "exact"}
    assert relearn_ratio(None, 25, 50) == {"ratio": 2.0, "bound": "lower"}
    assert relearn_ratio(10, None, 50) == {"ratio": 0.2, "bound": "upper"}
    assert relearn_ratio(None, None, 50)["ratio"] is None
    assert relearn_ratio(5, 0, 50) == {"ratio": None, "bound": "gold_at_start"}


def test_recovery_by_hand():
    assert recovery(0.6, 0.2, 1.0) == pytest.approx(0.5)
    assert recovery(0.2, 0.2, 1.0) == 0.0
    assert recovery(0.9, 0.5, 0.5) is None  # nothing was removed
    assert recovery(float("nan"), 0.2, 1.0) is None


def test_audit_scorecard_and_html(taught, fresh, tiny_tokenizer, task):
    before = fingerprint(fresh)
    report = audit(
        fresh, tiny_tokenizer, task, original=taught, gold=fresh,
        attacks=["paraphrase", "quantize", "probe", "relearn"],
        budgets={"relearn": {"steps": (0, 5), "variants": ("forget_full",), "lr_full": 1e-3}},
    )  # fmt: skip
    assert fingerprint(fresh) == before
    assert report["schema_version"] == AUDIT_SCHEMA_VERSION
    card = report["scorecard"]["forget_accuracy"]
    clean, original = card["clean"], report["clean"]["original"]["forget_accuracy"]
    assert set(card["attacked"]) == {"paraphrase", "quantize", "relearn"}  # probe: no answer rate
    expected = (card["attacked"]["paraphrase"] - clean) / (original - clean)
    assert report["recovery"]["paraphrase"] == pytest.approx(expected)
    assert card["worst"] == max([clean, *card["attacked"].values()])
    relearn = report["relearn"]
    assert set(relearn["curves"]) == {"unlearned", "original", "gold"}
    assert relearn["threshold"] == pytest.approx(0.5 * relearn["original_clean_half_b"])
    assert relearn["ratio"]["forget_full"]["bound"] in (
        "exact",
        "lower",
        "upper",
        "neither_reached",
    )
    assert report["budgets"]["relearn"]["steps"] == [0, 5] and "relearn" in report["timings_s"]
    html = "".join(audit_sections({"audit": report}))
    assert html.count("<svg") >= 3 and "relearn" in html and "paraphrase" in html


def test_registry_and_budget_errors(tiny_tokenizer, taught, task):
    assert list(all_attacks()) == list(ATTACKS)
    with pytest.raises(ExciseError, match="unknown attack"):
        get_attack("jailbreak")
    with pytest.raises(ConfigError, match="unknown option"):
        make_budget("quantize", {"bitz": 4})
    with pytest.raises(ConfigError):
        make_budget("relearn", {"variants": ("forget_qlora",)})
    with pytest.raises(ExciseError, match="unknown attack"):
        audit(taught, tiny_tokenizer, task, attacks=["nope"])


def test_relearning_time_on_half_b_times_but_never_counts_as_recovery(
    taught, fresh, tiny_tokenizer, task
):
    """``same_full`` trains on the scored half itself: it feeds the ratio against gold, not the
    worst case (any model learns answers it is trained on); with a gold model the audit adds it."""
    budget = {"steps": (0, 5), "variants": ("same_full",), "lr_full": 1e-2}
    result = run_attack("relearn", fresh, tiny_tokenizer, task, budget=budget)
    curve = {r["step"]: r["forget_accuracy"] for r in result.curve}
    assert curve[5] > curve[0]  # trained on the very items scored: learned
    assert result.metrics["forget_accuracy"] == curve[0]  # but not reported as recovered
    report = audit(
        fresh, tiny_tokenizer, task, original=taught, gold=fresh, attacks=["relearn"],
        budgets={"relearn": {"steps": (0, 5), "lr_full": 1e-2, "variants": ("forget_full",)}},
    )  # fmt: skip
    assert set(report["relearn"]["ratio"]) == {"forget_full"}  # named variants kept as given
    report = audit(
        fresh, tiny_tokenizer, task, original=taught, gold=fresh, attacks=["relearn"],
        budgets={"relearn": {"steps": (0, 5), "lr_full": 1e-2}},
    )  # fmt: skip
    assert "same_full" in report["relearn"]["ratio"]
    assert report["budgets"]["relearn"]["steps"] == [0, 1, 2, 3, 5]
    with pytest.raises(ConfigError, match="unknown relearn variant"):
        make_budget("relearn", {"variants": ("same_qlora",)})
