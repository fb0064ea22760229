"""Edit requests: the three file formats, their errors, the built-in counterfact-mini set."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from excise.editing.requests import (
    FORWARD_CATEGORIES,
    EditRequest,
    Probe,
    answer,
    builtin_requests,
    load_requests,
)
from excise.errors import ConfigError, DataError


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def write_json(path, rows) -> str:
    path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return str(path)


EXCISE_ROW = {
    "case_id": "lyon",
    "prompt": "The city of {} is in the country of",
    "subject": "Lyon",
    "target_new": "Italy",
    "target_true": "France",
    "paraphrases": ["Lyon is a city in the country of", "Lyon is located in the country of"],
    "neighborhood": [
        "The city of Marseille is in the country of",
        {"prompt": "The city of Munich is in the country of", "target": "Germany"},
    ],
    "probes": [
        {
            "prompt": "The capital of the country where Lyon is located is",
            "target": "Rome",
            "category": "compositional",
        },
        {
            "prompt": "The capital of France is",
            "target": "Paris",
            "category": "relation_specificity",
        },
    ],
    "relation": "located_in",
}


def test_excise_jsonl_fields_and_defaults(tmp_path):
    path = write_jsonl(
        tmp_path / "r.jsonl",
        [
            {"meta": {"name": "header lines are skipped"}},
            EXCISE_ROW,
            {"prompt": "The capital of {} is", "subject": "Spain", "target_new": " Lisbon"},
        ],
    )
    first, second = load_requests(path)
    assert first.case_id == "lyon" and first.text() == "The city of Lyon is in the country of"
    assert first.paraphrases == tuple(EXCISE_ROW["paraphrases"])
    # a plain-string neighbour keeps the request's true answer
    assert first.neighborhood == (
        Probe("The city of Marseille is in the country of", "France", "neighborhood"),
        Probe("The city of Munich is in the country of", "Germany", "neighborhood"),
    )
    assert [p.category for p in first.probes] == ["compositional", "relation_specificity"]
    assert first.meta["relation"] == "located_in"
    # case_id defaults to the record's position; targets lose their leading space
    assert second.case_id == "1" and second.target_new == "Lisbon" and second.target_true is None
    assert second.text() == "The capital of Spain is" and second.neighborhood == ()


def test_counterfact_json(tmp_path):
    record = {
        "case_id": 7,
        "pararel_idx": 2796,
        "requested_rewrite": {
            "prompt": "The mother tongue of {} is",
            "relation_id": "P103",
            "target_new": {"str": "English", "id": "Q1860"},
            "target_true": {"str": "French", "id": "Q150"},
            "subject": "Danielle Darrieux",
        },
        "paraphrase_prompts": [
            "Shayna does this and Yossel goes still and dies. Danielle Darrieux, a native",
            "An album was recorded for Capitol Nashville but never released. Danielle "
            "Darrieux spoke the language",
        ],
        "neighborhood_prompts": [
            "The mother tongue of Léon Blum is",
            "The native language of Montesquieu is",
        ],
        "attribute_prompts": ["J. R. R. Tolkien is a native speaker of"],
        "generation_prompts": ["Danielle Darrieux's mother tongue is"],
    }
    (request,) = load_requests(write_json(tmp_path / "counterfact.json", [record]))
    assert request.case_id == "7" and request.subject == "Danielle Darrieux"
    assert (request.target_new, request.target_true) == ("English", "French")
    assert request.text() == "The mother tongue of Danielle Darrieux is"
    assert len(request.paraphrases) == 2
    assert [(p.prompt, p.target) for p in request.neighborhood] == [
        ("The mother tongue of Léon Blum is", "French"),
        ("The native language of Montesquieu is", "French"),
    ]
    assert request.meta["relation"] == "P103"
    assert request.meta["generation_prompts"] == ["Danielle Darrieux's mother tongue is"]


def test_zsre_json(tmp_path):
    record = {
        "subject": "Watts Humphrey",
        "src": "What university did Watts Humphrey attend?",
        "pred": "Trinity College",
        "rephrase": "What university did Watts Humphrey take part in?",
        "alt": "University of Michigan",
        "answers": ["Illinois Institute of Technology"],
        "loc": "nq question: who played desmond doss father in hacksaw ridge",
        "loc_ans": "Hugo Weaving",
        "cond": "Trinity College >> University of Michigan || What university did Watts Humphrey attend?",
    }
    empty_alt = {**record, "alt": ""}  # some zsRE records have no alternative: skipped
    requests = load_requests(write_json(tmp_path / "zsre_mem_eval.json", [record, empty_alt]))
    (request,) = requests
    assert request.prompt == "What university did {} attend?"
    assert request.text() == record["src"]
    assert request.target_new == "University of Michigan"
    assert request.target_true == "Illinois Institute of Technology"
    assert request.paraphrases == ("What university did Watts Humphrey take part in?",)
    assert request.neighborhood == (
        Probe("Who played desmond doss father in hacksaw ridge?", "Hugo Weaving", "neighborhood"),
    )


def test_mquake_multi_hop_questions_go_with_the_last_rewrite(tmp_path):
    case = {
        "case_id": 3,
        "requested_rewrite": [
            {
                "prompt": "{} is a citizen of",
                "subject": "Ellie Kemper",
                "target_new": {"str": "Croatia"},
                "target_true": {"str": "United States of America"},
                "question": "What is the country of citizenship of Ellie Kemper?",
                "relation_id": "P27",
            },
            {
                "prompt": "The capital of {} is",
                "subject": "Croatia",
                "target_new": {"str": "Kotka"},
                "target_true": {"str": "Zagreb"},
                "question": "What is the capital of Croatia?",
                "relation_id": "P36",
            },
        ],
        "questions": ["What is the capital of the country Ellie Kemper is a citizen of?"],
        "answer": "Washington, D.C.",
        "new_answer": "Kotka",
        "new_answer_alias": [],
    }
    first, second = load_requests(write_json(tmp_path / "mquake.json", [case]))
    assert (first.case_id, second.case_id) == ("3.0", "3.1")
    assert first.probes == () and first.paraphrases == (case["requested_rewrite"][0]["question"],)
    assert second.probes == (Probe(case["questions"][0], "Kotka", "compositional"),)
    assert second.meta["needs"] == ["3.0", "3.1"]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([EXCISE_ROW, "{not json"], ":2: invalid JSON"),
        ([{**EXCISE_ROW, "target_new": ""}], "'target_new' must be a non-empty string"),
        ([{**EXCISE_ROW, "target_new": {"str": " "}}], "'target_new' must be a non-empty"),
        (
            [{**EXCISE_ROW, "prompt": "The city of Lyon is in the country of"}],
            "write it as 'The city of {} is in the country of'",
        ),
        ([{**EXCISE_ROW, "prompt": "{} and {} are in"}], "exactly one '{}'"),
        ([{**EXCISE_ROW, "target_new": "France"}], "equals 'target_true'"),
        (
            [{**EXCISE_ROW, "probes": [{"prompt": "x", "target": "y", "category": "vibes"}]}],
            "category 'vibes' is unknown",
        ),
        (
            [{k: v for k, v in EXCISE_ROW.items() if k != "target_true"}],
            "has no target and the request has no 'target_true'",
        ),
        ([EXCISE_ROW, EXCISE_ROW], ":2: case_id 'lyon' repeats"),
        ([{"question": "?", "answer": 1}], "unknown record"),
        (
            [
                {
                    "subject": "Watts Humphrey",
                    "src": "Which university did he attend?",
                    "alt": "MIT",
                    "answers": ["IIT"],
                }
            ],
            "subject 'Watts Humphrey' does not occur in the question",
        ),
    ],
)
def test_malformed_records_name_the_line(tmp_path, rows, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows),
        encoding="utf-8",
    )
    with pytest.raises(DataError) as error:
        load_requests(path)
    text = str(error.value)
    assert message in text and str(path) in text and "\n" not in text


def test_file_level_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_requests(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match=r"\.jsonl or \.json"):
        load_requests(tmp_path / "requests.csv")
    with pytest.raises(DataError, match="no edit requests"):
        load_requests(write_jsonl(tmp_path / "empty.jsonl", [{"meta": {}}]))
    bad = tmp_path / "bad.json"
    bad.write_text('[\n{"prompt": "x {}",\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.json:3: invalid JSON"):
        load_requests(bad)
    with pytest.raises(DataError, match="expected a JSON list"):
        load_requests(write_json(tmp_path / "obj.json", {"prompt": "x"}))
    with pytest.raises(ConfigError, match="counterfact-mini"):
        builtin_requests("counterfact-huge")


def test_direct_construction_validates():
    request = EditRequest("a", "{} is the capital of", "Rome", "France", "Italy")
    assert request.text() == "Rome is the capital of"
    with pytest.raises(DataError, match="still has a"):
        Probe("The capital of {} is", "Rome", "alias")


def test_answer_spacing():
    assert answer("Paris", "raw") == " Paris"
    assert answer(" Paris", "raw") == " Paris"  # never a double space
    assert answer("Paris", "chat") == "Paris"
    assert answer(" Paris ", "chat") == "Paris"
    with pytest.raises(ConfigError, match="unknown template"):
        answer("Paris", "alpaca")


def test_builtin_counterfact_mini_has_what_the_issue_asks():
    requests = builtin_requests()
    assert len(requests) >= 200
    # the issue's 500 sequential edits (batches of 10) each need a request of their own
    assert len(requests) >= 500
    assert len({r.case_id for r in requests}) == len(requests)
    for r in requests:
        assert r.subject in r.text() and "{}" not in r.text()
        assert r.target_true and r.target_new != r.target_true
        assert len(r.paraphrases) >= 2 and len(set(r.paraphrases)) == len(r.paraphrases)
        assert r.text() not in r.paraphrases
        assert len(r.neighborhood) >= 3
        assert all(n.category == "neighborhood" for n in r.neighborhood)
        # a neighbour is about another subject
        assert all(r.subject not in n.prompt for n in r.neighborhood)
        assert any(p.category in FORWARD_CATEGORIES for p in r.probes)
        for p in r.probes:
            if p.category == "relation_specificity":
                assert p.target != r.target_new
    categories = Counter(p.category for r in requests for p in r.probes)
    for category in (*FORWARD_CATEGORIES, "relation_specificity"):
        assert categories[category] >= 20, (category, categories)
    relations = Counter(r.meta["relation"] for r in requests)
    assert len(relations) >= 5, relations


def test_builtin_file_says_what_it_was_filtered_against():
    from excise.editing.requests import BUILTIN

    header = json.loads(BUILTIN["counterfact-mini"].read_text(encoding="utf-8").splitlines()[0])
    assert header["meta"]["filtered_against"] == "smollm2-135m"
    assert header["meta"]["requests"] == len(builtin_requests())


@pytest.mark.slow
def test_builtin_requests_agree_with_the_bundled_model():
    """The filter holds: true answers are the model's greedy answers, new targets are not."""
    from excise.models import load_model
    from excise.scoring import score_pairs

    model, tokenizer = load_model("smollm2-135m")
    sample = builtin_requests()[::7]
    right, wrong = [], []
    for r in sample:
        right += [(r.text(), r.target_true)] + [(p, r.target_true) for p in r.paraphrases]
        right += [(n.prompt, n.target) for n in r.neighborhood]
        wrong.append((r.text(), r.target_new))
    stats = score_pairs(
        model, tokenizer, [(p, answer(t, "raw")) for p, t in right + wrong], "raw", batch_size=64
    )
    correct = stats.correct.tolist()
    assert all(correct[: len(right)])
    assert not any(correct[len(right) :])
