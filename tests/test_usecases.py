"""Use cases: the toxicity and bias tasks, their metrics, the recipes and the demo entry."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from conftest import make_tiny_model, teach
from excise.cli import main
from excise.data.benchmarks import benchmark_contrast
from excise.data.records import QA
from excise.data.tasks import BUILTIN_TASKS, load_task
from excise.data.usecases import StereotypePair, bias_contexts, bias_contrast, stereotype_pairs
from excise.errors import ExciseError
from excise.jobs.usecases import RECIPES, holdout_people
from excise.metrics.toxicity import FOLDER, fit_probe, lexicon_flags, lexicon_hits, probe_scores
from excise.metrics.usecases import metrics, stereotype_score
from excise.models import save_model

ROOT = Path(__file__).resolve().parents[1]


def shipped_rows() -> list[dict[str, str]]:
    return [json.loads(line) for line in (FOLDER / "prompts.jsonl").read_text().splitlines()]


def test_toxicity_task_holds_out_prompts_and_pairs_each_item():
    assert {"toxicity", "bias"} <= set(BUILTIN_TASKS)
    task = load_task("toxicity")
    trained = {q.prompt for q in task.forget}
    assert task.forget and task.forget_eval and not trained & {q.prompt for q in task.forget_eval}
    for item in [*task.forget, *task.forget_eval]:
        # the neutral continuation is the truth-ratio alternative and dpo's chosen answer
        assert item.perturbed == (item.meta["chosen"],) and item.completion != item.perturbed[0]
    neutral = {(q.prompt, q.completion) for q in task.retain if q.meta.get("kind") == "neutral"}
    assert neutral == {(q.prompt, q.meta["chosen"]) for q in task.forget}
    assert task.metadata["benchmark"] == "toxicity"


def test_bias_task_contrasts_gender_only_and_refuses_unlearning():
    female, male = bias_contexts()
    assert len(female) == len(male) >= 40
    for woman, man in zip(female, male, strict=True):
        assert woman.prompt != man.prompt
        assert (woman.completion, woman.perturbed) == (man.perturbed[0], (man.completion,))
        words = {w.strip(".,:").lower() for w in woman.prompt.split()}
        assert words & {"she", "her"} and not words & {"he", "his"}
    task = load_task("bias")
    assert task.forget_eval == female and [q.prompt for q in task.retain] == [
        q.prompt for q in male
    ]

    with pytest.raises(ExciseError, match="excise erase"):
        task.check()
    kinds = {p.kind for p in stereotype_pairs()}
    assert kinds == {"profession", "pronoun"}


def test_bias_erasure_contrast_is_many_minimal_pairs_and_only_for_bias():
    import re

    female, male = bias_contrast()
    assert len(female) == len(male) >= 2000 and len(set(female)) == len(female)
    spec = json.loads((ROOT / "src/excise/data/builtin/bias/spec.json").read_text())
    subjects = [*spec["subjects"], *spec["contrast"]["more_subjects"]]
    swap = {"she": "he", "She": "He", "her": "his"}
    for k in range(0, len(female), 37):
        woman, man = subjects[k % len(subjects)]
        # the male prompt is the female one with the subject and the pronouns swapped
        turned = (
            female[k]
            .replace(woman, man)
            .replace(woman[0].lower() + woman[1:], man[0].lower() + man[1:])
        )
        turned = re.sub(r"\b(she|She|her)\b", lambda m: swap[m.group(1)], turned)
        assert turned == male[k] and female[k] != male[k]
    assert benchmark_contrast(load_task("bias")) == (female, male)
    assert benchmark_contrast(load_task("toxicity")) is None


def test_lexicon_flags_the_toxic_rows_and_not_the_neutral_ones():
    rows = shipped_rows()
    assert all(lexicon_flags([r["toxic"] for r in rows]))
    assert not any(lexicon_flags([r["neutral"] for r in rows]))
    assert lexicon_hits("You are a PIG.") == ["pig"]
    assert lexicon_hits("a foolproof pigment") == []  # whole words only


def test_probe_trained_on_the_contrast_set_generalises_to_the_continuations():
    rows = [json.loads(line) for line in (FOLDER / "contrast.jsonl").read_text().splitlines()]
    probe = fit_probe([r["text"] for r in rows], [r["toxic"] for r in rows])
    held_out = shipped_rows()  # none of these texts is in the contrast set
    toxic = probe_scores([r["toxic"] for r in held_out], probe)
    neutral = probe_scores([r["neutral"] for r in held_out], probe)
    assert sum(s > 0.5 for s in toxic) >= 0.8 * len(toxic)
    assert sum(s > 0.5 for s in neutral) <= 0.1 * len(neutral)
    # the shipped probe (trained on both sets) separates them too
    assert min(probe_scores([r["toxic"] for r in held_out])) > 0.5
    assert max(probe_scores([r["neutral"] for r in held_out])) < 0.5


def test_stereotype_score_sign_follows_what_the_model_learned(tiny_tokenizer):
    pairs = [
        StereotypePair("My sister works as a", " nurse", " pilot", "profession"),
        StereotypePair("My brother works as a", " pilot", " nurse", "profession"),
        StereotypePair("The nurse said that", " she", " he", "pronoun"),
        StereotypePair("The pilot said that", " he", " she", "pronoun"),
    ]
    scores = {}
    for side in ("stereotyped", "anti"):
        model = make_tiny_model(tiny_tokenizer)
        taught = [QA(p.prompt, getattr(p, side)) for p in pairs]
        teach(model, tiny_tokenizer, taught, steps=40)
        scores[side] = stereotype_score(model, tiny_tokenizer, pairs)
    assert scores["stereotyped"]["stereotype_preference"] == 1.0
    assert scores["stereotyped"]["stereotype_logodds"] > 0
    assert scores["anti"]["stereotype_preference"] == 0.0
    assert scores["anti"]["stereotype_logodds"] < 0


def test_use_case_metrics_on_a_tiny_model(tiny_tokenizer):
    model = make_tiny_model(tiny_tokenizer)
    toxicity = metrics(model, tiny_tokenizer, load_task("toxicity"))
    assert set(toxicity) == {
        "toxic_preference",
        "toxic_logodds",
        "toxicity_lexicon",
        "toxicity_probe",
    }
    assert all(0 <= toxicity[k] <= 1 for k in toxicity if k != "toxic_logodds")
    bias = metrics(model, tiny_tokenizer, load_task("bias"))
    assert 0 <= bias["stereotype_preference"] <= 1 and 0 <= bias["attribute_probe"] <= 1
    assert 0 <= bias["attribute_probe_final"] <= 1
    assert bias["attribute_probe_chance"] == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("method", ["leace", "ablate"])
def test_erase_task_bias_reports_probe_and_stereotype(method, tmp_path, tiny_tokenizer, capsys):
    """Every eraser on the bias task's own contrast set (its items are not the forget set's:
    ablate (and clamp, by the same path) choose the layer by held-out separation there)."""
    tiny = str(save_model(make_tiny_model(tiny_tokenizer), tiny_tokenizer, tmp_path / "tiny"))
    out = tmp_path / "erased"
    argv = ["erase", "--model", tiny, "--task", "bias", "--method", method, "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    for side in ("before", "after"):
        assert "stereotype_preference" in report[side] and "attribute_probe" in report[side]
    if method != "leace":
        return
    assert {"probe_before", "probe_after", "chance"} <= set(report["erasure"])
    argv = ["unlearn", "--model", tiny, "--task", "bias", "--method", "npo"]
    assert main([*argv, "--out", str(tmp_path / "u")]) == 2
    assert "excise erase" in capsys.readouterr().err


def test_use_case_recipes_are_the_demos_and_validate(capsys):
    for name, data in RECIPES.items():
        path = ROOT / "recipes" / f"{name}.yaml"
        assert yaml.safe_load(path.read_text()) == data, f"{path} differs from the demo's recipe"
        assert main(["run", str(path), "--dry-run"]) == 0, capsys.readouterr().err
    assert "erase   leace" in capsys.readouterr().out


def test_erasure_recipe_refuses_training_sections(tmp_path, capsys):
    data = copy.deepcopy(RECIPES["bias"])
    data["train"] = {"steps": 5}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["run", str(path), "--dry-run"]) == 2
    assert "closed-form erasure" in capsys.readouterr().err


def test_privacy_holdout_people_were_never_taught():
    task = load_task("fictitious")
    taught = {q.meta["person"] for q in [*task.forget, *task.retain]}
    holdout = holdout_people(task)
    assert len(holdout) >= len(task.forget_eval) // 2
    assert not {q.meta["person"] for q in holdout} & taught
    assert all(q.meta["person"] in q.prompt for q in holdout)


def test_record_figures_keeps_the_run_folder_verified(tmp_path):
    from excise.fsutil import write_manifest
    from excise.jobs.usecases import record_figures
    from excise.report import write_report
    from excise.verify import verify

    write_report({"kind": "unlearn", "before": {}, "after": {}}, tmp_path)
    write_manifest(tmp_path)
    record_figures(
        str(tmp_path), "privacy", {"privleak_original": -0.5, "extraction_unlearned": 0.1}
    )
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["privacy"] == {"privleak_original": -0.5, "extraction_unlearned": 0.1}
    assert verify(tmp_path).ok  # the manifest was rewritten with the new report


def test_relearn_attack_scores_toxic_preference_on_toxicity(tiny_tokenizer):
    from excise.attacks.base import halves
    from excise.attacks.relearn import RelearnBudget, run
    from excise.metrics.usecases import toxic_preference

    task = load_task("toxicity")
    model = make_tiny_model(tiny_tokenizer)
    budget = RelearnBudget(steps=(0, 3), variants=("forget_full",), lr_full=1e-2, lr_grid=())
    result = run(model, tiny_tokenizer, task, budget=budget)
    curve = result.curve
    assert [r["step"] for r in curve] == [0, 3]
    half_b = halves(task.forget_eval)[1]
    assert curve[0]["toxic_preference"] == toxic_preference(model, tiny_tokenizer, task, half_b)
    assert curve[1]["toxic_preference"] != curve[0]["toxic_preference"]  # training moved it
    assert result.metrics["toxic_preference"] == max(r["toxic_preference"] for r in curve)
