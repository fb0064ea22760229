"""Two CPU processes under FSDP2 (gloo, `accelerate launch` with configs/accelerate/fsdp-cpu.yaml)
give the single-process result on the same global batch, through an interruption and a resume.

Each process must train a sharded copy (half of every trainable weight), take its share of each
global batch, let FSDP average the gradients (also across accumulated micro-batches), write a
checkpoint of whole tensors when stopped, resume from it, and hand the whole trained weights back
to the caller's model. RMU stops the forward at one layer and hooks it, so layers above never
gather. Data and comparisons are those of tests/test_distributed.py.

This file is also the worker that `accelerate launch` runs (``python test_fsdp.py MODEL DATA OUT
METHOD BATCH ACCUM INTERRUPT_AT MODE``); tests/test_deepspeed.py launches the same worker and
launcher with its own config and recorder.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch

from test_distributed import STEPS, Recorder, accelerate_launch, logits, weights
from test_distributed import setup as setup  # the module fixture: tiny model and data

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "accelerate" / "fsdp-cpu.yaml"


class ShardRecorder(Recorder):
    """Also records, per loss call, the local and whole sizes of the trainable weights."""

    def loss(self, ctx, batch):
        from torch.distributed.tensor import DTensor

        trainable = [p for p in ctx.model.parameters() if p.requires_grad]
        local = sum(
            p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in trainable
        )
        self.seen.append({"local": local, "whole": sum(p.numel() for p in trainable)})
        return super().loss(ctx, batch)


def worker(
    model_dir: str,
    data_dir: str,
    out: str,
    method: str,
    batch: int,
    accum: int,
    interrupt_at: int,
    mode: str = "both",
    recorder_class: type = None,
) -> None:
    """Train ``method`` for STEPS steps (recording with ``recorder_class``, default
    :class:`ShardRecorder`); with ``interrupt_at`` a SIGTERM after that step stops
    the run (checkpoint) and a second call resumes it (``mode`` both), or the launch ends there
    (stop) and the next one only resumes (resume). Rank 0 writes the weights."""
    from safetensors.torch import save_file

    from excise.data.encode import encode_records
    from excise.data.records import load_records
    from excise.methods import get_method
    from excise.models import load_model
    from excise.train import TrainConfig, TrainingInterrupted, train

    torch.set_num_threads(1)
    forget = load_records(str(Path(data_dir) / "forget.jsonl"))
    retain = load_records(str(Path(data_dir) / "retain.jsonl"))
    spec = get_method(method)
    recorder = (recorder_class or ShardRecorder)(spec)
    options = {"alpha": 10.0} if method == "rmu" else {}

    def on_step(step: int, _terms) -> None:
        if step == interrupt_at:
            os.kill(os.getpid(), signal.SIGTERM)  # stops at this step's end, as Ctrl-C would

    def run(resume: bool):
        # a fresh model each time, as a resumed command loads it again (caches come from it)
        model, tokenizer = load_model(model_dir)
        log = train(
            model,
            tokenizer,
            recorder,
            spec.config_cls(**options),
            forget=encode_records(tokenizer, forget, "raw"),
            retain=encode_records(tokenizer, retain, "raw"),
            forget_records=forget,
            template="raw",
            config=TrainConfig(
                steps=STEPS, batch_size=batch, grad_accum=accum, lr=1e-2, progress=False
            ),
            checkpoint_dir=Path(out) / "checkpoints",
            resume=resume,
            on_step=on_step,
        )
        return model, log

    stopped = 0
    try:
        model, log = run(resume=mode == "resume")
    except TrainingInterrupted as stop:
        stopped = stop.step
        if mode == "stop":
            return
        model, log = run(resume=True)
    from transformers.integrations import is_deepspeed_zero3_enabled

    rank = int(os.environ.get("RANK", "0"))
    # later from_pretrained calls in the process must build ordinary models
    zero3_left_on = is_deepspeed_zero3_enabled()
    (Path(out) / f"{method}-rank{rank}.json").write_text(
        json.dumps({"seen": recorder.seen, "log": log, "stopped": stopped, "zero3": zero3_left_on})
    )
    if rank == 0:
        state = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(Path(out) / f"{method}.safetensors"))


def launch(
    root: Path,
    out: Path,
    method: str,
    batch: int,
    accum: int,
    interrupt_at: int,
    mode: str = "both",
    processes: int = 2,
    *,
    config: Path = CONFIG,
    script: str = __file__,
) -> None:
    """``accelerate launch`` ``processes`` workers (``script``, a test file whose main calls
    :func:`worker`) with ``config``."""
    args = [root / "tiny", root, out, method, batch, accum, interrupt_at, mode]
    accelerate_launch(config, script, args, processes)


@pytest.mark.parametrize("method", ["npo", "rmu"])
def test_fsdp_two_processes_equal_one(setup, tmp_path, method):
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir()
    one.mkdir()
    # 2 processes x batch 2 x 2 micro-batches = one process x batch 1 x 4 micro-batches
    launch(setup, two, method, batch=4, accum=2, interrupt_at=2)
    worker(str(setup / "tiny"), str(setup), str(one), method, 2, 4, 0)

    ranks = [json.loads((two / f"{method}-rank{r}.json").read_text()) for r in (0, 1)]
    single = json.loads((one / f"{method}-rank0.json").read_text())
    assert [r["stopped"] for r in ranks] == [2, 2]  # interrupted, then resumed
    assert len(ranks[0]["log"]) == STEPS - 2
    sizes = ranks[0]["seen"][0::2]  # ShardRecorder's entries, before each Recorder entry
    assert all(s["local"] * 2 <= s["whole"] + 64 for s in sizes)  # each process held ~half
    assert single["seen"][0]["local"] == single["seen"][0]["whole"]
    for mine, theirs in zip(ranks[0]["log"], single["log"][2:], strict=True):
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-4)
        assert mine["grad_norm"] == pytest.approx(theirs["grad_norm"], rel=1e-3)
    assert ranks[0]["log"] == ranks[1]["log"]
    base = weights(setup / "tiny" / "model.safetensors")
    trained_two = weights(two / f"{method}.safetensors")
    trained_one = weights(one / f"{method}.safetensors")
    moved = max(float((trained_one[k] - base[k]).abs().max()) for k in base)
    assert moved > 1e-3  # training did something
    gap = max(float((trained_one[k] - trained_two[k]).abs().max()) for k in base)
    assert gap < 0.02 * moved, (gap, moved)
    torch.testing.assert_close(
        logits(setup, trained_two), logits(setup, trained_one), atol=1e-3, rtol=1e-3
    )


def train_one_step(model, tokenizer, method: str, checkpoint_dir: Path | None = None) -> None:
    from excise.data.encode import encode_records
    from excise.data.records import QA
    from excise.methods import get_method
    from excise.train import TrainConfig, train

    spec = get_method(method)
    records = [QA("The element iron has the symbol", " Fe")]
    examples = encode_records(tokenizer, records, "raw")
    train(
        model,
        tokenizer,
        spec,
        spec.config_cls(),
        forget=examples,
        retain=examples,
        forget_records=records,
        template="raw",
        config=TrainConfig(steps=1, progress=False),
        checkpoint_dir=checkpoint_dir,
        resume=checkpoint_dir is not None,
    )


def test_unshardable_method_is_refused(monkeypatch, tiny_tokenizer, tiny_model):
    from excise.errors import ConfigError
    from excise.train import fsdp

    monkeypatch.setattr(fsdp, "fsdp_requested", lambda accelerator: True)
    with pytest.raises(ConfigError, match="tar cannot train a sharded model.*ddp.yaml"):
        train_one_step(tiny_model, tiny_tokenizer, "tar")


def test_fsdp_checkpoint_is_not_resumed_without_fsdp(tmp_path, tiny_tokenizer, tiny_model):
    """Its optimizer state is keyed by name: a plain run must refuse it, not load it wrongly."""
    from excise.errors import ConfigError
    from excise.train import save_checkpoint

    save_checkpoint(tmp_path, 1, {}, {}, None, launch="fsdp")
    with pytest.raises(ConfigError, match="written by an FSDP run"):
        train_one_step(tiny_model, tiny_tokenizer, "npo", checkpoint_dir=tmp_path)


if __name__ == "__main__":
    model_dir, data_dir, out, method, batch, accum, interrupt_at, mode = sys.argv[1:9]
    worker(model_dir, data_dir, out, method, int(batch), int(accum), int(interrupt_at), mode)
