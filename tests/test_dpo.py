"""dpo: the loss is log 2 at step 0, training widens the chosen-over-rejected margin, pair files
load (and malformed ones are one-line exit-2 errors), and `excise unlearn --method dpo` runs."""

import json
import math

import pytest
import torch
from accelerate import Accelerator

from excise.cli import main
from excise.data.encode import collate, encode_pair, encode_records
from excise.data.preference import BUILTIN_PAIRS, load_pairs
from excise.data.records import QA, chosen_of, load_records
from excise.errors import DataError
from excise.methods import get_method, make_config
from excise.methods.dpo import dpo_loss
from excise.models import save_model
from excise.scoring import stats_for_examples
from excise.train import Context, TrainConfig, train
from tests.conftest import make_tiny_model

PAIRS = [
    {"prompt": "The element iron has the symbol", "chosen": " Fe", "rejected": " Au"},
    {"prompt": "The element gold has the symbol", "chosen": " Au", "rejected": " Ag"},
    {"prompt": "The capital of France is", "chosen": " Paris", "rejected": " Madrid"},
    {"prompt": "The capital of Spain is", "chosen": " Madrid", "rejected": " Paris"},
]
RETAIN = [
    {"prompt": "The capital of Italy is", "completion": " Rome"},
    {"prompt": "The capital of Germany is", "completion": " Berlin"},
]


def write(tmp_path, name, rows):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def pair_records(tmp_path):
    return load_records(write(tmp_path, "pairs.jsonl", PAIRS))


def context(model, tokenizer, records, retain, options=None):
    spec = get_method("dpo")
    return Context(
        model,
        tokenizer,
        make_config(spec.config_cls, options),
        encode_records(tokenizer, records, "raw"),
        encode_records(tokenizer, retain, "raw"),
        records,
        "raw",
        Accelerator(cpu=True),
    )


def margins(model, tokenizer, records) -> torch.Tensor:
    """log p(chosen) - log p(rejected) per pair."""
    chosen = [
        encode_pair(tokenizer, r.prompt, chosen_of(r), "raw", i) for i, r in enumerate(records)
    ]
    rejected = encode_records(tokenizer, records, "raw")
    pad = tokenizer.pad_token_id
    return (
        stats_for_examples(model, chosen, pad).logprob
        - stats_for_examples(model, rejected, pad).logprob
    )


def test_pair_rows_become_qa_records_with_the_chosen_answer(tmp_path):
    records = pair_records(tmp_path)
    assert all(isinstance(r, QA) for r in records)
    assert records[0].completion == " Au" and chosen_of(records[0]) == " Fe"
    plain = load_records(write(tmp_path, "qa.jsonl", RETAIN))
    assert chosen_of(plain[0]) is None  # plain question/answer records are untouched
    shipped = load_pairs("builtin:preference")
    assert len(shipped) >= 50 and BUILTIN_PAIRS["preference"].is_file()
    assert all(chosen_of(r) != r.completion for r in shipped)


@pytest.mark.parametrize(
    "row, message",
    [
        ({"prompt": "a", "chosen": " b"}, "missing rejected"),
        ({"prompt": "a", "rejected": " b"}, "missing chosen"),
        ({"chosen": " b", "rejected": " c"}, "missing prompt"),
        ({"prompt": "a", "chosen": " b", "rejected": " b"}, "same text"),
        ({"prompt": "a", "chosen": "", "rejected": " b"}, "'chosen' must be a non-empty"),
        ({"prompt": "a", "chosen": 3, "rejected": " b"}, "'chosen' must be a non-empty"),
        ({"prompt": "a", "completion": " x", "rejected": " b"}, "instead of 'completion'"),
    ],
)
def test_malformed_pairs_are_data_errors(tmp_path, row, message):
    with pytest.raises(DataError, match=message):
        load_records(write(tmp_path, "bad.jsonl", [PAIRS[0], row]))
    with pytest.raises(DataError, match="bad.jsonl:2"):  # the line is named
        load_records(write(tmp_path, "bad.jsonl", [PAIRS[0], row]))


def test_load_pairs_refuses_plain_records(tmp_path):
    with pytest.raises(DataError, match="not a preference pair"):
        load_pairs(write(tmp_path, "mixed.jsonl", [PAIRS[0], RETAIN[0]]))


def test_dpo_loss_by_hand():
    # margin = (-1 - -2) - (-3 - -1) = 3; loss = -log sigmoid(0.5 * 3)
    value = dpo_loss(
        torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-1.0]), 0.5
    )
    assert abs(float(value) - math.log1p(math.exp(-1.5))) < 1e-6


def test_dpo_loss_at_step_zero_is_log_2(tiny_tokenizer, tmp_path):
    model = make_tiny_model(tiny_tokenizer)
    records = pair_records(tmp_path)
    retain = load_records(write(tmp_path, "r.jsonl", RETAIN))
    ctx = context(model, tiny_tokenizer, records, retain, {"retain_weight": 0.0})
    spec = get_method("dpo")
    spec.prepare(ctx)
    batch = {"forget": collate(ctx.forget, ctx.pad_id), "retain": collate(ctx.retain, ctx.pad_id)}
    with torch.no_grad():
        loss, terms = spec.loss(ctx, batch)
    assert abs(float(loss) - math.log(2)) < 1e-6, float(loss)
    assert abs(terms["margin"]) < 1e-4
    # the reference is the cache, not the live model: after a change the loss moves off log 2
    with torch.no_grad():
        next(model.parameters()).add_(0.05)
        moved, _ = spec.loss(ctx, batch)
    assert abs(float(moved) - math.log(2)) > 1e-4


def test_dpo_plain_items_take_a_refusal_as_chosen(tiny_tokenizer, tmp_path):
    model = make_tiny_model(tiny_tokenizer)
    records = load_records(write(tmp_path, "f.jsonl", RETAIN))
    ctx = context(model, tiny_tokenizer, records, records)
    get_method("dpo").prepare(ctx)
    chosen = ctx.state["dpo_chosen"][0]
    refusal = encode_pair(tiny_tokenizer, RETAIN[0]["prompt"], ctx.config.refusals[0], "raw", 0)
    assert chosen == refusal


def test_dpo_widens_the_chosen_over_rejected_margin(tiny_tokenizer, tmp_path):
    model = make_tiny_model(tiny_tokenizer)
    records = pair_records(tmp_path)
    retain = load_records(write(tmp_path, "r.jsonl", RETAIN))
    before = margins(model, tiny_tokenizer, records)
    spec = get_method("dpo")
    log = train(
        model,
        tiny_tokenizer,
        spec,
        make_config(spec.config_cls, {"beta": 0.5}),
        forget=encode_records(tiny_tokenizer, records, "raw"),
        retain=encode_records(tiny_tokenizer, retain, "raw"),
        forget_records=records,
        template="raw",
        config=TrainConfig(steps=10, lr=3e-3, batch_size=4, progress=False),
    )
    after = margins(model, tiny_tokenizer, records)
    assert abs(log[0]["dpo"] - math.log(2)) < 1e-5
    assert log[-1]["dpo"] < log[0]["dpo"] - 0.05
    assert bool((after > before).all()) and float((after - before).mean()) > 1.0, (before, after)


def test_unlearn_dpo_from_a_pair_file(tmp_path, tiny_tokenizer, capsys):
    model_dir = str(save_model(make_tiny_model(tiny_tokenizer), tiny_tokenizer, tmp_path / "m"))
    pairs = write(tmp_path, "pairs.jsonl", PAIRS)
    retain = write(tmp_path, "retain.jsonl", RETAIN)
    out = tmp_path / "out"
    argv = ["unlearn", "--model", model_dir, "--method", "dpo", "--forget", pairs]
    argv += ["--retain", retain, "--steps", "2", "--out", str(out), "--quiet", "--bypass-check"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["method"]["name"] == "dpo" and len(report["loss_log"]) == 2
    verdict = report["bypass"]["verdict"]  # the check ran on the unlearned model, and says so
    assert verdict in ("removed", "bypassed", "not_suppressed")
    assert verdict in (out / "report.html").read_text() and verdict in capsys.readouterr().out
    assert abs(report["loss_log"][0]["dpo"] - math.log(2)) < 1e-5
    capsys.readouterr()
    bad = write(tmp_path, "bad.jsonl", [PAIRS[0], {"prompt": "a", "chosen": " b"}])
    argv = ["unlearn", "--model", model_dir, "--method", "dpo", "--forget", bad]
    argv += ["--retain", retain, "--out", str(tmp_path / "out2"), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("excise: error: ") and "missing rejected" in err[-1]
    assert not (tmp_path / "out2").exists()
