"""What a Hugging Face user expects of `excise unlearn`, end to end from the command line:
TensorBoard logs (--report-to), progress lines without carriage returns in a log, and example
prompts with their answers before and after in report.json, report.html and the model card."""

import contextlib
import io
import json

import pytest

from excise.cli import main
from excise.models import save_model
from tests.conftest import make_tiny_model

FORGET = [
    {"prompt": "The element iron has the symbol", "completion": " Fe"},
    {"prompt": "The element gold has the symbol", "completion": " Au", "paraphrases": ["Gold is"]},
]
RETAIN = [{"prompt": "The capital of France is", "completion": " Paris"}]
STEPS = 3


def write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_tokenizer):
    """One `excise unlearn --report-to tensorboard` with stderr going to a log (no terminal)."""
    root = tmp_path_factory.mktemp("hub_user")
    model = str(save_model(make_tiny_model(tiny_tokenizer), tiny_tokenizer, root / "tiny"))
    out = root / "out"
    argv = ["unlearn", "--model", model, "--method", "graddiff", "--steps", str(STEPS)]
    argv += [
        "--forget",
        write(root / "f.jsonl", FORGET),
        "--retain",
        write(root / "r.jsonl", RETAIN),
    ]
    argv += [
        "--template",
        "raw",
        "--out",
        str(out),
        "--report-to",
        "tensorboard",
        "--audit",
        "relearn",
    ]
    log, printed = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EXCISE_PROGRESS_SECONDS", "0")  # a line at every update
        # a cache of its own: the original's evaluation is computed (and logged), not read from
        # an earlier run's cache (the tiny model is the same in every run)
        patch.setenv("EXCISE_HOME", str(root / "home"))
        with contextlib.redirect_stderr(log), contextlib.redirect_stdout(printed):
            code = main(argv)
    assert code == 0, log.getvalue()[-3000:]
    return {"root": root, "out": out, "stderr": log.getvalue(), "stdout": printed.getvalue()}


def test_tensorboard_events_hold_the_losses_and_metrics(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = run["root"] / "out.runs"  # beside --out, not inside it
    assert runs.is_dir() and not (run["out"] / "runs").exists()
    report = json.loads((run["out"] / "report.json").read_text())
    folder = runs / report["tracking"]["run"]
    assert report["tracking"]["report_to"] == ["tensorboard"]
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "train/loss" in tags and "train/lr" in tags and "eval/forget_accuracy" in tags
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == list(range(1, STEPS + 1))
    logged = [e.value for e in losses]
    assert logged == pytest.approx([row["loss"] for row in report["loss_log"]], rel=1e-5)
    accuracy = {e.step: e.value for e in events.Scalars("eval/forget_accuracy")}
    assert accuracy[0] == pytest.approx(report["before"]["forget_accuracy"])
    assert accuracy[STEPS] == pytest.approx(report["after"]["forget_accuracy"])
    assert "tensorboard --logdir" in run["stderr"]
    assert f"logged to tensorboard: {runs.resolve()}" in run["stdout"]
    # the audit (--audit relearn): its scorecard after training and its relearning curves
    worst = events.Scalars("audit/forget_accuracy/worst")
    assert [e.step for e in worst] == [STEPS]
    assert worst[0].value == pytest.approx(report["audit"]["scorecard"]["forget_accuracy"]["worst"])
    for role in ("unlearned", "original"):
        curve = events.Scalars(f"audit/relearn/{role}/forget_full/forget_accuracy")
        rows = report["audit"]["relearn"]["curves"][role]
        wanted = [r["step"] for r in rows if r["variant"] == "forget_full"]
        assert [e.step for e in curve] == wanted and len(wanted) > 1


def test_a_log_gets_progress_lines_and_no_carriage_return(run):
    err = run["stderr"]
    assert "\r" not in err and "\x1b[" not in err
    lines = err.splitlines()
    train = [line for line in lines if line.startswith("[unlearn (graddiff") and " train: " in line]
    assert any(f"{STEPS}/{STEPS} steps (100%)" in line for line in train), err[-2000:]
    assert any("loss=" in line for line in train)  # the step's loss terms ride along
    assert any(line.startswith("[evaluate before] score: ") for line in lines), err[-2000:]
    assert any(line.startswith("[evaluate after] generate: ") for line in lines)


def test_quiet_prints_no_progress(tmp_path, tiny_tokenizer, capsys, monkeypatch):
    monkeypatch.setenv("EXCISE_PROGRESS_SECONDS", "0")
    model = str(save_model(make_tiny_model(tiny_tokenizer), tiny_tokenizer, tmp_path / "tiny"))
    argv = ["unlearn", "--model", model, "--method", "ga", "--steps", "1", "--quiet"]
    argv += ["--forget", write(tmp_path / "f.jsonl", FORGET), "--template", "raw"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "[load model] ..." in err  # the stage lines stay
    assert " score: " not in err and " train: " not in err and "\r" not in err


def test_report_shows_examples_before_and_after(run):
    report = json.loads((run["out"] / "report.json").read_text())
    examples = report["examples"]
    assert list(examples) == ["forget", "paraphrase", "retain"]
    assert [row["prompt"] for row in examples["forget"]] == [r["prompt"] for r in FORGET]
    assert examples["paraphrase"][0]["prompt"] == "Gold is"
    for rows in examples.values():
        for row in rows:
            assert set(row) == {
                "prompt",
                "expected",
                "before",
                "after",
                "before_match",
                "after_match",
            }
            assert isinstance(row["before"], str) and isinstance(row["after"], str)
    html = (run["out"] / "report.html").read_text()
    assert "<section id='examples'>" in html and "Forgotten prompts" in html
    assert "The element iron has the symbol" in html


def test_model_card_shows_what_forgotten_prompts_produce(run):
    from huggingface_hub import ModelCard

    card = ModelCard.load(run["out"] / "model" / "README.md")
    assert {"excise", "unlearning", "graddiff"} <= set(card.data.tags)
    assert "## What forgotten prompts now produce" in card.text
    assert "| The element iron has the symbol | Fe |" in card.text


def test_examples_come_from_the_model_before_training(tiny_tokenizer):
    """The before-answers are the original model's: answered before the change, not after."""
    import torch

    from excise.metrics.generate import answer_sets
    from excise.report import examples
    from tests.conftest import tiny_task

    model = make_tiny_model(tiny_tokenizer)
    task = tiny_task()
    chosen = examples.pick(task, count=2)
    before = answer_sets(model, tiny_tokenizer, chosen, "raw")
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param))
    after = answer_sets(model, tiny_tokenizer, chosen, "raw")
    rows = examples.combine(chosen, before, after)
    assert [r["before"] for r in rows["forget"]] == before["forget"]
    assert before != after and all(len(v) == 2 for v in before.values())
    again = answer_sets(make_tiny_model(tiny_tokenizer), tiny_tokenizer, chosen, "raw")
    assert again == before  # greedy: the same model gives the same answers


def test_unknown_or_missing_tracker_is_one_line(tmp_path, capsys, monkeypatch):
    import excise.train.tracking

    base = ["unlearn", "--method", "ga", "--task", "chem-symbols", "--out", str(tmp_path / "o")]
    assert main([*base, "--report-to", "tensorbored"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("excise: error: --report-to: unknown tracker 'tensorbored'")
    monkeypatch.setattr(excise.train.tracking, "_installed", lambda name: name != "wandb")
    assert main([*base, "--report-to", "tensorboard,wandb"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "excise: error: --report-to wandb needs the wandb package, which is not installed: "
        "pip install wandb"
    ]
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.runs").exists()


def test_logging_dir_never_inside_the_output_or_an_input(tmp_path, capsys):
    data = write(tmp_path / "f.jsonl", FORGET)
    base = ["unlearn", "--method", "ga", "--forget", data, "--out", str(tmp_path / "o")]
    base += ["--report-to", "tensorboard"]
    for where in (tmp_path / "o" / "runs", tmp_path / "f.jsonl", tmp_path):
        assert main([*base, "--logging-dir", str(where)]) == 2
        assert "choose another --logging-dir" in capsys.readouterr().err
