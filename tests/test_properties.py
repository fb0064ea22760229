"""Property-based tests (hypothesis) on the data loaders and the recipe parser: valid input
round-trips, and invalid input raises the user-error type (DataError / ConfigError), never
anything else."""

from __future__ import annotations

import csv
import json
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from excise.data.records import MC, QA, Text, load_records, to_record
from excise.errors import ConfigError, DataError
from excise.jobs.erase import EraseJob
from excise.jobs.recipe import Recipe, load_recipe, parse_recipe
from excise.jobs.unlearn import UnlearnJob

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    database=None,  # nothing written into the working tree; a failure prints its example
    suppress_health_check=[HealthCheck.too_slow],
)
KNOWN = [
    "prompt",
    "completion",
    "paraphrases",
    "perturbed",
    "text",
    "question",
    "choices",
    "answer",
]

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
texts = st.text(max_size=40)
non_blank = texts.filter(lambda t: t.strip() != "")
meta_keys = st.text(min_size=1, max_size=10).filter(lambda k: k not in KNOWN)
metas = st.dictionaries(meta_keys, json_scalars.filter(lambda v: v == v), max_size=3)


@st.composite
def qa_rows(draw) -> dict:
    row = {"prompt": draw(texts), "completion": draw(non_blank), **draw(metas)}
    for name in ("paraphrases", "perturbed"):
        if draw(st.booleans()):
            row[name] = draw(st.lists(texts, max_size=3))
    return row


@st.composite
def valid_rows(draw) -> dict:
    kind = draw(st.sampled_from(["qa", "text", "mc"]))
    if kind == "qa":
        return draw(qa_rows())
    if kind == "text":
        return {"text": draw(non_blank), **draw(metas)}
    choices = draw(st.lists(texts, min_size=2, max_size=5))
    answer = draw(st.integers(0, len(choices) - 1))
    return {"question": draw(texts), "choices": choices, "answer": answer, **draw(metas)}


def expected(row: dict):
    meta = {k: v for k, v in row.items() if k not in KNOWN}
    if "prompt" in row:
        paraphrases, perturbed = row.get("paraphrases", []), row.get("perturbed", [])
        return QA(row["prompt"], row["completion"], tuple(paraphrases), tuple(perturbed), meta)
    if "text" in row:
        return Text(row["text"], meta)
    return MC(row["question"], tuple(row["choices"]), row["answer"], meta)


def same(record, wanted) -> bool:
    return record == wanted and type(record) is type(wanted) and record.meta == wanted.meta


@SETTINGS
@given(rows=st.lists(valid_rows(), min_size=1, max_size=5), ascii_only=st.booleans())
def test_valid_rows_round_trip_through_jsonl_and_json(rows, ascii_only):
    for row in rows:
        assert same(to_record(row, "row"), expected(row))
    with tempfile.TemporaryDirectory() as folder:
        jsonl = Path(folder) / "data.jsonl"
        lines = (json.dumps(r, ensure_ascii=ascii_only) for r in rows)
        jsonl.write_text("\n".join(lines) + "\n", encoding="utf-8")
        whole = Path(folder) / "data.json"
        whole.write_text(json.dumps(rows, ensure_ascii=ascii_only), encoding="utf-8")
        for path in (jsonl, whole):
            records = load_records(str(path))
            assert len(records) == len(rows)
            assert all(same(r, expected(row)) for r, row in zip(records, rows, strict=True))


@SETTINGS
@given(
    rows=st.lists(
        st.fixed_dictionaries({"prompt": texts, "completion": non_blank}), min_size=1, max_size=5
    )
)
def test_qa_rows_round_trip_through_csv(rows):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "data.csv"
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["prompt", "completion"])
            writer.writeheader()
            writer.writerows(rows)
        records = load_records(str(path))
    assert [(r.prompt, r.completion) for r in records] == [
        (row["prompt"], row["completion"]) for row in rows
    ]


# strings that look like lists or numbers (csv cells hold lists as JSON or "a|b", indices as text)
edge_cases = st.sampled_from(
    ["[", "[oops", "[1, 2]", '["a", 3]', "\u00b2", "\u0663", "1", "a|b", " "]
)
tricky = edge_cases | st.text(alphabet='[]{},"|0123456789\u00b2\u0663 abc', max_size=12)
field_values = st.dictionaries(
    st.sampled_from(KNOWN) | st.text(max_size=6), json_values | tricky, max_size=6
)


@st.composite
def damaged_rows(draw) -> dict:
    """A valid row with one or two fields replaced by anything, and maybe one removed."""
    row = dict(draw(valid_rows()))
    for _ in range(draw(st.integers(1, 2))):
        row[draw(st.sampled_from(KNOWN))] = draw(st.one_of(edge_cases, tricky, json_values))
    if draw(st.booleans()):
        row.pop(draw(st.sampled_from(sorted(row))))
    return row


@SETTINGS
@given(row=damaged_rows() | field_values | json_values)
def test_any_row_is_a_record_or_a_data_error(row):
    try:
        record = to_record(row, "row")
    except DataError as error:
        assert str(error).startswith("row: ") and "\n" not in str(error)
        return
    assert isinstance(record, QA | Text | MC)


@SETTINGS
@given(
    content=st.binary(max_size=200)
    | st.lists(damaged_rows() | field_values | json_values, max_size=4).map(
        lambda rows: "\n".join(json.dumps(r) for r in rows).encode()
    ),
    suffix=st.sampled_from([".jsonl", ".json", ".csv", ".parquet"]),
)
def test_any_file_gives_records_or_a_data_error(content, suffix):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"data{suffix}"
        path.write_bytes(content)
        try:
            records = load_records(str(path))
        except DataError:
            return
    assert records and all(isinstance(r, QA | Text | MC) for r in records)


RECIPE_KEYS = list(Recipe.model_fields)
method_sections = st.fixed_dictionaries(
    {"name": st.sampled_from(["npo", "rmu", "ga", "nope"])},
    optional={
        "options": st.dictionaries(
            st.sampled_from(["beta", "retain_weight", "layer", "alpha", "zeta"]),
            json_values,
            max_size=3,
        )
    },
)
train_sections = st.dictionaries(
    st.sampled_from(["steps", "lr", "batch_size", "seed", "schedule", "epochs"]),
    json_values,
    max_size=4,
)
near_valid = st.fixed_dictionaries(
    {},
    optional={
        "model": st.text(max_size=10),
        "task": st.sampled_from(["chem-symbols", "fictitious", "other"]),
        "data": st.fixed_dictionaries({"forget": st.text(max_size=10)}) | json_values,
        "template": st.sampled_from(["auto", "raw", "chat", "html"]),
        "method": method_sections | json_values,
        "train": train_sections | json_values,
        "audit": st.fixed_dictionaries(
            {"attacks": st.sampled_from(["all", ["relearn"], ["nope"], []])}
        )
        | json_values,
        "out": st.text(max_size=10),
        "overwrite": json_scalars,
        "extra": json_values,
    },
)


@SETTINGS
@given(data=near_valid | json_values)
def test_any_recipe_validates_or_raises_config_error(data):
    try:
        job = parse_recipe(data, "r.yaml")
    except ConfigError as error:
        assert str(error).startswith("r.yaml: ") and "\n" not in str(error)
        return
    assert isinstance(job, UnlearnJob | EraseJob)
    assert job.method == data["method"]["name"]
    assert (job.task is None) != (job.forget is None)


valid_recipes = st.fixed_dictionaries(
    {
        "task": st.sampled_from(["chem-symbols", "fictitious"]),
        "method": st.fixed_dictionaries(
            {"name": st.just("npo")},
            optional={
                "options": st.fixed_dictionaries(
                    {},
                    optional={
                        "beta": st.floats(0.01, 10),
                        "retain_weight": st.floats(0, 10) | st.integers(0, 5),
                    },
                )
            },
        ),
        "train": st.fixed_dictionaries(
            {},
            optional={
                "steps": st.integers(1, 1000),
                "lr": st.floats(1e-7, 1.0),
                "seed": st.integers(0, 2**31),
                "schedule": st.sampled_from(["constant", "linear", "cosine"]),
            },
        ),
        "out": st.text(min_size=1, max_size=20).filter(lambda t: t.strip() == t and t),
    },
    optional={"audit": st.fixed_dictionaries({"attacks": st.just(["relearn", "mia"])})},
)


@SETTINGS
@given(data=valid_recipes)
def test_valid_recipes_round_trip_through_yaml(data):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "recipe.yaml"
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        job = load_recipe(path)
    assert job.task == data["task"] and job.out == data["out"]
    assert job.train == data["train"]
    assert job.options == data["method"].get("options", {})
    if "audit" in data:
        assert job.audit == ["relearn", "mia"]
    assert job.plan().startswith("plan:")
