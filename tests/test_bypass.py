"""The bypass check: a behaviour suppressed by a bias along its direction is "bypassed"; the same
direction projected out of every residual writer is "removed"; an unchanged model is
"not_suppressed". The constructions are exact, so the figures are checked, not only the verdicts."""

import json

import pytest
import torch

from excise.activations.fold import add_to_stream, fold_affine
from excise.arch import num_layers
from excise.attacks.bypass import (
    Behaviour,
    BypassConfig,
    Split,
    behaviour_from_records,
    bypass_check,
    direction_layers,
    find_direction,
    relearn_speed,
    verdict_of,
)
from excise.cli import main
from excise.data.records import QA
from excise.errors import ConfigError, DataError
from excise.models import clone_model, save_model
from tests.conftest import make_tiny_model, teach

POSITIVE = [
    " the element iron has the symbol Fe",
    " the element gold has the symbol Au",
    " the element silver has the symbol Ag",
    " the element copper has the symbol Cu",
]
NEGATIVE = [
    " the capital of France is Paris",
    " the capital of Spain is Madrid",
    " the capital of Italy is Rome",
    " the capital of Germany is Berlin",
]
PROMPTS = ["Question:", "Answer:", "I know", "and", "in a town", "I have no idea"]
PROMPTS += ["not sure", "with me", "a question", "to me", "I can't say", "and an answer"]
ITEMS = [(p, POSITIVE[i % 4], NEGATIVE[(i + 1) % 4]) for i, p in enumerate(PROMPTS)]


@pytest.fixture(scope="module")
def setup(tiny_tokenizer):
    """A tiny model taught the behaviour (the positive continuations) and its direction."""
    behaviour = Behaviour([c for _, c, _ in ITEMS], [a for _, _, a in ITEMS], ITEMS)
    original = make_tiny_model(tiny_tokenizer)
    teach(original, tiny_tokenizer, [QA(p, c) for p, c, _ in ITEMS], steps=30)
    split = Split.of(behaviour)
    layers = direction_layers(num_layers(original), BypassConfig().candidates)
    texts = behaviour.positive + behaviour.negative
    layer, unit, states, _ = find_direction(original, tiny_tokenizer, texts, split, layers, "raw")
    return behaviour, original, layer, unit, split.gap(states @ unit)


def test_a_bias_along_the_direction_is_a_bypass(setup, tiny_tokenizer):
    behaviour, original, layer, unit, gap = setup
    suppressed = add_to_stream(clone_model(original), layer, -2.0 * gap * unit)
    result = bypass_check(original, suppressed, tiny_tokenizer, behaviour)
    assert result.layer == layer  # the same layer is found again
    assert result.behaviour["drop"] > 1.0  # the bias did suppress the behaviour
    assert result.present["direction_cosine"] > 0.999  # a constant shift keeps the difference
    assert abs(result.present["writer_alignment"] - 1.0) < 1e-5
    assert result.present["positive_projection"]["modified"] < (
        result.present["positive_projection"]["original"] - gap
    )
    by_scale = {row["scale"]: row["restoration"] for row in result.causal["steering"]}
    assert abs(by_scale[2.0] - 1.0) < 1e-3  # adding back exactly what the bias took away
    assert result.verdict == "bypassed" and result.bypassed
    assert json.loads(json.dumps(result.to_dict()))["bypassed"] is True


def test_the_direction_projected_out_of_the_weights_is_removed(setup, tiny_tokenizer):
    behaviour, original, layer, unit, _ = setup
    erased = clone_model(original)
    fold_affine(erased, torch.eye(unit.numel()) - torch.outer(unit, unit))
    assert original.config.tie_word_embeddings  # the clone unties its own config only
    result = bypass_check(original, erased, tiny_tokenizer, behaviour)
    assert result.behaviour["drop"] > 0.2  # erasing the direction lowered the behaviour
    assert abs(result.present["direction_cosine"]) < 1e-3
    assert result.present["writer_alignment"] < 1e-3
    assert abs(result.present["projection_gap_ratio"]) < 1e-3
    assert result.verdict == "removed" and not result.bypassed


def test_an_unchanged_model_is_not_suppressed(setup, tiny_tokenizer):
    behaviour, original, *_ = setup
    config = BypassConfig(relearn_steps=(0,))
    result = bypass_check(original, clone_model(original), tiny_tokenizer, behaviour, config=config)
    assert result.verdict == "not_suppressed" and abs(result.behaviour["drop"]) < 1e-4


def test_behaviour_from_records_and_bad_inputs():
    pairs = [QA(p, c, meta={"chosen": a}) for p, c, a in ITEMS]
    behaviour = behaviour_from_records(pairs)
    assert behaviour.kind == "margin" and behaviour.positive[0] == POSITIVE[0]
    answers = behaviour_from_records(
        [QA(p, c) for p, c, _ in ITEMS], [QA("a", n) for n in NEGATIVE]
    )
    assert answers.kind == "logprob" and answers.items[0][2] is None
    with pytest.raises(DataError, match="retain"):
        behaviour_from_records([QA(p, c) for p, c, _ in ITEMS])
    with pytest.raises(DataError, match=">= 4"):
        Behaviour(POSITIVE[:2], NEGATIVE, ITEMS)
    with pytest.raises(ConfigError):
        BypassConfig(scales=())
    with pytest.raises(ConfigError):
        BypassConfig(restore=0)


def test_bypass_check_command_writes_the_flag(setup, tiny_tokenizer, tmp_path, capsys):
    behaviour, original, layer, unit, gap = setup
    suppressed = add_to_stream(clone_model(original), layer, -2.0 * gap * unit)
    original_dir = save_model(original, tiny_tokenizer, tmp_path / "original")
    modified_dir = save_model(suppressed, tiny_tokenizer, tmp_path / "modified")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(json.dumps({"prompt": p, "chosen": a, "rejected": c}) + "\n" for p, c, a in ITEMS)
    )
    out = tmp_path / "out"
    argv = ["bypass-check", "--model", str(modified_dir), "--original", str(original_dir)]
    argv += ["--forget", str(pairs), "--template", "raw", "--out", str(out)]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["kind"] == "bypass" and report["bypass"]["verdict"] == "bypassed"
    assert report["bypass"]["bypassed"] is True
    assert "bypassed" in (out / "report.html").read_text()
    assert "bypassed" in capsys.readouterr().out
    # a bad option and a missing contrast are one-line errors with exit code 2
    assert main(argv + ["--overwrite", "--set", "nope=1"]) == 2
    assert "unknown option" in capsys.readouterr().err
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"prompt": "a", "completion": " b"}) + "\n")
    argv = ["bypass-check", "--model", str(modified_dir), "--original", str(original_dir)]
    assert main(argv + ["--forget", str(qa)]) == 2
    assert "retain" in capsys.readouterr().err


def test_direction_layers_leave_out_layer_zero_unless_asked():
    assert direction_layers(30, 8) == [3, 6, 9, 12, 14, 17, 20, 23]
    assert direction_layers(4, 8) == [1, 2]
    assert direction_layers(2, 8) == [1]  # a two-block model still gets a layer past the first
    assert direction_layers(30, 8, first=0)[0] == 0
    assert direction_layers(30, 1) == [13]
    with pytest.raises(ConfigError):
        BypassConfig(first_layer=-1)


def test_relearn_speed_needs_a_control_to_beat():
    config = BypassConfig(relearn_steps=(0, 1, 2, 5, 10))  # budget 10
    slow = {"start": -2.0, "target": -1.0, "steps_to_target": None}
    assert relearn_speed(2, slow, config) == {"fast": True, "speedup": 5.5, "judged": True}
    assert relearn_speed(None, slow, config)["fast"] is False
    assert relearn_speed(2, {**slow, "steps_to_target": 3}, config)["fast"] is False  # 1.5x
    assert relearn_speed(1, {**slow, "steps_to_target": 2}, config)["fast"] is True  # 2x
    # a control already at the target before training cannot time anything
    assert relearn_speed(1, {**slow, "start": -0.5}, config) == {
        "fast": False,
        "speedup": None,
        "judged": False,
    }
    with pytest.raises(ConfigError):
        BypassConfig(relearn_speedup=0.5)


def test_relearning_counts_only_when_faster_than_the_control(setup, tiny_tokenizer):
    behaviour, original, layer, unit, gap = setup
    suppressed = add_to_stream(clone_model(original), layer, -2.0 * gap * unit)
    # steering too weak to restore: the verdict rests on relearning alone
    config = BypassConfig(scales=(0.01,), relearn_steps=(0, 1, 2, 4, 8), relearn_lr=3e-3)
    default = bypass_check(original, suppressed, tiny_tokenizer, behaviour, config=config)
    causal, figures = default.causal, default.behaviour
    assert causal["steering_restoration"] < 0.1 and default.present["present"]
    steps = causal["relearn_steps_to_restore"]
    assert steps is not None  # relearning alone restores it: without a control, "bypassed"
    # pairs: the control is the original taught the alternatives, timed to fall as far
    control = causal["control"]
    assert control["model"] == "original, taught the alternative"
    assert control["direction"] == "fall"
    assert [r["step"] for r in control["relearn"]] == [0, 1, 2, 4, 8]
    assert control["start"] == control["relearn"][0]["score"] == figures["original"]
    assert control["target"] == pytest.approx(figures["original"] - 0.5 * figures["drop"])
    fell = [r["step"] for r in control["relearn"] if r["score"] <= control["target"]]
    assert control["steps_to_target"] == (fell[0] if fell else None)
    assert causal["relearn_judged"]
    assert causal["relearn_fast"] == (causal["relearn_speedup"] >= 2.0)
    assert default.verdict == ("bypassed" if causal["relearn_fast"] else "removed")
    # the same model as its own control relearns exactly as fast: never "fast", so "removed"
    same = bypass_check(
        original, suppressed, tiny_tokenizer, behaviour, config=config, control=suppressed
    )
    assert same.causal["control"]["model"] == "given"
    assert same.causal["control"]["direction"] == "rise"
    assert same.causal["control"]["steps_to_target"] == steps
    assert same.causal["relearn_speedup"] == 1.0 and not same.causal["relearn_fast"]
    assert same.verdict == "removed"
    # answers (no alternatives): the control is the original with the direction erased, which
    # can time relearning only if that removal suppressed the behaviour below the target
    answers = behaviour_from_records([QA(p, c) for p, c, _ in ITEMS], [QA("", n) for n in NEGATIVE])
    plain = bypass_check(original, suppressed, tiny_tokenizer, answers, config=config)
    erased = plain.causal["control"]
    assert erased["model"] == "original, direction erased" and erased["direction"] == "rise"
    assert plain.causal["relearn_judged"] == (erased["start"] < erased["target"])
    drop = plain.behaviour["drop"]
    assert plain.verdict == verdict_of(drop, plain.present["present"], plain.causal, config)


def test_verdict_of_each_case():
    config = BypassConfig()
    causal = {"restorable": False, "relearn_steps_to_restore": 2, "relearn_judged": False}
    assert verdict_of(0.01, True, causal, config) == "not_suppressed"
    assert verdict_of(1.0, False, {**causal, "restorable": True}, config) == "removed"
    assert verdict_of(1.0, True, {**causal, "restorable": True}, config) == "bypassed"
    assert verdict_of(1.0, True, causal, config) == "inconclusive"
    assert verdict_of(1.0, True, {**causal, "relearn_judged": True}, config) == "removed"
    assert verdict_of(1.0, True, {**causal, "relearn_steps_to_restore": None}, config) == "removed"


def test_pairs_report_the_preference_on_held_out_items(setup, tiny_tokenizer):
    from excise.scoring import score_pairs

    behaviour, original, layer, unit, gap = setup
    suppressed = add_to_stream(clone_model(original), layer, -2.0 * gap * unit)
    config = BypassConfig(relearn_steps=(0, 1))
    result = bypass_check(original, suppressed, tiny_tokenizer, behaviour, config=config)
    held = behaviour.items[1::2]
    for name, model in (("original", original), ("modified", suppressed)):
        first = score_pairs(model, tiny_tokenizer, [(p, c) for p, c, _ in held], "raw")
        second = score_pairs(model, tiny_tokenizer, [(p, a) for p, _, a in held], "raw")
        margin = first.logprob / first.tokens - second.logprob / second.tokens
        expected = float((margin > 0).float().mean())
        assert result.behaviour["preference"][name] == pytest.approx(expected)
    assert all(0.0 <= row["preference"] <= 1.0 for row in result.causal["relearn"])
    assert all(row["layer"] >= 1 for row in result.candidates)  # layer 0 is not a candidate
