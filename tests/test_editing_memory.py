"""The ``memory`` editor: edits in a key-routed side memory, the weights unchanged."""

from __future__ import annotations

import json

import pytest
import torch

from excise import sidememory
from excise.errors import ConfigError
from tests.test_editing import _requests, edit_options, teach_capitals, write_corpus
from tests.test_editing_guard import UNRELATED, _logprobs
from tests.test_editing_guard import _requests as _sequence_requests


@pytest.fixture(scope="module")
def capitals(tiny_tokenizer):
    return teach_capitals(tiny_tokenizer)


def _edit(model, tokenizer, requests, tmp_path, **options):
    from excise.editing import edit

    corpus = write_corpus(tmp_path / "corpus.jsonl")
    return edit(
        model,
        tokenizer,
        requests,
        "memory",
        stats_corpus=str(corpus),
        progress=False,
        **(edit_options("memory") | options),
    )


def test_routing_adds_an_entry_value_to_its_keys_only_and_never_to_the_sink():
    memory = sidememory.SideMemory(torch.eye(8), 3, threshold=0.5)
    memory.sink.copy_(torch.eye(8)[7])  # the first token's direction
    keys = torch.eye(8)[:3] + 0.1  # three directions, far from each other and from the sink
    sink_like = torch.eye(8)[7] * 5.0 + 0.1 * keys[2]
    # entry 0 owns keys 0 and 2 (two contexts); the sink-like key is not stored
    stored = memory.add(
        torch.stack([keys[0], keys[2], sink_like]),
        torch.tensor([0, 0, 0]),
        torch.tensor([[1.0, 2.0, 3.0]]),
        merge_above=0.99,
    )
    assert stored == [0] and memory.size == 1 and memory.keys.shape[0] == 2
    out = memory(torch.stack([2.0 * keys[0], keys[2], keys[1], sink_like]))
    assert torch.equal(out[0], torch.tensor([1.0, 2.0, 3.0]))  # direction counts, not scale
    assert torch.equal(out[1], torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(out[2], torch.zeros(3))  # another direction: untouched
    assert torch.equal(out[3], torch.zeros(3))  # sink-like: never routed
    # a key within merge_above of a stored one adds to its entry (found with it applied)
    stored = memory.add(keys[:1] * 3.0, torch.tensor([0]), torch.tensor([[1.0, 0, 0]]), 0.99)
    assert stored == [0] and memory.size == 1 and memory.keys.shape[0] == 3
    assert torch.equal(memory.values[0], torch.tensor([2.0, 2.0, 3.0]))
    # only a sink-like key: nothing stored, reported as -1
    assert memory.add(sink_like[None], torch.tensor([0]), torch.ones(1, 3), 0.99) == [-1]


def test_memory_edits_without_changing_a_weight(capitals, tiny_tokenizer, tmp_path, monkeypatch):
    from excise.scoring import score_pairs

    monkeypatch.setenv("EXCISE_HOME", str(tmp_path / "home"))
    requests = _requests()
    pairs = [(r.text(), " " + r.target_new) for r in requests]
    before = score_pairs(capitals, tiny_tokenizer, pairs, "raw").logprob
    result = _edit(capitals, tiny_tokenizer, requests, tmp_path)
    after = score_pairs(result.model, tiny_tokenizer, pairs, "raw").logprob
    assert bool((after > before + 1.0).all()), (before, after)
    base = capitals.state_dict()
    for name, tensor in sidememory.base_state(result.model).items():
        assert torch.equal(tensor, base[name]), name
    layer, memory = sidememory.find(result.model)
    assert layer == 1 and memory.size == len(requests)
    assert sidememory.find(capitals) is None  # the caller's model is untouched


def test_fifty_sequential_memory_edits_leave_unrelated_answers_exactly(
    tiny_tokenizer, tmp_path, monkeypatch
):
    """50 edits of four subjects, one a batch: each holds right after its batch, the last of
    each subject holds at the end, and the unrelated answers do not move at all (plain MEMIT's
    move by > 0.5 nats on this schedule: tests/test_editing_guard.py)."""
    from excise.data.records import QA
    from excise.editing import edit
    from tests.conftest import make_tiny_model, teach
    from tests.test_editing_guard import CAPITALS

    monkeypatch.setenv("EXCISE_HOME", str(tmp_path / "home"))
    facts = [QA(p, a) for p, a in UNRELATED]
    facts += [QA(f"The capital of {c} is", " " + a) for c, a in CAPITALS.items()]
    model = teach(make_tiny_model(tiny_tokenizer), tiny_tokenizer, facts, steps=80)
    requests = _sequence_requests()
    held: list[bool] = []

    def monitor(current) -> dict[str, float]:
        request = requests[len(held)]
        new, old = _logprobs(
            current,
            tiny_tokenizer,
            [
                (request.text(), " " + request.target_new),
                (request.text(), " " + request.target_true),
            ],
        )
        held.append(bool(new > old))
        return {}

    before = _logprobs(model, tiny_tokenizer, UNRELATED)
    result = edit(
        model,
        tiny_tokenizer,
        requests,
        "memory",
        stats_corpus=str(write_corpus(tmp_path / "corpus.jsonl")),
        batch_size=1,
        monitor=monitor,
        progress=False,
        **edit_options("memory"),
    )
    after = _logprobs(result.model, tiny_tokenizer, UNRELATED)
    assert float((after - before).abs().max()) < 1e-5, (before, after)
    assert sum(held) / len(held) >= 0.9, held
    last = {r.subject: r for r in requests}  # each subject's latest edit
    new, old = (
        _logprobs(
            result.model, tiny_tokenizer, [(r.text(), " " + getattr(r, t)) for r in last.values()]
        )
        for t in ("target_new", "target_true")
    )
    assert bool((new > old).all()), (new, old)
    assert sidememory.find(result.model)[1].size == 4  # one entry per subject: later edits merge


def test_saved_memory_loads_back_and_from_pretrained_gets_the_base(
    capitals, tiny_tokenizer, tmp_path, monkeypatch
):
    from transformers import AutoModelForCausalLM

    from excise.models import clone_model, fingerprint, load_model, save_model

    monkeypatch.setenv("EXCISE_HOME", str(tmp_path / "home"))
    requests = _requests()
    pairs = [(r.text(), " " + r.target_new) for r in requests]
    edited = _edit(capitals, tiny_tokenizer, requests, tmp_path).model
    out = save_model(edited, tiny_tokenizer, tmp_path / "edited")
    assert (out / sidememory.FILE).is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["excise_memory"]["file"] == sidememory.FILE
    assert config["excise_memory"]["entries"] == len(requests)
    loaded, _ = load_model(str(out), device=None)
    plain = AutoModelForCausalLM.from_pretrained(out)  # no memory: the unedited weights
    copy = clone_model(edited)
    from excise.scoring import score_pairs

    want = score_pairs(edited, tiny_tokenizer, pairs, "raw").logprob
    for model in (loaded, copy):
        assert torch.allclose(score_pairs(model, tiny_tokenizer, pairs, "raw").logprob, want)
    base = score_pairs(capitals, tiny_tokenizer, pairs, "raw").logprob
    assert torch.allclose(score_pairs(plain, tiny_tokenizer, pairs, "raw").logprob, base)
    assert fingerprint(edited) != fingerprint(capitals)  # caches keyed by it tell them apart
    assert fingerprint(loaded) == fingerprint(edited)


def test_memory_options_and_layer_are_checked(capitals, tiny_tokenizer, tmp_path, monkeypatch):
    from excise.editing import make_config

    for options, words in (
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": 0.8, "merge_above": 0.5}, "merge_above"),
    ):
        with pytest.raises(ConfigError, match=words):
            make_config("memory", options)
    monkeypatch.setenv("EXCISE_HOME", str(tmp_path / "home"))
    edited = _edit(capitals, tiny_tokenizer, _requests()[:1], tmp_path).model
    with pytest.raises(ConfigError, match="side memory is on layer 1"):
        _edit(edited, tiny_tokenizer, _requests()[1:], tmp_path, layer=0)


def test_edit_cli_writes_the_memory_and_says_where_the_edits_are(
    capitals, tiny_tokenizer, tmp_path, monkeypatch, capsys
):
    from excise.cli import main
    from excise.models import load_model, save_model
    from excise.scoring import score_pairs

    monkeypatch.setenv("EXCISE_HOME", str(tmp_path / "home"))
    base = save_model(capitals, tiny_tokenizer, tmp_path / "base")
    requests = tmp_path / "requests.jsonl"
    request = {"case_id": "a", "prompt": "The capital of {}", "subject": "France"}
    requests.write_text(json.dumps(request | {"target_new": "Rome", "target_true": "Paris"}) + "\n")
    out = tmp_path / "edited"
    code = main([
        "edit", "--model", str(base), "--requests", str(requests), "--method", "memory",
        "--stats-corpus", str(write_corpus(tmp_path / "corpus.jsonl")), "--set", "layer=1",
        "--set", "stats_tokens=4000", "--set", "prefixes=0", "--out", str(out),
    ])  # fmt: skip
    assert code == 0
    assert "side memory (1 entries" in capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["memory"]["entries"] == 1 and report["memory"]["layer"] == 1
    assert report["after"]["edit"]["efficacy_score"] == 1.0
    assert "The edits are NOT in the weights" in (out / "model" / "README.md").read_text()
    manifest = json.loads((out / "manifest.json").read_text())
    assert any(sidememory.FILE in name for name in json.dumps(manifest).split('"'))
    edited, _ = load_model(str(out / "model"), device=None)
    pair = [("The capital of France", " Rome")]
    assert score_pairs(edited, tiny_tokenizer, pair, "raw").correct.all()


def test_memory_routes_the_same_in_bfloat16():
    """A model cast to bf16 after editing (training, some attacks) casts the buffers too."""
    memory = sidememory.SideMemory(torch.eye(8), 3, threshold=0.5)
    keys = torch.eye(8)[:2] + 0.1
    memory.add(keys[:1], torch.tensor([0]), torch.tensor([[1.0, 2.0, 3.0]]), 0.9)
    half = memory.to(torch.bfloat16)
    out = half(keys.to(torch.bfloat16))
    assert torch.equal(out[0], torch.tensor([1.0, 2.0, 3.0])) and not out[1].any()


def test_edit_utility_scores_multiple_choice_apart_from_questions_naming_an_edited_subject(
    tiny_model, tiny_tokenizer
):
    """A question about an edited subject is the edit's business: the utility probe reports MC
    over every question and over those naming no edited subject, each question scored once."""
    from excise.data.tasks import load_task
    from excise.editing.preserve import naming
    from excise.editing.requests import EditRequest
    from excise.editing.utility import utility_probe
    from excise.metrics import mc_accuracy

    questions = load_task("chem-symbols").utility
    requests = [EditRequest("0", "The capital of {} is", "France", "Rome", "Paris")]
    _, full, _ = utility_probe(tiny_model, tiny_tokenizer, requests)
    values = full(tiny_model)
    pattern = naming(["France"])
    apart = [q for q in questions if not pattern.search(" ".join([q.question, *q.choices]))]
    assert 0 < len(apart) < len(questions)
    assert values["mc_unrelated_accuracy"] == pytest.approx(
        mc_accuracy(tiny_model, tiny_tokenizer, apart)
    )
    assert values["mc_accuracy"] == pytest.approx(
        mc_accuracy(tiny_model, tiny_tokenizer, questions), abs=1.5 / len(questions)
    )


def test_a_damaged_or_foreign_memory_file_fails_in_one_line(capitals, tiny_tokenizer, tmp_path):
    from safetensors.torch import save_file

    from excise.errors import ModelError
    from excise.models import load_model, save_model

    folder = save_model(capitals, tiny_tokenizer, tmp_path / "model")
    (folder / sidememory.FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="excise-memory.safetensors is damaged"):
        load_model(str(folder), device=None)
    foreign = sidememory.SideMemory(torch.eye(5), 3, 0.6)  # another model's widths
    tensors = {name: t.contiguous() for name, t in foreign.state_dict().items()}
    save_file(tensors, folder / sidememory.FILE, metadata={"layer": "1"})
    with pytest.raises(ModelError, match="does not fit this model"):
        load_model(str(folder), device=None)


def test_multiple_choice_questions_whose_answer_an_edit_replaces_are_counted_apart(
    tiny_model, tiny_tokenizer
):
    """A question an edit answers differently ("What is the capital of Portugal?" after Lisbon
    -> Athens) is apart from one that only names the edited subject ("In which country is the city
    of Rio de Janeiro?", Portugal among its choices) and from the unrelated ones; each once."""
    from excise.data.tasks import load_task
    from excise.editing.requests import EditRequest
    from excise.editing.utility import _mc_parts, utility_probe

    questions = load_task("chem-symbols").utility
    requests = [EditRequest("0", "The capital of {} is", "Portugal", "Athens", "Lisbon")]
    parts = _mc_parts(questions, requests)
    replaced = [q.question for q in parts["replaced"]]
    same = [q.question for q in parts["same_subject"]]
    assert "What is the capital of Portugal?" in replaced
    assert "What is the capital of Portugal?" not in same
    assert all("Portugal" in " ".join([q.question, *q.choices]) for q in parts["same_subject"])
    assert sum(len(p) for p in parts.values()) == len(questions)
    values = utility_probe(tiny_model, tiny_tokenizer, requests)[1](tiny_model)
    assert values["mc_replaced_questions"] == len(replaced)
    assert values["mc_unrelated_questions"] == len(parts["unrelated"])
