"""User errors end in one line and exit code 2; outputs appear whole or not at all."""

import json

import pytest

from excise.cli import main
from excise.editing import EDITORS
from excise.erasure import ERASERS
from excise.fsutil import atomic_dir, write_manifest
from excise.methods import METHODS
from excise.models import save_model


@pytest.fixture
def tiny_dir(tmp_path, tiny_model, tiny_tokenizer):
    return str(save_model(tiny_model, tiny_tokenizer, tmp_path / "tiny"))


def data(tmp_path, name, rows):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("excise: error: ")]
    assert len(errors) == 1 and err[-1] == errors[0], err
    assert not any("Traceback" in line for line in err)
    return errors[0]


def test_unlearn_writes_a_complete_output(tmp_path, tiny_dir, capsys):
    forget = data(
        tmp_path, "f.jsonl", [{"prompt": "The element iron has the symbol", "completion": " Fe"}]
    )
    retain = data(
        tmp_path, "r.jsonl", [{"prompt": "The capital of France is", "completion": " Paris"}]
    )
    out = tmp_path / "out"
    argv = [
        "unlearn",
        "--model",
        tiny_dir,
        "--forget",
        forget,
        "--retain",
        retain,
        "--method",
        "graddiff",
        "--steps",
        "2",
        "--out",
        str(out),
        "--quiet",
        "--template",
        "raw",
    ]
    assert main(argv) == 0
    for name in (
        "model/model.safetensors",
        "model/config.json",
        "model/README.md",
        "report.json",
        "report.html",
        "recipe.yaml",
        "manifest.json",
    ):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["schema_version"] == 1 and report["method"]["name"] == "graddiff"
    assert len(report["loss_log"]) == 2 and "forget_accuracy" in report["after"]
    assert "forget_accuracy" in capsys.readouterr().out
    assert not (tmp_path / "out.ckpt").exists()
    # the same command again refuses to overwrite; --filter-known on unknown items is a clear error
    assert main(argv) == 2 and "exists" in error_line(capsys)
    assert main(argv + ["--overwrite", "--filter-known"]) == 2
    assert "none of the forget items" in error_line(capsys)
    assert (out / "report.json").is_file()  # the failed run left the earlier output alone


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "result"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "half.txt").write_text("x")
        raise RuntimeError("boom")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with atomic_dir(target) as tmp:
        (tmp / "whole.txt").write_text("x")
    assert (target / "whole.txt").is_file()
    with pytest.raises(Exception, match="exists"), atomic_dir(target):
        pass
    # no manifest: not excise's to replace, even with overwrite
    with (
        pytest.raises(Exception, match="not written by excise"),
        atomic_dir(target, overwrite=True),
    ):
        pass
    write_manifest(target)
    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("y")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]  # no .old or .tmp left


def test_methods_lists_every_method(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    listed = {line.split()[0] for line in out.splitlines() if line and not line[0].isspace()}
    assert listed == set(METHODS.names()) | set(EDITORS.names()) | set(ERASERS.names())


def test_audit_command_writes_a_scorecard(tmp_path, tiny_dir, capsys):
    forget = data(
        tmp_path,
        "f.jsonl",
        [
            {
                "prompt": "The element iron has the symbol",
                "completion": " Fe",
                "paraphrases": ["Iron has the symbol"],
            }
        ],
    )
    retain = data(
        tmp_path, "r.jsonl", [{"prompt": "The capital of France is", "completion": " Paris"}]
    )
    out = tmp_path / "audit"
    argv = [
        "audit",
        "--model",
        tiny_dir,
        "--original",
        tiny_dir,
        "--forget",
        forget,
        "--retain",
        retain,
        "--template",
        "raw",
        "--attacks",
        "paraphrase,quantize",
        "--out",
        str(out),
    ]
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["kind"] == "audit" and report["audit"]["attacks"] == ["paraphrase", "quantize"]
    assert "worst" in report["audit"]["scorecard"]["forget_accuracy"]
    assert "<svg" in (out / "report.html").read_text()
    assert "worst case" in capsys.readouterr().out
    assert main(argv[:-2] + ["--attacks", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "nope" in error_line(capsys)
