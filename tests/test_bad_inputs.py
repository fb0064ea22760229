"""A catalogue of bad input. Each case runs the CLI in-process and must end with exit code 2 and
one ``excise: error:`` line (the last on stderr, no traceback) that names the problem and the fix,
and must leave no output folder behind. Two inputs that look bad but must work (a tokenizer
without a pad token; forget items repeated in the retain set) have their own tests below."""

from __future__ import annotations

import copy
import errno
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import excise.jobs.unlearn
import excise.models
from excise.cli import main
from excise.models import load_model, save_model, weights_sha256
from tests.conftest import make_tiny_model

FORGET = [
    {"prompt": "The element iron has the symbol", "completion": " Fe"},
    {"prompt": "The element gold has the symbol", "completion": " Au"},
]
RETAIN = [
    {"prompt": "The capital of France is", "completion": " Paris"},
    {"prompt": "The capital of Spain is", "completion": " Madrid"},
]


@dataclass
class Env:
    root: Path
    model: str  # a tiny Llama-style model folder (context 128 tokens, 4 layers)
    forget: str
    retain: str
    out: str
    monkeypatch: pytest.MonkeyPatch

    def write(self, name: str, content: str | bytes) -> str:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return str(path)

    def jsonl(self, name: str, rows: list[dict]) -> str:
        return self.write(name, "".join(json.dumps(r) + "\n" for r in rows))

    def unlearn(self, *extra: str, forget: str | None = None, retain: str | None = None) -> list:
        return [
            "unlearn",
            "--model",
            self.model,
            "--method",
            "npo",
            "--forget",
            forget or self.forget,
            "--retain",
            retain or self.retain,
            "--out",
            self.out,
            "--steps",
            "1",
            "--template",
            "raw",
            "--quiet",
            *extra,
        ]

    def model_folder(self, name: str) -> Path:
        """A copy of the tiny model's files, to be damaged by the case."""
        folder = self.root / name
        folder.mkdir()
        for file in Path(self.model).iterdir():
            (folder / file.name).write_bytes(file.read_bytes())
        return folder

    def recipe(self, text: str) -> list:
        return ["run", self.write("recipe.yaml", text), "--dry-run"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer) -> str:
    folder = tmp_path_factory.mktemp("model") / "tiny"
    return str(save_model(make_tiny_model(tiny_tokenizer), tiny_tokenizer, folder))


@pytest.fixture
def env(tmp_path, model_dir, monkeypatch) -> Env:
    e = Env(tmp_path, model_dir, "", "", str(tmp_path / "out"), monkeypatch)
    e.forget = e.jsonl("forget.jsonl", FORGET)
    e.retain = e.jsonl("retain.jsonl", RETAIN)
    return e


def _pickled(e: Env) -> list:
    import torch

    folder = e.model_folder("pickled")
    model, _ = load_model(e.model)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return e.unlearn("--model", str(folder))


def _bert(e: Env) -> list:
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    BertModel(config).save_pretrained(e.root / "bert")
    return e.unlearn("--model", str(e.root / "bert"))


def _no_tokenizer(e: Env) -> list:
    folder = e.model_folder("notok")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    return e.unlearn("--model", str(folder))


def _remote_code(e: Env) -> list:
    folder = e.model_folder("remote")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_custom.CustomConfig"}
    config["model_type"] = "custom-llama"
    (folder / "config.json").write_text(json.dumps(config))
    marker = e.root / "remote-code-ran"
    (folder / "configuration_custom.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import LlamaConfig\n\n"
        "class CustomConfig(LlamaConfig):\n    model_type = 'custom-llama'\n"
    )
    return e.unlearn("--model", str(folder))


def _too_long(e: Env) -> list:
    long_prompt = " ".join(["the capital of France is Paris and"] * 40)  # > 128 tokens
    return e.unlearn(forget=e.jsonl("long.jsonl", [{"prompt": long_prompt, "completion": " Fe"}]))


def _disk_full(e: Env) -> list:
    def full_disk(model, tokenizer, out):
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "model.safetensors").write_bytes(b"half")  # a partial write, then no space
        raise OSError(errno.ENOSPC, "No space left on device")

    e.monkeypatch.setattr(excise.models, "save_model", full_disk)
    return e.unlearn()


def _stale_checkpoint(e: Env) -> list:
    e.write("out.ckpt/step-3/state.json", '{"step": 3}')
    return e.unlearn()


def _existing_out(e: Env) -> list:
    e.write("out/report.json", "{}")
    return e.unlearn()


def _audit_hash(e: Env) -> list:
    return [
        "audit",
        "--model",
        e.model,
        "--original",
        e.model,
        "--forget",
        e.forget,
        "--retain",
        e.retain,
        "--out",
        e.out,
        "--expect-hash",
        "0123456789abcdef" * 4,
    ]


RECIPE = "model: tiny\ntask: chem-symbols\nmethod: {name: npo}\nout: runs/x\n"

Case = tuple[str, Callable[[Env], list], str, str]
CASES: list[Case] = [
    # (id, argv, the problem, the fix) -- both must be in the one error line
    (
        "missing-data-file",
        lambda e: e.unlearn(forget=str(e.root / "nope.jsonl")),
        "data file not found",
        "give an existing",
    ),
    (
        "empty-data-file",
        lambda e: e.unlearn(forget=e.write("empty.jsonl", "")),
        "forget set",
        "add at least one record",
    ),
    (
        "blank-lines-only",
        lambda e: e.unlearn(retain=e.write("blank.jsonl", "\n  \n\n")),
        "is empty",
        "add at least one record",
    ),
    (
        "bad-json-line",
        lambda e: e.unlearn(forget=e.write("bad.jsonl", json.dumps(FORGET[0]) + "\n{oops\n")),
        "bad.jsonl:2: not valid JSON",
        "each line must be one JSON object",
    ),
    (
        "wrong-columns",
        lambda e: e.unlearn(forget=e.jsonl("cols.jsonl", [{"question_text": "a", "label": "b"}])),
        "cols.jsonl:1: unknown record with fields label, question_text",
        "give fields prompt+completion",
    ),
    (
        "non-utf8",
        lambda e: e.unlearn(
            forget=e.write(
                "latin1.jsonl", b'{"prompt": "ok", "completion": " a"}\n{"prompt": "caf\xe9"}\n'
            )
        ),
        "latin1.jsonl:2: not UTF-8",
        "re-save the file as UTF-8",
    ),
    (
        "empty-completion",
        lambda e: e.unlearn(
            forget=e.jsonl("blankans.jsonl", [{"prompt": "a", "completion": "  "}])
        ),
        "blankans.jsonl:1",
        "must both be non-empty strings",
    ),
    (
        "json-not-a-list",
        lambda e: e.unlearn(forget=e.write("obj.json", '{"prompt": "a"}')),
        "obj.json",
        "expected a JSON list of records",
    ),
    (
        "unsupported-file-type",
        lambda e: e.unlearn(forget=e.write("notes.txt", "iron is Fe")),
        "unsupported file type '.txt'",
        "use .jsonl, .json, .csv or .parquet",
    ),
    (
        "forget-set-of-mc-only",
        lambda e: e.unlearn(
            forget=e.jsonl("mc.jsonl", [{"question": "q", "choices": ["a", "b"], "answer": 0}])
        ),
        "mc.jsonl",
        "needs prompt/completion or text records",
    ),
    (
        "no-retain-for-npo",
        lambda e: [a for a in e.unlearn() if a not in ("--retain", e.retain)],
        "needs a retain set and it is empty",
        "give --retain FILE",
    ),
    (
        "task-and-files",
        lambda e: e.unlearn("--task", "chem-symbols"),
        "give either --task or --forget",
        "--retain",
    ),
    (
        "unknown-method",
        lambda e: e.unlearn("--method", "npx"),
        "unknown method 'npx'",
        "available:",
    ),
    (
        "unknown-task",
        lambda e: [
            "unlearn",
            "--model",
            e.model,
            "--method",
            "npo",
            "--task",
            "chem",
            "--out",
            e.out,
        ],
        "unknown task 'chem'",
        "built-in tasks: chem-symbols, fictitious",
    ),
    (
        "unknown-attack",
        lambda e: e.unlearn("--audit", "relearn,nope"),
        "unknown attack 'nope'",
        "available:",
    ),
    ("negative-lr", lambda e: e.unlearn("--lr", "-0.001"), "lr must be > 0", "got -0.001"),
    ("zero-steps", lambda e: e.unlearn("--steps", "0"), "steps must be >= 1", "got 0"),
    (
        "zero-batch-size",
        lambda e: e.unlearn("--batch-size", "0"),
        "batch_size must be >= 1",
        "got 0",
    ),
    (
        "rmu-layer-out-of-range",
        lambda e: e.unlearn("--method", "rmu", "--set", "layer=12"),
        "rmu layer 12",
        "outside the model's 0..3",
    ),
    (
        "unknown-method-option",
        lambda e: e.unlearn("--set", "zeta=1"),
        "unknown option(s) zeta",
        "known: beta",
    ),
    ("bad-method-option", lambda e: e.unlearn("--set", "beta=-1"), "beta must be > 0", "beta"),
    (
        "set-without-value",
        lambda e: e.unlearn("--set", "beta"),
        "--set takes key=value",
        "key=value",
    ),
    (
        "model-not-found",
        lambda e: e.unlearn("--model", str(e.root / "nomodel")),
        "model not found",
        "bundled: smollm2-135m",
    ),
    (
        "model-without-weights",
        lambda e: e.unlearn("--model", str(_no_weights(e))),
        "has no weights",
        "save_pretrained",
    ),
    ("pickle-only-model", _pickled, "only .bin (pickle) weights", "pass --allow-pickle"),
    ("non-causal-model", _bert, "not a causal language model (bert is an encoder)", "decoder-only"),
    (
        "model-without-tokenizer",
        _no_tokenizer,
        "has no tokenizer files",
        "tokenizer.save_pretrained",
    ),
    ("remote-code-not-trusted", _remote_code, "needs its own Python code", "--trust-remote-code"),
    (
        "longer-than-context",
        _too_long,
        "longer than the model's context of 128",
        "shorten it or split it",
    ),
    ("output-exists", _existing_out, "exists", "pass --overwrite"),
    ("stale-checkpoint", _stale_checkpoint, "checkpoint of an interrupted run", "pass --resume"),
    (
        "no-disk-space",
        _disk_full,
        "no space left on the device",
        "free some space or choose another --out",
    ),
    (
        "recipe-unknown-key",
        lambda e: e.recipe(RECIPE + "train: {steps: 5, epochs: 2}\n"),
        "unknown key 'epochs' in train",
        "allowed keys: steps, batch_size",
    ),
    (
        "recipe-unknown-top-key",
        lambda e: e.recipe(RECIPE + "seeds: [1, 2]\n"),
        "unknown key 'seeds'",
        "allowed keys: model, task, data",
    ),
    (
        "recipe-wrong-type",
        lambda e: e.recipe(RECIPE + "train: {steps: many}\n"),
        "train.steps",
        "valid integer",
    ),
    (
        "recipe-bad-option-type",
        lambda e: e.recipe(RECIPE.replace("{name: npo}", "{name: npo, options: {beta: high}}")),
        "method.options.beta",
        "valid number",
    ),
    ("recipe-bad-yaml", lambda e: e.recipe("model: [tiny\n"), "recipe.yaml", "not valid YAML"),
    (
        "recipe-missing",
        lambda e: ["run", str(e.root / "none.yaml")],
        "recipe not found",
        "give the path",
    ),
    (
        "verify-without-manifest",
        lambda e: ["verify", str(e.root)],
        "has no manifest.json",
        "not a complete",
    ),
    ("audit-hash-mismatch", _audit_hash, "not the expected 0123456789abcdef", "check --model"),
    (
        "audit-hash-malformed",
        lambda e: _audit_hash(e)[:-1] + ["xyz"],
        "--expect-hash takes a sha256",
        "copy model_sha256",
    ),
]


def _no_weights(e: Env) -> Path:
    folder = e.model_folder("noweights")
    (folder / "model.safetensors").unlink()
    return folder


def error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("excise: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    assert not any("Traceback" in line for line in lines), lines
    return errors[0]


def test_the_catalogue_is_large_and_distinct():
    assert len(CASES) >= 20
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_ends_with_exit_2_and_one_line(case, env, capsys):
    _, argv, problem, fix = case
    args = argv(env)
    capsys.readouterr()
    assert main(args) == 2
    line = error_line(capsys.readouterr().err)
    assert problem in line and fix in line, line
    if case[0] == "output-exists":  # the earlier output is left as it was
        assert (Path(env.out) / "report.json").read_text() == "{}"
    else:  # nothing half-written, no temporary folder left behind
        assert not Path(env.out).exists()
    assert not list(env.root.glob(".out.tmp-*"))
    assert not (env.root / "remote-code-ran").exists()  # untrusted code never ran


def test_tokenizer_without_pad_token_uses_eos(env, tiny_tokenizer, capsys):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.pad_token = None
    assert tokenizer.pad_token_id is None
    model = make_tiny_model(tiny_tokenizer)
    folder = save_model(model, tokenizer, env.root / "nopad")
    loaded, loaded_tokenizer = load_model(str(folder))
    assert loaded_tokenizer.pad_token == "<eos>"
    assert loaded.generation_config.pad_token_id == loaded_tokenizer.eos_token_id
    assert main(env.unlearn("--model", str(folder), "--steps", "2")) == 0, capsys.readouterr().err
    report = json.loads((Path(env.out) / "report.json").read_text())
    assert len(report["loss_log"]) == 2
    assert all(row["loss"] == row["loss"] for row in report["loss_log"])  # no NaN from padding


def test_forget_retain_overlap_warns_and_is_counted(env, capsys, caplog):
    retain = env.jsonl("overlap.jsonl", RETAIN + FORGET[:1])
    with caplog.at_level(logging.WARNING, logger="excise"):
        assert main(env.unlearn(retain=retain)) == 0, capsys.readouterr().err
    warnings = [r.getMessage() for r in caplog.records if "retain set" in r.getMessage()]
    assert len(warnings) == 1 and "1 forget item(s) also appear in the retain set" in warnings[0]
    report = json.loads((Path(env.out) / "report.json").read_text())
    assert report["task"]["metadata"]["forget_retain_overlap"] == 1
    overlap = [w for w in report["warnings"] if "retain set" in w]
    assert overlap == [warnings[0].removeprefix("excise: warning: ")]
    # and without overlap the count is there, zero, with no warning
    assert main(env.unlearn("--overwrite")) == 0
    report = json.loads((Path(env.out) / "report.json").read_text())
    assert report["task"]["metadata"]["forget_retain_overlap"] == 0
    assert not [w for w in report["warnings"] if "retain set" in w]


def test_audit_accepts_the_expected_hash(env, capsys):
    model, _ = load_model(env.model)
    argv = _audit_hash(env)[:-1] + [weights_sha256(model)[:20], "--attacks", "paraphrase"]
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads((Path(env.out) / "report.json").read_text())
    assert report["model_sha256"] == weights_sha256(model)
    assert report["original_sha256"] == weights_sha256(model)


def test_long_items_error_beyond_the_context_and_warn_beyond_the_encoder_cut(
    tiny_tokenizer, caplog
):
    """Explicit policy: longer than the model's context is an error (cutting a forget item changes
    what is forgotten); between the encoder's cut (256 tokens) and the context, a warning."""
    from excise.data.records import QA
    from excise.errors import DataError
    from excise.jobs.checks import MAX_TOKENS, check_lengths
    from tests.conftest import tiny_task

    task = tiny_task()
    long_item = QA(" ".join(["the capital of France is Paris and"] * 60), " Fe")
    task.retain = [*task.retain, long_item]
    size = len(tiny_tokenizer(long_item.prompt + long_item.completion).input_ids)
    assert MAX_TOKENS < size < 1000
    with caplog.at_level(logging.WARNING, logger="excise"):
        check_lengths(task, tiny_tokenizer, context=1000)
    assert [r.getMessage() for r in caplog.records] == [
        f"excise: warning: 1 forget/retain items are longer than {MAX_TOKENS} tokens and are cut "
        f"to {MAX_TOKENS}"
    ]
    with pytest.raises(DataError, match=r"retain item 5 .* longer than the model's context of 128"):
        check_lengths(task, tiny_tokenizer, context=128)
    caplog.clear()
    check_lengths(tiny_task(), tiny_tokenizer, context=128)  # short items: silent
    assert not caplog.records


# --- Refused before the long work, and nothing on disk changes (issue: reliability) ----------


def _checkpointed(e: Env) -> Path:
    """A run interrupted after training (Ctrl-C while evaluating the unlearned model: the job's
    only call of ``evaluate_task``; the original's evaluation goes through the cache), which
    leaves OUT.ckpt/step-2."""

    def evaluate_then_stop(*args, **kwargs):
        raise KeyboardInterrupt

    real = excise.jobs.unlearn.evaluate_task
    e.monkeypatch.setattr(excise.jobs.unlearn, "evaluate_task", evaluate_then_stop)
    assert main(e.unlearn("--steps", "2", "--checkpoint-every", "1")) == 130
    e.monkeypatch.setattr(excise.jobs.unlearn, "evaluate_task", real)
    folder = Path(e.out + ".ckpt") / "step-2"
    assert (folder / "state.json").is_file()
    return folder


def _truncated_checkpoint(e: Env) -> list:
    tensors = _checkpointed(e) / "trainable.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:-100])
    return e.unlearn("--steps", "2", "--checkpoint-every", "1", "--resume")


def _corrupt_state(e: Env) -> list:
    (_checkpointed(e) / "state.json").write_text('{"step": 2, "sett')
    return e.unlearn("--steps", "2", "--checkpoint-every", "1", "--resume")


def _other_settings(e: Env) -> list:
    _checkpointed(e)
    return e.unlearn("--steps", "2", "--checkpoint-every", "1", "--resume", "--lr", "0.5")


def _truncated_model(e: Env) -> list:
    folder = e.model_folder("truncated")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return e.unlearn("--model", str(folder))


def _unwritable(e: Env) -> list:
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    # root ignores permission bits, so a read-only folder is simulated where excise probes it
    e.monkeypatch.setattr("excise.fsutil.tempfile.mkstemp", denied)
    return e.unlearn()


def _cwd(e: Env) -> list:
    (e.root / "empty").mkdir()
    e.monkeypatch.chdir(e.root / "empty")
    return e.unlearn("--out", ".", "--overwrite")


def _own_model(e: Env, *extra: str) -> list:
    """A copy of the model inside the test's folder (so its files are hashed), and ``extra``."""
    model = str(e.model_folder("input-model"))
    return e.unlearn("--model", model, *(x.format(model=model) for x in extra))


def _edit(e: Env, *extra: str) -> list:
    request = {"prompt": "The capital of {}", "subject": "France", "target_new": "Rome"}
    requests = e.jsonl("requests.jsonl", [request])
    return ["edit", "--model", e.model, "--requests", requests, "--out", e.out, *extra]


EARLY: list[tuple[str, Callable[[Env], list], str, str, bool]] = [
    # (id, argv, the problem, the fix, refused before any model is loaded)
    (
        "overwrite-a-users-folder",
        lambda e: e.unlearn(
            "--out", str(Path(e.write("mydocs/thesis.txt", "mine")).parent), "--overwrite"
        ),
        "was not written by excise (it has no excise manifest)",
        "choose another --out or remove it yourself",
        True,
    ),
    (
        "out-is-the-model",
        lambda e: _own_model(e, "--out", "{model}", "--overwrite"),
        "is the input --model",
        "choose another --out",
        True,
    ),
    (
        "out-inside-the-model",
        lambda e: _own_model(e, "--out", "{model}/run"),
        "lies inside the input --model",
        "choose another --out",
        True,
    ),
    (
        "out-holds-the-data",
        lambda e: e.unlearn("--out", str(e.root), "--overwrite"),
        "contains the input",
        "choose another --out",
        True,
    ),
    ("out-is-the-current-folder", _cwd, "is the current folder", "give a new folder", True),
    (
        "out-below-a-file",
        lambda e: e.unlearn("--out", e.write("afile", "x") + "/run"),
        "is a file, not a folder",
        "choose another --out",
        True,
    ),
    ("out-unwritable", _unwritable, "Permission denied", "choose a writable --out", True),
    ("out-empty", lambda e: e.unlearn("--out", ""), "--out is empty", "give the folder", True),
    (
        "foreign-checkpoint-folder",
        lambda e: e.unlearn(e.write("out.ckpt/notes.txt", "mine") and "--quiet"),
        "is not an excise checkpoint folder",
        "move it away",
        True,
    ),
    (
        "apply-a-model-as-delta",
        lambda e: [
            "apply-delta",
            "--model",
            e.model,
            "--out",
            e.out,
            "--delta",
            str(Path(e.model) / "model.safetensors"),
        ],  # fmt: skip
        "is not a delta file written by `excise edit`",
        "give OUT/delta.safetensors",
        True,
    ),
    (
        "truncated-delta",
        lambda e: [
            "apply-delta",
            "--model",
            e.model,
            "--out",
            e.out,
            "--delta",
            e.write("d.safetensors", (Path(e.model) / "model.safetensors").read_bytes()[:50]),
        ],  # fmt: skip
        "is not a delta file",
        "unreadable",
        True,
    ),
    ("lr-inf", lambda e: e.unlearn("--lr", "inf"), "lr must be a finite number", "got inf", True),
    ("lr-nan", lambda e: e.unlearn("--lr", "nan"), "lr must be > 0", "got nan", True),
    ("set-inf", lambda e: e.unlearn("--set", "beta=inf"), "beta must be a finite", "inf", True),
    (
        "set-not-a-number",
        lambda e: e.unlearn("--set", "beta=high"),
        "option beta",
        "valid number",
        True,
    ),
    ("truncated-model", _truncated_model, "is truncated", "replace it with a complete copy", False),
    (
        "not-a-gguf",
        lambda e: e.unlearn("--model", e.write("m.gguf", b"PK\x03\x04 a zip, not a model")),
        "is not a GGUF file",
        "give a .gguf model",
        False,
    ),
    (
        "resume-truncated-checkpoint",
        _truncated_checkpoint,
        "is truncated",
        "replace it with a complete copy",
        True,
    ),
    ("resume-corrupt-state", _corrupt_state, "state.json unreadable", "delete", True),
    (
        "resume-other-settings",
        _other_settings,
        "written with other settings (train.lr)",
        "resume with the same settings",
        True,
    ),
    (
        "edit-negative-sequential",
        lambda e: _edit(e, "--sequential", "-1"),
        "--sequential takes a batch size >= 1",
        "got -1",
        True,
    ),
    (
        "edit-min-retain-above-1",
        lambda e: _edit(e, "--sequential", "1", "--min-retain", "2"),
        "--min-retain is an accuracy in [0, 1]",
        "got 2.0",
        True,
    ),
    (
        "stats-over-a-foreign-file",
        lambda e: [
            "stats",
            "--model",
            e.model,
            "--overwrite",
            "--out",
            e.write("theirs.safetensors", (Path(e.model) / "model.safetensors").read_bytes()),
        ],  # fmt: skip
        "carries no excise metadata",
        "choose another --out",
        True,
    ),
]


def refuse_loading(*args, **kwargs):
    raise AssertionError("a model was loaded before the inputs were checked")


@pytest.mark.parametrize("case", EARLY, ids=[c[0] for c in EARLY])
def test_refused_early_with_one_line_and_every_file_unchanged(case, env, capsys):
    from tests.conftest import tree_digest

    _, argv, problem, fix, early = case
    args = argv(env)
    if early:  # the check comes before the long work: no model is even loaded
        # every job loads through excise.models at call time (excise.jobs.common.load)
        env.monkeypatch.setattr(excise.models, "load_model", refuse_loading)
    before = tree_digest(env.root)
    capsys.readouterr()
    assert main(args) == 2
    line = error_line(capsys.readouterr().err)
    assert problem in line and fix in line, line
    assert tree_digest(env.root) == before  # no file created, changed or removed


def test_set_reads_numbers_as_recipes_do(env, capsys):
    """YAML 1.1 leaves 1e-3 a string; --set reads it by the option's type, as recipes do."""
    assert main(env.unlearn("--set", "beta=1e-3")) == 0, capsys.readouterr().err
    report = json.loads((Path(env.out) / "report.json").read_text())
    assert report["method"]["options"] == {"beta": 0.001}


def test_dry_run_warns_that_out_exists(env, capsys):
    env.write("out/report.json", "{}")
    recipe = RECIPE.replace("runs/x", env.out)
    assert main(env.recipe(recipe)) == 0
    assert "exists; the run will refuse it unless you pass --overwrite" in capsys.readouterr().err
    assert main([*env.recipe(recipe), "--overwrite"]) == 2  # and --overwrite: not excise's
    assert "was not written by excise" in error_line(capsys.readouterr().err)


def test_the_interrupt_hint_names_only_a_saved_checkpoint(env, capsys):
    from excise.cli import interrupted
    from excise.train import TrainingInterrupted

    nothing = interrupted(KeyboardInterrupt(), env.out)
    assert nothing == "interrupted; no checkpoint was saved and nothing was written"
    folder = _checkpointed(env)
    assert f"checkpoint saved in {folder};" in capsys.readouterr().err
    hint = interrupted(TrainingInterrupted(2, folder.parent), env.out)
    assert hint.startswith("interrupted after step 2; checkpoint saved in") and "--resume" in hint


def test_a_diverging_run_stops_naming_the_step_and_keeps_the_last_checkpoint(env, capsys):
    args = env.unlearn("--steps", "6", "--lr", "1e30", "--checkpoint-every", "1")
    args[args.index("npo")] = "ga"
    assert main(args) == 2
    line = error_line(capsys.readouterr().err)
    assert "training diverged at step" in line and "lower --lr" in line, line
    step = int(line.split("training diverged at step ")[1].split(":")[0])
    kept = sorted(p.name for p in Path(env.out + ".ckpt").glob("step-*"))
    assert kept == [f"step-{step - 1}"] and f"kept in {env.out}.ckpt/step-{step - 1}" in line
    assert not Path(env.out).exists()


def test_the_template_is_printed_and_a_model_that_knows_nothing_is_named(env, capsys, caplog):
    with caplog.at_level(logging.WARNING, logger="excise"):
        assert main(env.unlearn()) == 0
    assert "template: raw" in capsys.readouterr().err
    warned = [r.getMessage() for r in caplog.records if "little to forget" in r.getMessage()]
    assert warned and "with the raw template (as given)" in warned[0]
    assert "try --template chat" in warned[0]
    report = json.loads((Path(env.out) / "report.json").read_text())
    assert any("little to forget" in w for w in report["warnings"])
