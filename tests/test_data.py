import json

import pytest

from excise.data.encode import IGNORE, collate, encode_pair, encode_text
from excise.data.records import MC, QA, Text, load_records
from excise.data.tasks import custom_task, load_task
from excise.errors import DataError, ExciseError


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_record_kinds(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"prompt": "a", "completion": " b", "paraphrases": ["c"], "subject": "x"},
            {"text": "hello"},
            {"question": "q", "choices": ["x", "y"], "answer": 1},
        ],
    )
    qa, text, mc = load_records(path)
    assert isinstance(qa, QA) and qa.paraphrases == ("c",) and qa.meta == {"subject": "x"}
    assert isinstance(text, Text) and isinstance(mc, MC) and mc.answer == 1


def test_csv_json_parquet_and_datasets_folder(tmp_path):
    (tmp_path / "d.csv").write_text(
        'prompt,completion,paraphrases\nThe sky is, blue,"[""Sky is""]"\n'
    )
    assert load_records(str(tmp_path / "d.csv"))[0].paraphrases == ("Sky is",)
    (tmp_path / "d.json").write_text(json.dumps([{"text": "x"}]))
    assert load_records(str(tmp_path / "d.json")) == [Text("x")]
    import datasets

    ds = datasets.Dataset.from_list([{"prompt": "p", "completion": " c"}])
    ds.to_parquet(str(tmp_path / "d.parquet"))
    assert load_records(str(tmp_path / "d.parquet"))[0].completion == " c"
    ds.save_to_disk(str(tmp_path / "ds"))
    assert load_records(str(tmp_path / "ds"))[0].prompt == "p"


def test_malformed_and_empty(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": " b"}\n{"prompt": \n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        load_records(str(bad))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="empty"):
        load_records(str(tmp_path / "empty.jsonl"))
    with pytest.raises(DataError, match="not found"):
        load_records(str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match="unknown record"):
        load_records(write_jsonl(tmp_path / "u.jsonl", [{"foo": 1}]))
    with pytest.raises(DataError, match="non-empty"):
        load_records(write_jsonl(tmp_path / "e.jsonl", [{"prompt": "a", "completion": ""}]))
    with pytest.raises(DataError, match="choices"):
        load_records(
            write_jsonl(tmp_path / "m.jsonl", [{"question": "a", "choices": ["x"], "answer": 0}])
        )


def test_loss_only_on_completion(tiny_tokenizer):
    example = encode_pair(tiny_tokenizer, "The capital of France is", " Paris", "raw")
    completion = tiny_tokenizer(" Paris", add_special_tokens=False).input_ids
    targets = [t for t in example.labels if t != IGNORE]
    assert targets == completion
    assert list(example.input_ids[-len(completion) :]) == completion
    chat = encode_pair(tiny_tokenizer, "capital of France?", "Paris", "chat")
    assert len(chat.input_ids) > len(tiny_tokenizer("capital of France?").input_ids)
    text = encode_text(tiny_tokenizer, "The capital of France is Paris.")
    assert text.labels[0] == IGNORE and list(text.labels[1:]) == list(text.input_ids[1:])


def test_collate_right_pads(tiny_tokenizer):
    a = encode_pair(tiny_tokenizer, "The capital of France is", " Paris", "raw", 0)
    b = encode_pair(tiny_tokenizer, "Paris", " is", "raw", 1)
    batch = collate([a, b], tiny_tokenizer.pad_token_id)
    assert batch["attention_mask"][1].sum() == len(b.input_ids)
    assert (batch["labels"][1, len(b.input_ids) :] == IGNORE).all()
    assert batch["index"].tolist() == [0, 1]


def test_builtin_tasks_meet_their_sizes():
    chem = load_task("chem-symbols")
    assert len(chem.forget_eval) >= 60 and all(len(q.paraphrases) >= 2 for q in chem.forget_eval)
    assert len(chem.retain) + len(chem.retain_eval) >= 100
    assert all(q.perturbed for q in chem.forget_eval)
    assert len(chem.utility) >= 50 and chem.fluency
    fict = load_task("fictitious")
    people = {q.meta["person"] for q in fict.forget + fict.retain}
    assert len(people) >= 100 and fict.metadata["needs_teaching"]
    forget_people = {q.meta["person"] for q in fict.forget}
    assert forget_people.isdisjoint({q.meta["person"] for q in fict.retain})
    with pytest.raises(ExciseError, match="unknown task"):
        load_task("nope")


def test_custom_task(tmp_path):
    forget = write_jsonl(tmp_path / "f.jsonl", [{"prompt": "a", "completion": " b"}])
    retain = write_jsonl(tmp_path / "r.jsonl", [{"prompt": "c", "completion": " d"}])
    task = custom_task(forget, retain)
    assert task.forget_eval == task.forget and task.retain_eval[0].prompt == "c"
    only_mc = write_jsonl(
        tmp_path / "m.jsonl", [{"question": "a", "choices": ["x", "y"], "answer": 0}]
    )
    with pytest.raises(DataError, match="forget set needs"):
        custom_task(only_mc, retain)


def test_filter_known_keeps_what_the_model_knows_and_caches_it(
    tmp_path, monkeypatch, tiny_tokenizer
):
    import excise.scoring
    from excise.data.tasks import filter_known
    from tests.conftest import make_tiny_model, teach, tiny_task

    monkeypatch.setenv("EXCISE_HOME", str(tmp_path))
    task = tiny_task()
    model = teach(
        make_tiny_model(tiny_tokenizer), tiny_tokenizer, task.forget[:2] + task.retain, steps=60
    )
    kept = filter_known(task, model, tiny_tokenizer)
    assert [q.completion for q in kept.forget] == [" Fe", " Au"]
    assert kept.metadata["filter"]["forget"] == [2, 4]
    assert len(kept.retain_eval) == 4

    def refuse(*args, **kwargs):
        raise AssertionError("the cache should answer")

    monkeypatch.setattr(excise.scoring, "score_pairs", refuse)
    assert filter_known(task, model, tiny_tokenizer).forget == kept.forget
