"""LoRA relearning side by side (excise.attacks.relearn_side) gives each configuration the curve
and weights it gets alone, and what a job already scored (excise.attacks.known) is read, not
scored again, with the values an audit computes itself."""

import pytest
import torch

from excise.attacks.base import halves, utility_metrics
from excise.attacks.known import Known, known_from_evaluation, known_utility
from excise.attacks.relearn import Configuration, RelearnBudget, training_records
from excise.attacks.relearn_run import Stops, with_lora
from excise.attacks.relearn_side import SideBySide, lora_init, make_lane, train_side_by_side
from excise.attacks.scorecard import audit
from excise.data.encode import encode_records
from excise.metrics import evaluate, quick_task
from excise.models import clone_model, fingerprint
from excise.train import TrainConfig, fine_tune
from tests.conftest import make_tiny_model, teach
from tests.test_attack_suite import fact_task

BUDGET = RelearnBudget(steps=(0, 3, 6), lora_rank=4, lora_alpha=8.0, batch_size=4, seed=3)
CONFIGS = [
    Configuration("forget_lora@0.003", "forget_lora", 3e-3, False),
    Configuration("forget_lora@0.001", "forget_lora", 1e-3, False),
    Configuration("retain_lora@0.003", "retain_lora", 3e-3, False),
]


@pytest.fixture(scope="module")
def task():
    return fact_task()


@pytest.fixture(scope="module")
def taught(tiny_tokenizer, task):
    return teach(make_tiny_model(tiny_tokenizer), tiny_tokenizer, task.forget + task.retain, 120)


def _train(model, tokenizer, task, configs):
    lanes = [
        make_lane(c, training_records(task, c.variant, BUDGET), tokenizer, task, BUDGET, Stops())
        for c in configs
    ]
    held_out = halves(task.forget_eval)[1]
    side = train_side_by_side(
        model, tokenizer, lanes, held_out=held_out, template="raw", budget=BUDGET, start=None
    )
    return side, lanes


def _weights(side: SideBySide, adapter: int) -> list[torch.Tensor]:
    return [p.detach().clone() for p in side.parameters(adapter)]


def test_side_by_side_equals_each_configuration_alone(taught, tiny_tokenizer, task):
    before = fingerprint(taught)
    together, lanes = _train(taught, tiny_tokenizer, task, CONFIGS)
    assert fingerprint(taught) == before  # trained on a copy
    for k, config in enumerate(CONFIGS):
        alone, (lane,) = _train(taught, tiny_tokenizer, task, [config])
        for a, b in zip(_weights(together, k), _weights(alone, 0), strict=True):
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
        assert [r["forget_accuracy"] for r in lanes[k].watch.rows] == [
            r["forget_accuracy"] for r in lane.watch.rows
        ]
    # the adapters moved (the test compares trained weights, not zeros)
    assert all(_weights(together, k)[1].abs().sum() > 0 for k in range(len(CONFIGS)))


def test_one_adapter_alone_equals_peft_through_the_training_loop(taught, tiny_tokenizer, task):
    config = CONFIGS[0]
    side, _ = _train(taught, tiny_tokenizer, task, [config])
    copy = with_lora(clone_model(taught), BUDGET.lora_rank, BUDGET.lora_alpha)
    peft_layers = [m for m in copy.modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
    assert len(peft_layers) == len(side.layers)
    for index, layer in enumerate(peft_layers):  # the same A as the side-by-side draw
        generator = torch.Generator().manual_seed(BUDGET.seed * 1_000_003 + index)
        init = lora_init(BUDGET.lora_rank, layer.in_features, generator)
        layer.lora_A["default"].weight.data.copy_(init)
    records = training_records(task, config.variant, BUDGET)
    settings = TrainConfig(
        steps=max(BUDGET.steps), lr=config.lr, batch_size=BUDGET.batch_size, seed=BUDGET.seed,
        progress=False,
    )  # fmt: skip
    fine_tune(copy, tiny_tokenizer, encode_records(tiny_tokenizer, records, "raw"), records,
              "raw", settings)  # fmt: skip
    mine = _weights(side, 0)
    theirs = [
        w.detach()
        for layer in peft_layers
        for w in (layer.lora_A["default"].weight, layer.lora_B["default"].weight)
    ]
    assert len(mine) == len(theirs)
    for a, b in zip(mine, theirs, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("quick", [False, True])
def test_known_answers_give_the_audit_its_own_values(taught, tiny_tokenizer, task, quick):
    evaluated = quick_task(task, {"qa": 5}) if quick else task
    result = evaluate(taught, tiny_tokenizer, evaluated, generate=0)
    known = known_from_evaluation(result.metrics, result.details, evaluated)
    scored = {(q.prompt, q.completion) for q in evaluated.forget_eval + evaluated.retain_eval}
    assert set(known.correct) == scored and len(scored) == (10 if quick else 20)
    if quick:  # the rest is scored, the values are those utility_metrics computes
        assert known_utility(taught, tiny_tokenizer, task, known) == utility_metrics(
            taught, tiny_tokenizer, task
        )
    else:  # everything was scored by the evaluation: no model is needed
        assert known_utility(None, tiny_tokenizer, task, known) == utility_metrics(
            taught, tiny_tokenizer, task
        )


def test_the_audit_reads_what_the_job_scored(taught, tiny_tokenizer, task):
    hidden = clone_model(taught)
    with torch.no_grad():
        hidden.get_output_embeddings().weight.mul_(0.5)
    budget = {"relearn": {"steps": (0, 2), "variants": ("forget_full",), "lr_grid": ()}}
    plain = audit(hidden, tiny_tokenizer, task, original=taught, attacks="relearn", budgets=budget)
    given = {}
    for role, model in (("unlearned", hidden), ("original", taught)):
        result = evaluate(model, tiny_tokenizer, task, generate=0)
        given[role] = known_from_evaluation(result.metrics, result.details, task)
    read = audit(
        hidden, tiny_tokenizer, task, original=taught, attacks="relearn", budgets=budget,
        known=given,
    )  # fmt: skip
    assert read["clean"] == plain["clean"]
    details = ("clean_forget_accuracy", "original_forget_accuracy")
    for key in details:
        assert (
            read["results"]["relearn"]["details"][key]
            == plain["results"]["relearn"]["details"][key]
        )
    assert read["results"]["relearn"]["curve"] == plain["results"]["relearn"]["curve"]
    assert isinstance(given["unlearned"], Known) and given["unlearned"].mc_accuracy is not None


def test_a_lane_that_recovers_ends_the_attacking_lanes_beside_it(taught, tiny_tokenizer, task):
    from excise.attacks.relearn import _side_by_side
    from excise.jobs.training import unlearn

    hidden = clone_model(taught)  # a weak removal: "I don't know" hides the answers
    options = {"steps": 30, "lr": 1e-3, "batch_size": 8, "progress": False}
    unlearn(hidden, tiny_tokenizer, task, "idk", train_options=options)
    budget = RelearnBudget(steps=(0, 5, 10, 20), patience=0, behind=0.0)
    configs = [
        Configuration("forget_lora@0.03", "forget_lora", 3e-2, False),
        Configuration("forget_lora@0.003", "forget_lora", 3e-3, False),
        Configuration("retain_lora", "retain_lora", 1e-3, True),  # a reference runs on
    ]
    records = {c.name: training_records(task, c.variant, budget) for c in configs}
    held_out = halves(task.forget_eval)[1]
    grid = {"curve": [], "ends": {}, "recovered_by": None, "target": 0.6, "recoverable": True}
    _side_by_side(hidden, tiny_tokenizer, task, budget, configs, records, held_out, None, grid)
    ends = grid["ends"]
    # half B 0.5 at the start; lr 3e-3 reaches 4 of 6 items at step 5 (0.667 >= 0.6)
    assert ends["forget_lora@0.003"]["stopped"] == "recovered"
    assert ends["forget_lora@0.003"]["last_step"] == 5
    assert grid["recovered_by"] == "forget_lora@0.003"
    assert ends["forget_lora@0.03"]["stopped"] == "overtaken"
    assert ends["forget_lora@0.03"]["last_step"] == 5
    assert ends["retain_lora"]["last_step"] == 20  # a reference configuration is never cut short
    assert all("retain_accuracy" in e for e in ends.values())


def test_the_originals_answers_are_kept_for_the_next_audit(
    taught, tiny_tokenizer, task, tmp_path, monkeypatch
):
    from excise.jobs.common import audit_known

    monkeypatch.setenv("EXCISE_HOME", str(tmp_path))
    first = audit_known(taught, tiny_tokenizer, task, "sha-of-taught")["original"]
    again = audit_known(None, tiny_tokenizer, task, "sha-of-taught")["original"]  # read, not scored
    assert again == first
    assert known_utility(None, tiny_tokenizer, task, again) == utility_metrics(
        taught, tiny_tokenizer, task
    )
