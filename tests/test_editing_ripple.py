"""Ripple-aware editing: the implied facts come from the model and are edited with the request."""

from __future__ import annotations

import json

import pytest
import torch

from excise.data.records import QA
from excise.editing.requests import EditRequest
from excise.errors import DataError
from tests.conftest import corpus, make_tiny_model, teach

LAYERS = [0, 1]
# the subject ends each prompt: a tiny model reads a fact from its last token
EDIT = "The country of the city {}"
IMPLIED = "The capital for the city {}"
RELATIONS = {
    "relations": {
        "located_in": {
            "match": [EDIT],
            "implied": [{"ask": "The capital of {object} is", "edit": IMPLIED}],
        }
    }
}


@pytest.fixture(scope="module")
def taught(tiny_tokenizer):
    facts = [
        QA("The country of the city Lyon", " France"),
        QA("The country of the city Porto", " Spain"),
        QA("The capital of France is", " Paris"),
        QA("The capital of Italy is", " Rome"),
        QA("The capital of Spain is", " Madrid"),
        QA("The capital for the city Lyon", " Paris"),
        QA("The capital for the city Porto", " Madrid"),
    ]
    return teach(make_tiny_model(tiny_tokenizer), tiny_tokenizer, facts, steps=150)


@pytest.fixture
def relations_file(tmp_path):
    path = tmp_path / "relations.json"
    path.write_text(json.dumps(RELATIONS))
    return path


def _stats(model, tokenizer):
    from excise.editing.stats import KeyStats, compute

    texts = [t for t in corpus() if "capital" not in t]
    moments, count = compute(model, tokenizer, LAYERS, texts=texts, tokens=10_000, progress=False)
    return KeyStats(moments, count, "tiny", "text")


def _prefers(model, tokenizer, prompt: str, new: str, old: str) -> float:
    """log P(new) - log P(old) after ``prompt`` (per token means)."""
    from excise.scoring import score_pairs

    stats = score_pairs(model, tokenizer, [(prompt, " " + new), (prompt, " " + old)], "raw")
    means = stats.logprob / stats.tokens.clamp(min=1)
    return float(means[0] - means[1])


def _edit(model, tokenizer, ripple):
    from excise.editing import edit

    request = EditRequest("lyon", EDIT, "Lyon", "Italy", "France")
    return edit(
        model,
        tokenizer,
        [request],
        "memit",
        stats=_stats(model, tokenizer),
        progress=False,
        layers=LAYERS,
        prefixes=0,
        v_steps=40,
        mom2_weight=1.0,
        ripple=ripple,
    )


def test_ripple_edits_an_implied_fact_that_a_plain_edit_leaves(
    taught, tiny_tokenizer, relations_file
):
    implied = "The capital for the city Lyon"
    assert _prefers(taught, tiny_tokenizer, implied, "Rome", "Paris") < 0  # known before
    plain = _edit(taught, tiny_tokenizer, None)
    rippled = _edit(taught, tiny_tokenizer, str(relations_file))
    edit_prompt = "The country of the city Lyon"
    # both write the request itself
    assert _prefers(plain.model, tiny_tokenizer, edit_prompt, "Italy", "France") > 0
    assert _prefers(rippled.model, tiny_tokenizer, edit_prompt, "Italy", "France") > 0
    # the implied request came from the model's answer about the new object, not from a key
    assert [(i["target_new"], i["target_true"]) for i in rippled.implied] == [("Rome", "Paris")]
    assert rippled.batches[0]["implied"] == 1 and rippled.applied == 1
    # only the ripple edit moves the implied fact
    assert _prefers(plain.model, tiny_tokenizer, implied, "Rome", "Paris") < 0
    assert _prefers(rippled.model, tiny_tokenizer, implied, "Rome", "Paris") > 0


def test_shipped_relations_load_and_match_counterfact_mini():
    from excise.editing.requests import builtin_requests
    from excise.editing.ripple import load_relations, relation_of

    relations = load_relations()
    requests = builtin_requests()[:100]
    kinds = [relation_of(r, relations) for r in requests]
    assert sum(k is not None for k in kinds) >= 60
    for relation in relations.values():
        for implication in relation.implied:
            assert implication.asks or implication.target in ("{object}", "{subject}")
            assert all("{}" in e for e in implication.edits)
    # every kind of counterfact-mini has templates, the country kinds through their cities
    assert {k.name for k in kinds if k is not None} >= {"continent", "language", "capital"}
    assert any(len(i.asks) > 1 for i in relations["landmark_city"].implied)  # multi-hop


def test_implied_requests_follow_chains_other_entities_and_the_reverse(
    tmp_path, taught, tiny_tokenizer
):
    """A chain of questions, an entity read from the model (the subject's capital) and the
    reverse direction each give an extra request whose target is the model's own answer."""
    from excise.editing.ripple import implied_requests, load_relations

    relations = {
        "relations": {
            "moved": {
                "match": [EDIT],
                "implied": [
                    {"about": "The capital for the city {subject}", "target": "{object}",
                     "edit": EDIT},
                    {"about": "{object}", "target": "{subject}", "edit": "The home of {}"},
                ],
            },
            "hometown": {
                "match": ["The hometown of {}"],
                "implied": [
                    {"ask": ["The country of the city {object}", "The capital of {object} is"],
                     "edit": "The capital near {}"},
                ],
            },
        }
    }  # fmt: skip
    path = tmp_path / "relations.json"
    path.write_text(json.dumps(relations))
    requests = [
        EditRequest("porto", EDIT, "Porto", "France", "Spain"),
        EditRequest("anna", "The hometown of {}", "Anna", "Lyon"),
    ]
    implied = implied_requests(taught, tiny_tokenizer, requests, load_relations(path))
    got = [(i.parent, i.request.text(), i.request.target_new) for i in implied]
    assert got == [
        ("porto", "The country of the city Madrid", "France"),  # Porto's capital, from the model
        ("porto", "The home of France", "Porto"),  # the reverse direction
        ("anna", "The capital near Anna", "Paris"),  # Lyon -> France -> Paris
    ]
    assert implied[2].asked == "The country of the city Lyon / The capital of France is"


@pytest.mark.parametrize(
    ("generated", "expected"),
    [
        (" Reykjavik, which is", "Reykjavik"),
        (" the Euro.", "Euro"),
        (" North America and", "North America"),
        (" Buenos Aires is a city", "Buenos Aires"),
        (" Rome Rome Rome", "Rome"),
        ("\nThe", ""),
    ],
)
def test_first_answer_cuts_the_phrase(generated, expected):
    from excise.editing.ripple import first_answer

    assert first_answer(generated) == expected


@pytest.mark.parametrize(
    "content",
    [
        "{",
        '{"relations": {}}',
        '{"relations": {"r": {"implied": [{"ask": "no slot", "edit": "{} x"}]}}}',
        '{"relations": {"r": {"implied": [{"ask": "{object} x", "edit": "no subject"}]}}}',
        '{"relations": {"r": {"implied": [{"edit": "{} x"}]}}}',
        '{"relations": {"r": {"implied": [{"target": "{object}", "about": "x", "edit": "{} x"}]}}}',
    ],
)
def test_bad_relations_file_is_one_clear_error(tmp_path, content):
    from excise.editing.ripple import load_relations

    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DataError):
        load_relations(path)


def test_implied_requests_skip_what_the_subject_already_has(taught, tiny_tokenizer, relations_file):
    """An implied answer the model already gives for the subject is not edited again."""
    from excise.editing.ripple import implied_requests, load_relations

    relations = load_relations(relations_file)
    request = EditRequest("porto", EDIT, "Porto", "France", "Spain")
    same = EditRequest("lyon", EDIT, "Lyon", "France", "Spain")  # Lyon's is Paris already
    implied = implied_requests(taught, tiny_tokenizer, [request, same], relations)
    assert [(i.parent, i.request.target_new) for i in implied] == [("porto", "Paris")]


def test_cli_edit_with_ripple_and_guard_writes_the_implied_facts(
    taught, tiny_tokenizer, relations_file, tmp_path, monkeypatch
):
    from excise.cli import main
    from excise.models import save_model

    monkeypatch.setenv("EXCISE_HOME", str(tmp_path / "home"))
    base = tmp_path / "base"
    save_model(taught, tiny_tokenizer, base)
    requests = tmp_path / "requests.jsonl"
    rows = [
        {"case_id": "lyon", "prompt": EDIT, "subject": "Lyon", "target_new": "Italy"},
        {"case_id": "porto", "prompt": EDIT, "subject": "Porto", "target_new": "France"},
    ]
    requests.write_text("".join(json.dumps(r) + "\n" for r in rows))
    corpus_file = tmp_path / "corpus.jsonl"
    texts = [t for t in corpus() if "capital" not in t] * 30
    corpus_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = tmp_path / "edited"
    code = main([
        "edit", "--model", str(base), "--requests", str(requests), "--method", "alphaedit",
        "--stats-corpus", str(corpus_file), "--set", "layers=[0,1]", "--set", "stats_tokens=4000",
        "--set", "prefixes=0", "--set", "l2=0.01", "--preserve", "none", "--sequential", "1",
        "--ripple", str(relations_file), "--guard", "--no-generation", "--out", str(out),
        "--quiet",
    ])  # fmt: skip
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    implied = report["ripple"]["implied"]
    assert [(i["parent"], i["target_new"]) for i in implied] == [
        ("lyon", "Rome"),
        ("porto", "Paris"),
    ]
    assert [b["implied"] for b in report["batches"]] == [1, 1]
    assert report["guard"] is True and report["method"]["options"]["most_probable"] is True
    assert report["method"]["options"]["norm_anchor"] > 0


def test_cli_refuses_guard_for_rome_before_loading(tmp_path, capsys):
    from excise.cli import main

    code = main([
        "edit", "--task", "counterfact-mini", "--method", "rome", "--guard",
        "--out", str(tmp_path / "x"),
    ])  # fmt: skip
    assert code == 2
    assert "--guard works with memit and alphaedit" in capsys.readouterr().err


# towns named by words that are one token in the tiny vocabulary: with a subject of several
# tokens, which of them the taught model reads its facts from depends on how the tokenizer was
# trained, and a shift at the last one may have no lever on the answer
TOWNS = {"iron": ("France", "Paris"), "gold": ("Spain", "Madrid"), "silver": ("Italy", "Rome")}
TOWNS |= {"copper": ("Germany", "Berlin")}


@pytest.mark.parametrize("shared", [False, True])
def test_same_subject_requests_share_one_shift_and_both_take(tiny_tokenizer, shared):
    """Two requests on one subject, prompts alike up to it: their keys at the subject are
    identical, so with a shift each least squares writes the average of the two (each request
    gets part of its own change, and they dilute each other: not both take); one shared shift,
    optimised on both prompts, is written whole and both take."""
    from excise.editing import edit
    from excise.editing.locate import read_at
    from excise.editing.memit import MemitConfig
    from excise.editing.targets import optimise_deltas, request_rows

    facts = [QA(f"The town {c} is in the country of", " " + n) for c, (n, _) in TOWNS.items()]
    facts += [
        QA(f"The town {c} is a city whose capital is", " " + k) for c, (_, k) in TOWNS.items()
    ]
    model = teach(make_tiny_model(tiny_tokenizer), tiny_tokenizer, facts, steps=300)
    assert len(tiny_tokenizer.tokenize(" iron")) == 1
    requests = [
        EditRequest("a", "The town {} is in the country of", "iron", "Italy", "France"),
        EditRequest("b", "The town {} is a city whose capital is", "iron", "Rome", "Paris"),
    ]
    pad, top = tiny_tokenizer.pad_token_id, LAYERS[-1]
    rows = request_rows(tiny_tokenizer, requests, [""], "raw", target=False)
    keys = read_at(model, rows, LAYERS, pad, what="key")
    assert all(bool((keys[layer][0] == keys[layer][1]).all()) for layer in LAYERS)
    options = {"layers": LAYERS, "prefixes": 0, "v_steps": 100, "mom2_weight": 1.0}
    config = MemitConfig(**options, shared_subject=shared)
    shifts, _, _ = optimise_deltas(model, tiny_tokenizer, requests, top, config)
    before = read_at(model, rows, [top], pad, what="residual")[top]
    stats = _stats(model, tiny_tokenizer)
    result = edit(
        model,
        tiny_tokenizer,
        requests,
        "memit",
        stats=stats,
        progress=False,
        preserve="none",
        shared_subject=shared,
        **options,
    )
    written = read_at(result.model, rows, [top], pad, what="residual")[top] - before
    error = ((written - shifts).norm(dim=1) / shifts.norm(dim=1)).tolist()
    took = [
        _prefers(result.model, tiny_tokenizer, r.text(), r.target_new, r.target_true) > 0
        for r in requests
    ]
    if shared:
        assert torch.equal(shifts[0], shifts[1])
        assert max(error) < 0.05 and all(took), (error, took)
    else:  # two different shifts, one key: the write lands between them
        assert float(torch.cosine_similarity(shifts[0], shifts[1], dim=0)) < 0.95
        assert min(error) > 0.15 and not all(took), (error, took)


def test_shifts_are_shared_by_subject_across_chunks_and_returned_in_request_order(
    taught, tiny_tokenizer
):
    """A subject's requests join the chunk of its first one; results come back in the
    requests' order; a prompt that ends at the subject keeps its own shift."""
    from excise.editing.locate import read_at
    from excise.editing.targets import TargetConfig, optimise_deltas, request_rows, subject_groups

    requests = [
        EditRequest("a", "{} is in the country of", "Lyon", "Italy"),
        EditRequest("b", "{} is in the country of", "Porto", "France"),
        EditRequest("c", "{} is a city whose capital is", "Lyon", "Rome"),
        EditRequest("d", EDIT, "Lyon", "Spain"),  # ends at the subject
    ]
    assert subject_groups(requests) == [0, 1, 0, 2]
    assert subject_groups(requests, shared=False) == [0, 1, 2, 3]
    config = TargetConfig(v_steps=3, prefixes=0, chunk=1)
    shifts, bases, nll = optimise_deltas(taught, tiny_tokenizer, requests, 1, config)
    rows = request_rows(tiny_tokenizer, requests, [""], "raw", target=False)
    expected = read_at(taught, rows, [1], tiny_tokenizer.pad_token_id, what="residual")[1]
    assert torch.allclose(bases, expected, atol=1e-5) and len(nll) == 4
    assert torch.equal(shifts[0], shifts[2])
    assert not torch.equal(shifts[0], shifts[1]) and not torch.equal(shifts[0], shifts[3])
