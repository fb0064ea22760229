"""No command loses a user's files: for every command that writes, ``--out`` set to each of its
inputs, into one, around one, or to a folder excise did not write is refused with ``--overwrite``
given, in one line with exit code 2, before any model is loaded, and every file is unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import excise.models
from excise.cli import main
from excise.models import save_model
from tests.conftest import make_tiny_model, tree_digest

FORGET = [{"prompt": "The element iron has the symbol", "completion": " Fe"}]
RETAIN = [{"prompt": "The capital of France is", "completion": " Paris"}]
REQUEST = {
    "case_id": "a",
    "prompt": "The capital of {}",
    "subject": "France",
    "target_new": "Rome",
    "target_true": "Paris",
}


@pytest.fixture
def files(tmp_path, tiny_tokenizer, monkeypatch) -> dict[str, Path]:
    monkeypatch.setenv("EXCISE_HOME", str(tmp_path / "home"))
    model = make_tiny_model(tiny_tokenizer)
    found = {
        "model": save_model(model, tiny_tokenizer, tmp_path / "model"),
        "original": save_model(model, tiny_tokenizer, tmp_path / "original"),
    }
    for name, rows in (("forget", FORGET), ("retain", RETAIN), ("requests", [REQUEST])):
        found[name] = tmp_path / f"{name}.jsonl"
        found[name].write_text("".join(json.dumps(row) + "\n" for row in rows))
    found["corpus"] = tmp_path / "corpus.txt"
    found["corpus"].write_text("the capital of France is Paris\n")
    found["delta"] = tmp_path / "delta.safetensors"
    zero = torch.zeros_like(model.model.norm.weight, dtype=torch.float64)
    save_file(
        {"model.norm.weight": zero},
        str(found["delta"]),
        metadata={"method": "memit", "base_fingerprint": "x"},
    )
    found["recipe"] = tmp_path / "recipe.yaml"
    found["recipe"].write_text(
        f"model: {found['model']}\ndata: {{forget: {found['forget']}, retain: {found['retain']}}}\n"
        f"template: raw\nmethod: {{name: ga}}\ntrain: {{steps: 1}}\nout: {tmp_path / 'run'}\n"
    )
    found["mine"] = tmp_path / "mydocs"  # a user's folder that excise never wrote
    found["mine"].mkdir()
    (found["mine"] / "thesis.txt").write_text("four years of work")
    return found


def argv(command: str, f: dict[str, Path]) -> list[str]:
    model, data = ["--model", str(f["model"])], ["--forget", str(f["forget"])]
    data += ["--retain", str(f["retain"]), "--template", "raw"]
    return {
        "unlearn": ["unlearn", *model, *data, "--method", "ga", "--steps", "1", "--quiet"],
        "audit": ["audit", *model, "--original", str(f["original"]), *data],
        "edit": ["edit", *model, "--requests", str(f["requests"]), "--quiet"],
        "erase": ["erase", *model, "--method", "leace", *data],
        "bypass-check": ["bypass-check", *model, "--original", str(f["original"]), *data[:2]],
        "apply-delta": ["apply-delta", *model, "--delta", str(f["delta"])],
        "revert-delta": ["revert-delta", *model, "--delta", str(f["delta"])],
        "stats": ["stats", *model, "--corpus", str(f["corpus"])],
        "run": ["run", str(f["recipe"])],
    }[command]


INPUTS = {
    "unlearn": ("model", "forget", "retain"),
    "audit": ("model", "original", "forget", "retain"),
    "edit": ("model", "requests"),
    "erase": ("model", "forget", "retain"),
    "bypass-check": ("model", "original", "forget"),
    "apply-delta": ("model", "delta"),
    "revert-delta": ("model", "delta"),
    "stats": ("model", "corpus"),
    "run": ("recipe", "model", "forget"),
}
# where --out points: the input itself, a folder inside it, the folder that holds it, a user's folder
PLACES = ("is", "inside", "around", "mine")
FOLDERS = ("model", "original")  # only a folder input can hold --out
CASES = [
    (command, name, place)
    for command, names in INPUTS.items()
    for name in names
    for place in PLACES
    if (place != "mine" or name == names[0]) and (place != "inside" or name in FOLDERS)
]


def target(f: dict[str, Path], name: str, place: str, tmp_path: Path) -> Path:
    if place == "mine":
        return f["mine"]
    given = f[name]
    if place == "is":
        return given
    if place == "inside":
        return given / "run"
    holder = tmp_path / f"holder-{name}"  # the input moved into a folder that --out names
    holder.mkdir()
    moved = holder / given.name
    given.rename(moved)
    f[name] = moved
    return holder


def refuse_loading(*args, **kwargs):
    raise AssertionError("a model was loaded before the output was checked")


@pytest.mark.parametrize(("command", "name", "place"), CASES, ids=["-".join(c) for c in CASES])
def test_out_never_replaces_an_input_or_a_users_folder(
    command, name, place, files, tmp_path, monkeypatch, capsys
):
    out = target(files, name, place, tmp_path)
    args = [*argv(command, files), "--out", str(out), "--overwrite"]
    # every job loads through excise.models at call time (excise.jobs.common.load)
    monkeypatch.setattr(excise.models, "load_model", refuse_loading)
    before = tree_digest(tmp_path)
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("excise: error: ") and "Traceback" not in err, lines
    reason = "was not written by excise" if place == "mine" else "excise never writes over"
    if command == "stats" and place in ("mine", "around") or command == "run" and name != "recipe":
        reason = ""  # a folder where a file goes / the recipe's own inputs: refused all the same
    assert reason in lines[-1], lines[-1]
    assert tree_digest(tmp_path) == before


def test_overwrite_replaces_what_excise_wrote_and_keeps_the_users_mode(files, tmp_path, capsys):
    import os
    import stat

    out = tmp_path / "delta-out"
    args = [*argv("apply-delta", files), "--out", str(out)]
    old = os.umask(0o022)
    try:
        assert main(args) == 0, capsys.readouterr().err
        assert stat.S_IMODE(out.stat().st_mode) == 0o755  # not mkdtemp's 0700
        assert main([*args, "--overwrite"]) == 0, capsys.readouterr().err
    finally:
        os.umask(old)
    assert main(["verify", str(out)]) == 0
    assert not list(tmp_path.glob(".delta-out*"))  # no temporary or old folder left
    (out / "notes.txt").write_text("mine now")  # a file the user added makes the folder theirs
    assert main([*args, "--overwrite"]) == 2
    assert "notes.txt" in capsys.readouterr().err and (out / "notes.txt").is_file()
