"""Interruption and resume in a real process, outputs that appear whole or not at all, safe loading,
``excise verify``, the audit's hash check, recipes, and same seed -> same metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import excise.jobs.unlearn
import excise.models
from excise.cli import main
from excise.errors import ExciseError, ModelError
from excise.jobs.unlearn import UnlearnJob, run
from excise.models import load_model, save_model, weights_sha256
from excise.train import TrainingInterrupted
from tests.conftest import make_tiny_model, tiny_task

ROOT = Path(__file__).resolve().parents[1]
FORGET = [
    {"prompt": "The element iron has the symbol", "completion": " Fe"},
    {"prompt": "The element gold has the symbol", "completion": " Au"},
    {"prompt": "The element silver has the symbol", "completion": " Ag"},
]
RETAIN = [
    {"prompt": "The capital of France is", "completion": " Paris"},
    {"prompt": "The capital of Spain is", "completion": " Madrid"},
]
# runs excise.cli.main in a fresh process; with EXCISE_TEST_PAUSE_AT=N it writes a marker file
# after training step N and sleeps, so the test can signal it at a known point
DRIVER = """
import os, sys, time
import torch
torch.set_num_threads(1)
import excise.jobs.training as training
from excise.cli import main

pause_at = int(os.environ.get("EXCISE_TEST_PAUSE_AT", "0"))
real_train = training.train

def train(*args, **kwargs):
    def on_step(step, terms):
        if step == pause_at:
            with open(os.environ["EXCISE_TEST_MARKER"], "w") as handle:
                handle.write(str(step))
            time.sleep(float(os.environ["EXCISE_TEST_PAUSE_S"]))
    return real_train(*args, **{**kwargs, "on_step": on_step})

training.train = train
sys.exit(main(sys.argv[1:]))
"""


def train_run(tokenizer, steps, checkpoint_dir=None, resume=False, model=None, on_step=None):
    """NPO on the tiny task, as in test_train, with a step hook."""
    from excise.data.encode import encode_records
    from excise.methods import get_method
    from excise.train import TrainConfig, train

    task = tiny_task()
    model = model or make_tiny_model(tokenizer)
    spec = get_method("npo")
    log = train(
        model,
        tokenizer,
        spec,
        spec.config_cls(),
        forget=encode_records(tokenizer, task.forget, "raw"),
        retain=encode_records(tokenizer, task.retain, "raw"),
        forget_records=task.forget,
        template="raw",
        config=TrainConfig(steps=steps, lr=1e-3, batch_size=2, progress=False, schedule="cosine"),
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        on_step=on_step,
    )
    return model, log


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_tokenizer) -> dict:
    root = tmp_path_factory.mktemp("reliability")
    model = save_model(make_tiny_model(tiny_tokenizer), tiny_tokenizer, root / "tiny")
    driver = root / "driver.py"
    driver.write_text(DRIVER)
    return {
        "root": root,
        "model": str(model),
        "driver": str(driver),
        "forget": write_jsonl(root / "forget.jsonl", FORGET),
        "retain": write_jsonl(root / "retain.jsonl", RETAIN),
    }


def unlearn_args(setup: dict, out: Path, *extra: str) -> list[str]:
    return [
        "unlearn",
        "--model",
        setup["model"],
        "--forget",
        setup["forget"],
        "--retain",
        setup["retain"],
        "--template",
        "raw",
        "--method",
        "npo",
        "--steps",
        "6",
        "--lr",
        "0.003",
        "--batch-size",
        "1",
        "--seed",
        "3",
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


@pytest.fixture(scope="module")
def straight(setup) -> Path:
    """An uninterrupted run, in this process (one thread, as in the driver)."""
    out = setup["root"] / "straight"
    assert main(unlearn_args(setup, out)) == 0
    return out


def start(setup: dict, argv: list[str], pause_at: int = 0, pause_s: float = 0.0):
    env = {
        **os.environ,
        "EXCISE_TEST_PAUSE_AT": str(pause_at),
        "EXCISE_TEST_PAUSE_S": str(pause_s),
        "EXCISE_TEST_MARKER": str(Path(setup["root"]) / f"marker-{pause_at}"),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(ROOT / "src"),
    }
    Path(env["EXCISE_TEST_MARKER"]).unlink(missing_ok=True)
    process = subprocess.Popen(
        [sys.executable, setup["driver"], *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return process, Path(env["EXCISE_TEST_MARKER"])


def wait_for(marker: Path, process, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run never reached the pause"
        time.sleep(0.02)


def same_weights(a: Path, b: Path) -> None:
    first, second = (
        load_file(a / "model" / "model.safetensors"),
        load_file(b / "model" / "model.safetensors"),
    )
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name  # bitwise


def test_sigkill_between_checkpoints_then_resume_is_bitwise_equal(setup, straight):
    out = setup["root"] / "killed"
    argv = unlearn_args(setup, out, "--checkpoint-every", "2")
    process, marker = start(setup, argv, pause_at=3, pause_s=120)
    wait_for(marker, process)
    ckpt = out.with_name("killed.ckpt")
    assert sorted(p.name for p in ckpt.iterdir()) == ["step-2"]  # step 3 done, not saved
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL
    # nothing that looks like an output: no folder, no temporary folder
    assert not out.exists() and not list(out.parent.glob(".killed.tmp-*"))
    assert main([*argv, "--resume"]) == 0  # resumed here, on one thread like the others
    same_weights(out, straight)
    log = json.loads((out / "report.json").read_text())["loss_log"]
    full = json.loads((straight / "report.json").read_text())["loss_log"]
    assert [r["step"] for r in log] == [3, 4, 5, 6]
    assert log == full[2:]  # the same losses, exactly
    assert not ckpt.exists()  # removed once the output is complete


def test_sigint_saves_a_checkpoint_and_exits_130(setup, straight):
    out = setup["root"] / "interrupted"
    argv = unlearn_args(setup, out)  # no --checkpoint-every: Ctrl-C still saves one
    process, marker = start(setup, argv, pause_at=2, pause_s=2)
    wait_for(marker, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    last = stderr.strip().splitlines()[-1]
    assert "interrupted after step 2" in last and "--resume" in last, last
    ckpt = out.with_name("interrupted.ckpt")
    assert sorted(p.name for p in ckpt.iterdir()) == ["step-2"]
    assert not out.exists() and not list(out.parent.glob(".interrupted.tmp-*"))
    # without --resume the checkpoint is not silently thrown away
    assert main(argv) == 2
    assert main([*argv, "--resume"]) == 0  # resumed here, on one thread like the others
    same_weights(out, straight)


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_in_process_stops_at_a_step_boundary(tmp_path, tiny_tokenizer, number):
    """The loop's own contract: the first SIGINT/SIGTERM finishes the step, saves, raises."""
    straight, straight_log = train_run(tiny_tokenizer, 5)
    ckpt = tmp_path / "ckpt"

    def interrupt(step, terms):
        if step == 2:
            os.kill(os.getpid(), number)

    handler = signal.getsignal(number)
    with pytest.raises(TrainingInterrupted) as stop:
        train_run(tiny_tokenizer, 5, checkpoint_dir=ckpt, on_step=interrupt)
    assert stop.value.step == 2 and stop.value.checkpoint == ckpt
    assert (ckpt / "step-2" / "trainable.safetensors").is_file()
    assert signal.getsignal(number) is handler  # the previous handler is back
    resumed, log = train_run(tiny_tokenizer, 5, checkpoint_dir=ckpt, resume=True)
    assert [r["step"] for r in log] == [3, 4, 5]
    assert weights_sha256(resumed) == weights_sha256(straight)
    # a checkpoint written with other settings is refused, not silently mixed in
    with pytest.raises(ExciseError, match="other settings"):
        train_run(tiny_tokenizer, 7, checkpoint_dir=ckpt, resume=True)


@pytest.mark.parametrize("stage", ["save_model", "write_report"])
def test_a_crash_while_writing_leaves_nothing(setup, monkeypatch, tmp_path, stage):
    def crash(payload, folder, *more):
        target = Path(more[0]) if more else Path(folder)  # save_model(model, tokenizer, out)
        target.mkdir(parents=True, exist_ok=True)
        (target / "half-written").write_text('{"half": ')
        raise RuntimeError("power cut")

    if stage == "save_model":
        monkeypatch.setattr(excise.models, "save_model", crash)
    else:
        monkeypatch.setattr(excise.jobs.unlearn, "write_report", crash)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="power cut"):
        run(
            UnlearnJob(
                model=setup["model"],
                method="ga",
                out=out,
                forget=setup["forget"],
                template="raw",
                train={"steps": 1, "progress": False},
            )
        )
    assert list(tmp_path.iterdir()) == []  # no output, no temporary folder, no checkpoint


def test_same_seed_same_metrics(setup, tmp_path):
    def once(name: str, seed: int) -> dict:
        job = UnlearnJob(
            model=setup["model"],
            method="npo",
            out=tmp_path / name,
            forget=setup["forget"],
            retain=setup["retain"],
            template="raw",
            train={"steps": 3, "lr": 3e-3, "batch_size": 1, "seed": seed, "progress": False},
        )
        report = run(job).report
        keys = ("before", "after", "loss_log", "model_sha256", "task")
        return json.loads(json.dumps({k: report[k] for k in keys}))

    first, second = once("a", 0), once("b", 0)
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    saved = json.loads((tmp_path / "a" / "report.json").read_text())
    assert saved["after"] == first["after"] and saved["loss_log"] == first["loss_log"]
    other = once("c", 1)  # the comparison can tell runs apart
    assert other["loss_log"] != first["loss_log"]
    # OUT/recipe.yaml spells the run out: running it again gives the same numbers
    assert main(["run", str(tmp_path / "a" / "recipe.yaml"), "--out", str(tmp_path / "d")]) == 0
    again = json.loads((tmp_path / "d" / "report.json").read_text())
    for key in ("before", "after", "loss_log", "model_sha256"):
        assert again[key] == saved[key], key


def test_verify_and_audit_hash(setup, straight, tmp_path, capsys):
    assert main(["verify", str(straight)]) == 0
    assert "files match" in capsys.readouterr().out
    report = json.loads((straight / "report.json").read_text())
    model, _ = load_model(str(straight / "model"))
    assert report["model_sha256"] == weights_sha256(model) != report["original_sha256"]
    audit = [
        "audit",
        "--model",
        str(straight / "model"),
        "--original",
        setup["model"],
        "--forget",
        setup["forget"],
        "--retain",
        setup["retain"],
        "--template",
        "raw",
        "--attacks",
        "paraphrase",
        "--out",
        str(tmp_path / "audit"),
    ]
    # the audit refuses the original model when asked about the unlearned one
    wrong = [*audit[:2], setup["model"], *audit[3:]]
    assert main([*wrong, "--expect-hash", report["model_sha256"]]) == 2
    assert "not the expected" in capsys.readouterr().err
    assert not (tmp_path / "audit").exists()
    assert main([*audit, "--expect-hash", report["model_sha256"]]) == 0
    audited = json.loads((tmp_path / "audit" / "report.json").read_text())
    assert audited["model_sha256"] == report["model_sha256"]
    assert audited["original_sha256"] == report["original_sha256"]
    assert main(["verify", str(tmp_path / "audit")]) == 0
    # tamper with a copy: one changed, one missing, one extra file
    copy = tmp_path / "copy"
    for path in straight.rglob("*"):
        if path.is_file():
            (copy / path.relative_to(straight)).parent.mkdir(parents=True, exist_ok=True)
            (copy / path.relative_to(straight)).write_bytes(path.read_bytes())
    assert main(["verify", str(copy)]) == 0
    weights = copy / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    (copy / "report.html").unlink()
    (copy / "model" / "notes.txt").write_text("added")
    capsys.readouterr()
    assert main(["verify", str(copy)]) == 2
    captured = capsys.readouterr()
    assert "changed  model/model.safetensors" in captured.out
    assert "missing  report.html" in captured.out and "extra    model/notes.txt" in captured.out
    line = captured.err.strip().splitlines()[-1]
    assert "1 changed (model/model.safetensors); 1 missing (report.html); 1 extra" in line


def test_pickle_only_with_allow_pickle_and_weights_only(
    tmp_path, tiny_model, tiny_tokenizer, capsys
):
    folder = save_model(tiny_model, tiny_tokenizer, tmp_path / "pickled")
    (folder / "model.safetensors").unlink()
    state = dict(tiny_model.state_dict())
    state.pop("lm_head.weight")  # tied to the embeddings, as many .bin checkpoints leave it out
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(ModelError, match="--allow-pickle"):
        load_model(str(folder))
    loaded, _ = load_model(str(folder), allow_pickle=True)
    assert weights_sha256(loaded) == weights_sha256(tiny_model)
    forget = write_jsonl(tmp_path / "f.jsonl", FORGET)
    argv = ["evaluate", "--model", str(folder), "--forget", forget, "--template", "raw", "--json"]
    assert main(argv) == 2 and "--allow-pickle" in capsys.readouterr().err
    assert main([*argv, "--allow-pickle"]) == 0
    assert "forget_accuracy" in json.loads(capsys.readouterr().out)
    # a pickle that would run code is refused even with --allow-pickle: weights_only
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"model.embed_tokens.weight": Payload()}, folder / "pytorch_model.bin")
    with pytest.raises(ModelError, match="weights_only=True"):
        load_model(str(folder), allow_pickle=True)
    assert not marker.exists()


def test_remote_code_runs_only_when_trusted(tmp_path, tiny_model, tiny_tokenizer):
    folder = save_model(tiny_model, tiny_tokenizer, tmp_path / "remote")
    marker = tmp_path / "remote-code-ran"
    (folder / "configuration_custom.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import LlamaConfig\n\n"
        "class CustomConfig(LlamaConfig):\n    model_type = 'custom-llama'\n"
    )
    (folder / "modeling_custom.py").write_text(
        "from transformers import LlamaForCausalLM\n"
        "from .configuration_custom import CustomConfig\n\n"
        "class CustomForCausalLM(LlamaForCausalLM):\n    config_class = CustomConfig\n"
    )
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "custom-llama"
    config["auto_map"] = {
        "AutoConfig": "configuration_custom.CustomConfig",
        "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM",
    }
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="--trust-remote-code"):
        load_model(str(folder))
    assert not marker.exists()
    model, _ = load_model(str(folder), trust_remote_code=True)
    assert type(model).__name__ == "CustomForCausalLM" and marker.exists()
    assert weights_sha256(model) == weights_sha256(tiny_model)


def test_every_shipped_recipe_validates(capsys):
    recipes = sorted((ROOT / "recipes").glob("*.yaml"))
    assert len(recipes) >= 2
    for recipe in recipes:
        assert main(["run", str(recipe), "--dry-run"]) == 0, capsys.readouterr().err
        plan = capsys.readouterr().out
        assert plan.startswith("plan:") and ("steps=" in plan or "closed form" in plan)


def test_run_recipe_calls_the_pipeline(setup, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model: {setup['model']}\n"
        f"data: {{forget: {setup['forget']}, retain: {setup['retain']}}}\n"
        "template: raw\n"
        "method: {name: npo, options: {beta: 0.2}}\n"
        "train: {steps: 2, lr: 1.0e-3, batch_size: 2, progress: false}\n"
        f"out: {tmp_path / 'out'}\n"
    )
    assert main(["run", str(recipe), "--dry-run"]) == 0
    assert not (tmp_path / "out").exists()
    assert main(["run", str(recipe)]) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["method"]["name"] == "npo" and report["method"]["options"] == {"beta": 0.2}
    assert report["method"]["train"]["lr"] == 1e-3 and len(report["loss_log"]) == 2
    assert main(["verify", str(tmp_path / "out")]) == 0
