"""Editing: the closed forms do what they claim, edits land on a tiny model, deltas revert exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from excise.editing import EDITORS
from excise.editing.alphaedit import alphaedit_update, projector
from excise.editing.memit import memit_update
from excise.editing.requests import EditRequest, Probe
from excise.editing.rome import rank_one_update
from excise.registry import defaults
from tests.conftest import make_tiny_model, teach

# editors with a preservation set (an option preserve_weight)
PRESERVING = [n for n, s in EDITORS.all().items() if "preserve_weight" in defaults(s.config_cls)]

torch.set_default_dtype(torch.float32)


def _moment(
    n: int, d: int, rank: int | None = None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    basis = torch.randn(rank or d, d, generator=gen, dtype=torch.float64)
    keys = torch.randn(n, rank or d, generator=gen, dtype=torch.float64) @ basis
    return keys.T @ keys / n, keys


def test_rank_one_update_moves_the_key_exactly_and_spares_c_orthogonal_keys():
    moment, _ = _moment(400, 16)
    key = torch.randn(16, dtype=torch.float64)
    delta = torch.randn(8, dtype=torch.float64)
    update, denominator = rank_one_update(moment, key, delta)
    assert denominator > 0
    torch.testing.assert_close(update @ key, delta)
    # keys k' with k'^T C^-1 k = 0 (C-orthogonal to the edited key) are untouched
    other = torch.randn(16, dtype=torch.float64)
    left = torch.linalg.solve(moment, key)
    other = other - (other @ left) / (key @ left) * key
    assert float((update @ other).norm()) < 1e-9


def test_memit_update_writes_edited_keys_and_preserves_ordinary_ones():
    moment, preserved = _moment(2000, 32)
    keys = torch.randn(5, 32, dtype=torch.float64) * 3
    residual = torch.randn(5, 12, dtype=torch.float64)
    # small lambda: the edited keys map (almost) exactly to their residuals
    update = memit_update(moment, keys, residual, weight=1e-6)
    torch.testing.assert_close(update @ keys.T, residual.T, rtol=1e-4, atol=1e-4)
    # any lambda: dW minimises lambda tr(dW C dW^T) + |dW K^T - R^T|^2 (zero gradient there)
    for weight in (1.0, 1e4):
        update = memit_update(moment, keys, residual, weight=weight)
        gradient = weight * update @ moment + (update @ keys.T - residual.T) @ keys
        assert float(gradient.abs().max()) < 1e-8 * float(residual.abs().max() * keys.abs().max())
    # and a larger lambda moves ordinary keys less
    moved = [
        float((memit_update(moment, keys, residual, weight=w) @ preserved[:100].T).norm())
        for w in (1.0, 1e2, 1e4)
    ]
    assert moved[0] > moved[1] > moved[2]


def test_memit_update_keeps_the_preservation_set_it_is_given():
    moment, _ = _moment(2000, 32)
    _, kept_keys = _moment(40, 32, rank=6, seed=1)  # 40 keys in a 6-dim subspace
    # fixed draws: about 6% of random ones leave the residual >= 10% (the suite's order decided)
    gen = torch.Generator().manual_seed(2)
    keys = torch.randn(5, 32, generator=gen, dtype=torch.float64) * 3
    residual = torch.randn(5, 12, generator=gen, dtype=torch.float64)
    plain = memit_update(moment, keys, residual, 1.0)
    kept = memit_update(moment, keys, residual, 1.0, 1e6 * kept_keys.T @ kept_keys)
    assert float((plain @ kept_keys.T).norm()) > 1.0
    assert float((kept @ kept_keys.T).norm()) < 1e-3 * float((plain @ kept_keys.T).norm())
    # the edit still lands: 26 free directions take the 5 residuals
    assert float((kept @ keys.T - residual.T).norm()) < 0.1 * float(residual.norm())


def test_alphaedit_update_is_zero_on_preserved_keys():
    moment, preserved = _moment(500, 24, rank=12)  # keys live in a 12-dim subspace
    p = projector(moment, 1e-6)
    assert round(float(torch.trace(p))) == 12
    keys = torch.randn(4, 24, dtype=torch.float64)
    residual = torch.randn(4, 10, dtype=torch.float64)
    update = alphaedit_update(p, keys, residual, torch.zeros(24, 24, dtype=torch.float64), l2=1e-6)
    assert float((update @ preserved.T).abs().max()) < 1e-6 * float(update.abs().max() + 1)
    # and the edited keys still get their residual through the free directions
    torch.testing.assert_close(update @ (p @ keys.T), residual.T, rtol=1e-3, atol=1e-3)


def _requests() -> list[EditRequest]:
    # the subject ends at the last prompt token: a 4-layer random model moves information
    # between positions too weakly for a mid-prompt subject to be a fair test of the algebra
    return [
        EditRequest(
            "0",
            "The capital of {}",
            "France",
            "Rome",
            "Paris",
            ("The capital of France",),
            (Probe("The capital of Spain is", "Madrid", "neighborhood"),),
            (Probe("The capital of France", "Rome", "portability"),),
        ),
        EditRequest(
            "1",
            "The capital of {}",
            "Germany",
            "Madrid",
            "Berlin",
            (),
            (Probe("The capital of Italy is", "Rome", "neighborhood"),),
        ),
    ]


def teach_capitals(tokenizer):
    """A tiny model taught four capitals (the facts the requests edit and probe)."""
    from excise.data.records import QA

    facts = [
        QA("The capital of France is", " Paris"),
        QA("The capital of Spain is", " Madrid"),
        QA("The capital of Italy is", " Rome"),
        QA("The capital of Germany is", " Berlin"),
    ]
    return teach(make_tiny_model(tokenizer), tokenizer, facts, steps=80)


def write_corpus(path):
    from tests.conftest import corpus

    # ordinary text that does not state the edited facts (their keys should be free to move)
    texts = [t for t in corpus() if "capital" not in t]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts * 30))
    return path


def edit_options(method: str) -> dict:
    """Each method's options for the tiny model's edits."""
    if method in ("rome", "ft", "memory"):
        options = {"layer": 1 if method == "memory" else 0}
    else:
        options = {"layers": [0, 1]}
    if method == "rome":  # a random tiny model's weights are small next to the edit
        options["max_update"] = 100.0
    if method != "ft":
        options.update(stats_tokens=4000, prefixes=0, v_steps=25)
    else:
        options.update(norm_constraint=0.05, lr=1e-2, steps=20)
    if method == "alphaedit":  # keys of a 64-wide model are short: scale the ridge to them
        options["l2"] = 1e-2
    return options


def assert_written(result, method: str) -> None:
    """Weight editors change MLP output projections only; ``memory`` changes no weight and keeps
    the edits in the model's side memory."""
    from excise import sidememory

    changed = {n for n, d in result.deltas.items() if d.abs().max() > 0}
    if method == "memory":
        found = sidememory.find(result.model)
        assert not changed and found is not None and found[1].size >= 1
    else:
        assert changed and all("mlp.down_proj" in n for n in changed)


WEIGHT_EDITORS = [name for name in EDITORS.names() if name != "memory"]  # deltas revert them


@pytest.fixture
def taught(tiny_tokenizer):
    return teach_capitals(tiny_tokenizer)


@pytest.fixture
def corpus_file(tmp_path):
    return write_corpus(tmp_path / "corpus.jsonl")


@pytest.mark.parametrize("method", WEIGHT_EDITORS)
def test_edit_raises_the_new_target_and_reverts_exactly(
    method, taught, tiny_tokenizer, corpus_file, tmp_path, monkeypatch
):
    from excise.editing import edit
    from excise.editing.delta import apply_delta
    from excise.scoring import score_pairs

    monkeypatch.setenv("EXCISE_HOME", str(tmp_path / "home"))
    requests = _requests()
    pairs = [(r.text(), " " + r.target_new) for r in requests]
    before = score_pairs(taught, tiny_tokenizer, pairs, "raw").logprob
    original = {k: v.clone() for k, v in taught.state_dict().items()}
    result = edit(
        taught,
        tiny_tokenizer,
        requests,
        method,
        stats_corpus=str(corpus_file),
        progress=False,
        **edit_options(method),
    )
    assert not result.in_place and result.model is not taught
    for name, tensor in taught.state_dict().items():  # the caller's model is untouched
        assert torch.equal(tensor, original[name])
    after = score_pairs(result.model, tiny_tokenizer, pairs, "raw").logprob
    assert bool((after > before + 1.0).all()), (before, after, result.refused, result.batches)
    assert_written(result, method)
    apply_delta(result.model, result.deltas, sign=-1.0)
    for name, tensor in result.model.state_dict().items():
        assert torch.equal(tensor, original[name]), name  # bit for bit
    apply_delta(result.model, result.deltas)
    after_again = score_pairs(result.model, tiny_tokenizer, pairs, "raw").logprob
    assert torch.equal(after_again, after)


@pytest.mark.parametrize("method", PRESERVING)
def test_preservation_set_keeps_its_keys_outputs(
    method, taught, tiny_tokenizer, corpus_file, tmp_path, monkeypatch
):
    from excise.editing import edit
    from excise.editing.preserve import preserved_moments

    monkeypatch.setenv("EXCISE_HOME", str(tmp_path / "home"))
    kept = ["The capital of Italy is Rome", "The capital of Germany is Berlin"]
    options = dict(layers=[0, 1], stats_tokens=4000, prefixes=0, v_steps=25, l2=1e-2)
    if method == "memit":
        options.pop("l2")
    moments, count = preserved_moments(taught, tiny_tokenizer, [0, 1], kept, progress=False)
    assert count > 8 and all(float(torch.trace(m)) > 0 for m in moments.values())

    def moved(result) -> float:  # sum over layers and kept keys of |dW k|^2
        total = 0.0
        for layer in (0, 1):
            delta = result.deltas[f"model.layers.{layer}.mlp.down_proj.weight"]
            total += float(torch.trace(delta @ moments[layer] @ delta.T))
        return total

    common = dict(stats_corpus=str(corpus_file), progress=False, **options)
    plain = edit(taught, tiny_tokenizer, _requests()[:1], method, **common)
    guarded = edit(
        taught,
        tiny_tokenizer,
        _requests()[:1],
        method,
        preserve=kept,
        preserve_weight=1e4,
        **common,
    )
    assert moved(guarded) < 0.05 * moved(plain), (moved(guarded), moved(plain))


def test_preservation_set_errors(taught, tiny_tokenizer, tmp_path):
    from excise.editing import edit
    from excise.editing.preserve import preservation_texts
    from excise.errors import ConfigError, DataError

    with pytest.raises(ConfigError, match="preservation set"):
        edit(taught, tiny_tokenizer, _requests()[:1], "rome", preserve=["x y"], progress=False)
    with pytest.raises(ConfigError, match="preserve_weight"):
        edit(taught, tiny_tokenizer, _requests()[:1], "memit", preserve_weight=-1, progress=False)
    path = tmp_path / "keep.jsonl"
    rows = [{"prompt": "The capital of Italy is", "completion": " Rome"}, {"text": "Plain words."}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert preservation_texts(str(path)) == ["The capital of Italy is Rome", "Plain words."]
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError):
        preservation_texts(str(tmp_path / "empty.jsonl"))


def test_sequential_alphaedit_keeps_earlier_keys_and_monitor_stops(
    taught, tiny_tokenizer, corpus_file, tmp_path, monkeypatch
):
    from excise.editing import edit

    monkeypatch.setenv("EXCISE_HOME", str(tmp_path / "home"))
    calls = []

    def monitor(model):
        calls.append(1)
        return {"retain_accuracy": 1.0 if len(calls) < 2 else 0.0}

    result = edit(
        taught,
        tiny_tokenizer,
        _requests(),
        "alphaedit",
        batch_size=1,
        stats_corpus=str(corpus_file),
        monitor=monitor,
        monitor_key="retain_accuracy",
        min_monitor=0.5,
        progress=False,
        layers=[1, 2],
        stats_tokens=4000,
        prefixes=1,
        v_steps=10,
    )
    assert len(result.batches) == 2 and result.stopped and "stopped" in result.stopped
    assert all(b["monitor"] for b in result.batches)


def test_edit_cli_writes_model_delta_and_report_and_revert_restores(
    taught, tiny_tokenizer, corpus_file, tmp_path, monkeypatch
):
    from transformers import AutoModelForCausalLM

    from excise.cli import main
    from excise.models import save_model

    monkeypatch.setenv("EXCISE_HOME", str(tmp_path / "home"))
    base = tmp_path / "base"
    save_model(taught, tiny_tokenizer, base)
    requests = tmp_path / "requests.jsonl"
    requests.write_text(
        json.dumps(
            {
                "case_id": "a",
                "prompt": "The capital of {}",
                "subject": "France",
                "target_new": "Rome",
                "target_true": "Paris",
                "paraphrases": ["The capital of France"],
                "neighborhood": [{"prompt": "The capital of Spain is", "target": "Madrid"}],
            }
        )
        + "\n"
    )
    keep = tmp_path / "keep.jsonl"
    keep.write_text(json.dumps({"prompt": "The capital of Italy is", "completion": " Rome"}) + "\n")
    out = tmp_path / "edited"
    code = main([
        "edit", "--model", str(base), "--requests", str(requests), "--method", "memit",
        "--stats-corpus", str(corpus_file), "--set", "layers=[1,2]", "--set", "stats_tokens=4000",
        "--set", "prefixes=0", "--set", "mom2_weight=1", "--preserve", str(keep),
        "--out", str(out), "--quiet",
    ])  # fmt: skip
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["preserve"] == {"source": str(keep), "texts": 1}
    assert f"preservation set: `{keep}` (1 texts" in (out / "model" / "README.md").read_text()
    assert report["after"]["edit"]["efficacy_score"] == 1.0
    assert {"efficacy_tf", "efficacy_gen"} <= set(report["after"]["edit"])
    assert "efficacy_tf" in report["in_context"]
    assert (out / "manifest.json").is_file() and (out / "report.html").is_file()
    edited = AutoModelForCausalLM.from_pretrained(out / "model")
    assert (
        main(
            [
                "revert-delta",
                "--model",
                str(out / "model"),
                "--delta",
                str(out / "delta.safetensors"),
                "--out",
                str(tmp_path / "back"),
            ]
        )
        == 0
    )
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "back")
    for name, tensor in taught.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name
    assert not all(torch.equal(edited.state_dict()[n], t) for n, t in taught.state_dict().items())


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--method", "nope"], "unknown edit method"),
        (["--set", "layers=[99]"], "out of range"),
        (["--set", "bogus=1"], "unknown option"),
        (["--limit", "0"], "--limit"),
        (["--method", "rome", "--preserve", "facts"], "preservation set works with"),
        (["--preserve", "missing.jsonl"], "not found"),
    ],
)
def test_edit_cli_errors(argv, words, taught, tiny_tokenizer, tmp_path, capsys):
    from excise.cli import main
    from excise.models import save_model

    base = tmp_path / "base"
    save_model(taught, tiny_tokenizer, base)
    requests = tmp_path / "r.jsonl"
    requests.write_text(
        json.dumps(
            {
                "prompt": "The capital of {} is",
                "subject": "France",
                "target_new": "Rome",
                "case_id": "x",
            }
        )
        + "\n"
    )
    code = main(
        [
            "edit",
            "--model",
            str(base),
            "--requests",
            str(requests),
            "--out",
            str(tmp_path / "o"),
            *argv,
        ]
    )
    assert code == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_unrelated_knowledge_drops_facts_that_name_an_edited_subject():
    from excise.data.records import QA
    from excise.editing.utility import unrelated

    facts = [
        QA("The capital of Iran is", " Tehran"),
        QA("The capital of Iraq is", " Baghdad"),  # not "Iran" as a word
        QA("Tirana is the capital of", " Albania"),  # "Iran" inside a word
        QA("People in Iran speak", " Persian"),
        QA("The element iron has the symbol", " Fe"),
    ]
    edits = [EditRequest("a", "The capital of {} is", "Iran", "Paris", "Tehran")]
    kept = [f.prompt for f in unrelated(facts, edits)]
    assert kept == [
        "The capital of Iraq is",
        "Tirana is the capital of",
        "The element iron has the symbol",
    ]
    assert unrelated(facts, []) == facts


def test_builtin_preservation_facts_leave_out_edited_and_measured_subjects():
    import json as json_

    from excise.editing.preserve import FACTS, builtin_facts, preservation_texts

    rows = [json_.loads(line) for line in FACTS.read_text().splitlines()]
    assert len(rows) > 1000 and all(r["subject"] in r["text"] for r in rows)
    chem = Path(__file__).parents[1] / "src/excise/data/builtin/chem_symbols"
    subjects = {
        json_.loads(line)["subject"]
        for name in ("forget.jsonl", "retain.jsonl")
        for line in (chem / name).read_text().splitlines()
    }
    assert not subjects & {r["subject"] for r in rows}  # retain figures stay held out
    every = builtin_facts()
    assert every == [r["text"] for r in rows]
    request = EditRequest(
        "a",
        "The city of {} is in the country of",
        "Lyon",
        "Spain",
        "France",
        neighborhood=(Probe("Marseille is a city in the country of", "France", "neighborhood"),),
    )
    kept = preservation_texts("facts", [request])
    assert len(kept) < len(every)
    assert not any("Lyon" in t or "Marseille" in t for t in kept)
    assert any("Toulouse" in t for t in kept)


def test_default_statistics_corpus_takes_general_and_encyclopedic_text_in_turn():
    from excise.editing.stats import ENCYCLOPEDIC, SAMPLE, read_corpus

    general, encyclopedic = read_corpus(SAMPLE), read_corpus(ENCYCLOPEDIC)
    mixed = read_corpus(None)
    assert len(mixed) == len(general) + len(encyclopedic)
    assert mixed[:4] == [general[0], encyclopedic[0], general[1], encyclopedic[1]]
    assert sorted(mixed) == sorted(general + encyclopedic)
    # one passage per encyclopedia topic, each opening on its topic
    topics = (ENCYCLOPEDIC.parent / "topics.txt").read_text().split("\n")
    topics = [t for t in topics if t.strip()]
    assert len(encyclopedic) == len(topics) >= 400
    assert all(
        t.split()[-1].lower() in text.lower() for t, text in zip(topics, encyclopedic, strict=True)
    )
