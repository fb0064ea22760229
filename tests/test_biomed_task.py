"""The built-in ``biomed`` task's data, the near-domain retain sets, and the knowledge filter over
near-retain and multiple-choice items."""

from __future__ import annotations

import json

import pytest

from excise.data.biomed import ARTICLES, FOLDER, bare
from excise.data.records import MC, QA, Text
from excise.data.task import BUILTIN
from excise.data.tasks import BUILTIN_TASKS, load_task


@pytest.fixture(scope="module")
def biomed():
    return load_task("biomed")


@pytest.fixture(scope="module")
def chem():
    return load_task("chem-symbols")


def test_biomed_is_a_builtin_task_with_every_set(biomed):
    assert "biomed" in BUILTIN_TASKS
    assert len(biomed.forget_eval) >= 300  # candidates; the filter keeps what the model knows
    assert len(biomed.forget_mc) == len(biomed.forget_eval)
    texts = [r for r in biomed.forget if isinstance(r, Text)]
    assert len(texts) >= 100  # the corpus is trained on beside the facts
    assert len(biomed.forget) == len(biomed.forget_eval) + len(texts)
    assert len(biomed.near_retain_eval) >= 100
    assert len(biomed.retain) >= 200 and len(biomed.retain_eval) >= 200
    assert not {q.prompt for q in biomed.retain} & {q.prompt for q in biomed.retain_eval}


def is_question(prompt: str) -> bool:
    return prompt.startswith("Question: ")


def test_every_fact_has_both_forms_wrong_answers_and_a_multiple_choice_form(biomed):
    bad = []
    for item, mc in zip(biomed.forget_eval, biomed.forget_mc, strict=True):
        wordings = (item.prompt, *item.paraphrases)
        ok = (
            item.completion.startswith(" ")
            and not item.completion.startswith(tuple(f" {a} " for a in ARTICLES))
            and not any(w.endswith(" ") for w in wordings)
            and len(set(wordings)) == len(wordings) >= 2
            and sum(map(is_question, wordings)) == 1  # one question form, the rest sentences
            and wordings[-1 if not is_question(item.prompt) else 0].startswith(
                f"Question: {mc.question}\nAnswer:"
            )
            and len(set(item.perturbed)) == 3
            and item.completion not in item.perturbed
            and mc.meta["source"] == item.prompt
            and len(set(mc.choices)) == 4
            and 0 <= mc.answer < 4
            and " " + mc.choices[mc.answer] == item.completion
            and item.meta["kind"]
        )
        if not ok:
            bad.append(item.prompt)
    assert not bad, bad[:5]


def test_no_two_facts_share_a_wording(biomed):
    seen = [w.lower() for q in biomed.forget_eval for w in (q.prompt, *q.paraphrases)]
    assert len(seen) == len(set(seen))


def test_the_right_choice_is_spread_over_the_four_positions(biomed):
    positions = [mc.answer for mc in biomed.forget_mc]
    assert min(positions.count(i) for i in range(4)) > len(positions) / 8


def _module(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"biomed_{name}", FOLDER / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_file_is_what_generate_py_writes():
    module = _module("generate")
    items = module.build(module.parse(FOLDER / "candidates.txt"))
    shipped = (FOLDER / "candidates.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.dumps(item, ensure_ascii=False) for item in items] == shipped


def test_the_calibration_covers_every_fact_and_wording_as_written():
    """A fact or wording added after the last calibrate.py run would silently lose its
    calibrated main prompt: the shipped calibration must cover the shipped text exactly."""
    module = _module("generate")
    facts = module.parse(FOLDER / "candidates.txt")
    lines = [json.loads(line) for line in (FOLDER / "calibration.jsonl").open(encoding="utf-8")]
    forget = [line for line in lines if line["set"] == "forget"]
    assert [(f["question"], f["answer"], tuple(f["wordings"])) for f in forget] == [
        (question, answer, wordings) for _, answer, question, wordings in facts
    ]
    near = {
        "near_biomed": FOLDER / "near_retain.jsonl",
        "near_chem": BUILTIN / "chem_symbols" / "near_retain.jsonl",
    }
    for name, path in near.items():
        rows = [json.loads(line) for line in path.open(encoding="utf-8")]
        mine = [(line["prompt"], line["completion"]) for line in lines if line["set"] == name]
        assert mine == [(r["prompt"], r["completion"]) for r in rows]


@pytest.mark.parametrize("name", ["biomed", "chem-symbols"])
def test_near_retain_asks_other_domains_never_a_trained_or_forget_prompt(name, biomed, chem):
    task = biomed if name == "biomed" else chem
    near = {q.prompt.lower() for q in task.near_retain_eval}
    assert len(near) == len(task.near_retain_eval) >= 90
    others = [q for q in (*task.forget_eval, *task.retain, *task.retain_eval) if isinstance(q, QA)]
    asked = {w.lower() for q in others for w in (q.prompt, *q.paraphrases)}
    assert not near & asked  # no near item is a forget or retain prompt or paraphrase
    # nor the same question and answer reworded: no near item ends like a forget wording
    forget = {
        (w.lower()[-24:], q.completion)
        for q in task.forget_eval
        for w in (q.prompt, *q.paraphrases)
    }
    assert not [
        q for q in task.near_retain_eval if (q.prompt.lower()[-24:], q.completion) in forget
    ]
    assert all(q.meta["domain"] and q.meta["word"] for q in task.near_retain_eval)


def test_biomed_near_retain_reuses_the_forget_domains_words(biomed):
    vocabulary = " ".join(
        [q.prompt + q.completion for q in biomed.forget_eval]
        + [r.text for r in biomed.forget if isinstance(r, Text)]
    ).lower()
    missing = [
        q.meta["word"] for q in biomed.near_retain_eval if bare(q.meta["word"]) not in vocabulary
    ]
    assert not missing


def test_chem_near_retain_uses_element_names_not_symbols(chem):
    names = " ".join(q.prompt + q.completion for q in chem.forget_eval).lower()
    for item in chem.near_retain_eval:
        assert "symbol" not in item.prompt and "atomic" not in item.prompt
        assert item.meta["word"] in names, item.meta["word"]


def test_biomed_retain_holds_no_forget_fact(biomed):
    answers = {bare(q.completion) for q in biomed.forget_eval}
    assert not [q for q in biomed.retain_eval if bare(q.completion) in answers]


def _filter_task(tiny_tokenizer):
    from dataclasses import replace

    from tests.conftest import make_tiny_model, teach, tiny_task

    task = tiny_task()
    near = [QA("Paris is the capital of", " France"), QA("Madrid is the capital of", " Spain")]
    questions = [
        MC("Iron has the symbol", ("Fe", "Au", "Ag", "Cu"), 0),
        MC("Gold has the symbol", ("Fe", "Au", "Ag", "Cu"), 1),
    ]
    task = replace(
        task,
        forget=[*task.forget, Text("Iron is a metal.")],
        near_retain_eval=near,
        forget_mc=questions,
    )
    taught = [
        *task.forget_eval[:2],
        *task.retain,
        near[0],
        QA("Madrid is the capital of", " Italy"),  # known wrongly: filtered out
        QA("Question: Iron has the symbol\nAnswer:", " Fe"),
        QA("Question: Gold has the symbol\nAnswer:", " Cu"),  # the wrong choice wins
    ]
    model = teach(make_tiny_model(tiny_tokenizer), tiny_tokenizer, taught, steps=80)
    return task, model


def test_filter_known_filters_near_retain_and_multiple_choice_in_one_pass(
    tmp_path, monkeypatch, tiny_tokenizer
):
    import excise.data.tasks as tasks

    monkeypatch.setenv("EXCISE_HOME", str(tmp_path))
    task, model = _filter_task(tiny_tokenizer)
    calls = []
    real = tasks.score_pairs

    def counting(model, tokenizer, pairs, template, **kwargs):
        calls.append((len(pairs), template))
        return real(model, tokenizer, pairs, template, **kwargs)

    monkeypatch.setattr(tasks, "score_pairs", counting)
    kept = tasks.filter_known(task, model, tiny_tokenizer)
    counts = kept.metadata["filter"]
    assert counts["near_retain"] == [1, 2] and counts["forget_mc"] == [1, 2]
    assert [q.completion for q in kept.near_retain_eval] == [" France"]
    assert [q.question for q in kept.forget_mc] == ["Iron has the symbol"]
    assert [q.completion for q in kept.forget_eval] == [" Fe", " Au"]
    assert kept.forget == [*kept.forget_eval, Text("Iron is a metal.")]  # the corpus stays
    # main prompts and paraphrases of every set in one call, the choices in one more
    assert len(calls) == 2 and calls[1] == (8, "raw")

    calls.clear()
    assert tasks.filter_known(task, model, tiny_tokenizer).forget_mc == kept.forget_mc
    assert not calls  # cached
    monkeypatch.setattr(tasks, "FILTER_VERSION", tasks.FILTER_VERSION + 1)
    tasks.filter_known(task, model, tiny_tokenizer)
    assert len(calls) == 2  # a new meaning of "known" is not answered from the old cache
    assert len(list((tmp_path / "filters").glob("*.json"))) == 2


@pytest.mark.slow
def test_the_bundled_model_knows_enough_of_biomed_and_the_near_retain_sets():
    """The knowledge filter on the bundled model, on the main prompts and near-retain sets only
    (paraphrases, multiple choice and retain cost minutes and are counted in the README)."""
    from dataclasses import replace

    from excise.data.tasks import filter_known
    from excise.models import load_model

    model, tokenizer = load_model("smollm2-135m", device=None)

    def main_prompts(task, facts=None):
        forget = [replace(q, paraphrases=()) for q in task.forget_eval[:facts]]
        return replace(
            task, forget=forget, forget_eval=forget, retain=[], retain_eval=[], forget_mc=[]
        )

    task = load_task("biomed")
    tokens = [len(tokenizer(q.completion).input_ids) for q in task.forget_eval]
    # answers are words without their article (" pancreas", " red blood cells"); many common
    # organ and cell words are one token (" heart", " liver")
    assert sum(n >= 2 for n in tokens) / len(tokens) >= 0.35
    known = filter_known(main_prompts(task), model, tokenizer)
    # floors under the counts measured 2026-12-07 (see the README); issue #23 asks for >= 150
    # facts and >= 60 near-retain items per task
    assert len(known.forget_eval) >= 150
    assert len(known.near_retain_eval) >= 60
    # chem-symbols: only its near-retain set is under test here (one fact: the filter needs one)
    chem = filter_known(main_prompts(load_task("chem-symbols"), facts=1), model, tokenizer)
    assert len(chem.near_retain_eval) >= 60


def test_package_data_ships_the_new_files():
    for path in ("biomed/candidates.jsonl", "biomed/corpus.jsonl", "biomed/near_retain.jsonl"):
        assert (BUILTIN / path).is_file()
    assert (BUILTIN / "chem_symbols" / "near_retain.jsonl").is_file()
