"""The TOFU-style path end to end on a tiny model: teach (cached), gold model, forget quality."""

import json

import pytest

from excise.cli import main
from excise.models import save_model


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("EXCISE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_fictitious_teaches_once_and_reports_forget_quality(
    tmp_path, home, tiny_model, tiny_tokenizer, capsys
):
    folder = save_model(tiny_model, tiny_tokenizer, tmp_path / "tiny")
    out = tmp_path / "out"
    argv = [
        "unlearn",
        "--model",
        str(folder),
        "--task",
        "fictitious",
        "--method",
        "npo",
        "--steps",
        "2",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    taught = list((home / "taught").glob("fictitious-*"))
    assert len(taught) == 1 and (taught[0] / "full" / "model.safetensors").is_file()
    assert (taught[0] / "gold" / "model.safetensors").is_file()
    report = json.loads((out / "report.json").read_text())
    assert 0.0 <= report["before"]["forget_quality"] <= 1.0
    assert "teach (cached)" in report["timings_s"]
    from excise.models import fingerprint, load_model

    weights = {
        fingerprint(load_model(str(p))[0]) for p in (folder, taught[0] / "full", taught[0] / "gold")
    }
    assert len(weights) == 3  # the taught and gold models were trained, and differently
    stamp = (taught[0] / "full" / "model.safetensors").stat().st_mtime_ns
    assert main(argv + ["--overwrite"]) == 0
    assert (taught[0] / "full" / "model.safetensors").stat().st_mtime_ns == stamp  # cached


def test_fictitious_audit_reports_a_relearn_ratio_against_gold(
    tmp_path, home, tiny_model, tiny_tokenizer, capsys
):
    folder = save_model(tiny_model, tiny_tokenizer, tmp_path / "tiny")
    out = tmp_path / "audit"
    argv = [
        "audit",
        "--model",
        str(folder),
        "--original",
        str(folder),
        "--task",
        "fictitious",
        "--attacks",
        "relearn",
        "--out",
        str(out),
    ]
    assert main(argv) == 0, capsys.readouterr().err
    relearn = json.loads((out / "report.json").read_text())["audit"]["relearn"]
    assert set(relearn["curves"]) == {"unlearned", "original", "gold"}
    assert "forget_full" in relearn["ratio"] and "bound" in relearn["ratio"]["forget_full"]
    assert "relearn ratio vs gold" in capsys.readouterr().out


def test_fictitious_unlearn_with_audit_uses_taught_original_and_gold(
    tmp_path, home, tiny_model, tiny_tokenizer, capsys
):
    folder = save_model(tiny_model, tiny_tokenizer, tmp_path / "tiny")
    out = tmp_path / "out"
    argv = [
        "unlearn",
        "--model",
        str(folder),
        "--task",
        "fictitious",
        "--method",
        "ga",
        "--steps",
        "1",
        "--audit",
        "paraphrase,relearn",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert set(report["audit"]["clean"]) == {"unlearned", "original", "gold"}
    assert set(report["audit"]["relearn"]["curves"]) == {"unlearned", "original", "gold"}
    # the audit's original is the taught model as it was before unlearning
    assert (
        report["audit"]["clean"]["original"]["forget_accuracy"]
        == report["before"]["forget_accuracy"]
    )
