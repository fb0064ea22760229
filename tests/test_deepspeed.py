"""Two CPU processes under DeepSpeed ZeRO-3 (gloo, `accelerate launch` with
configs/accelerate/deepspeed-zero3-cpu.yaml) give the single-process result on the same global
batch, through an interruption and a resume.

Each process must train a copy whose every parameter DeepSpeed partitions (1/N of each trainable
weight per process), take its share of each global batch, let the engine average, accumulate and
clip the gradients and step, write a checkpoint of whole tensors when stopped, resume from it (on
the same or another process count), and hand the whole trained weights back to the caller's
model. RMU stops the forward at one layer and hooks it. Data and comparisons are those of
tests/test_distributed.py.

DeepSpeed is the optional extra ``excise[deepspeed]``, which ``make test`` installs: without it
these tests fail (they do not skip).

This file is also the worker that `accelerate launch` runs (``python test_deepspeed.py MODEL DATA
OUT METHOD BATCH ACCUM INTERRUPT_AT MODE``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from test_distributed import STEPS, Recorder, logits, weights
from test_distributed import setup as setup  # the module fixture: tiny model and data
from test_fsdp import launch as launch_with
from test_fsdp import worker as worker_with

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "accelerate" / "deepspeed-zero3-cpu.yaml"


def require_deepspeed() -> None:
    if importlib.util.find_spec("deepspeed") is None:
        pytest.fail("deepspeed is not installed: pip install -e '.[deepspeed]' (make test does)")


class PartitionRecorder(Recorder):
    """Also records, per loss call, this process's and the whole sizes of the trainable weights."""

    def loss(self, ctx, batch):
        trainable = [p for p in ctx.model.parameters() if p.requires_grad]
        partitioned = all(hasattr(p, "ds_id") for p in trainable)
        local = sum(p.ds_tensor.numel() if partitioned else p.numel() for p in trainable)
        whole = sum(p.ds_numel if partitioned else p.numel() for p in trainable)
        self.seen.append({"local": local, "whole": whole})
        return super().loss(ctx, batch)


def worker(*args, **kwargs) -> None:
    worker_with(*args, **kwargs, recorder_class=PartitionRecorder)


def launch(*args, **kwargs) -> None:
    launch_with(*args, **kwargs, config=CONFIG, script=__file__)


def check_equal(base, trained_one, trained_many, single_log, many_log) -> None:
    for mine, theirs in zip(many_log, single_log[2:], strict=True):
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-4)
        assert mine["grad_norm"] == pytest.approx(theirs["grad_norm"], rel=1e-3)
        assert mine["lr"] == pytest.approx(theirs["lr"])
    moved = max(float((trained_one[k] - base[k]).abs().max()) for k in base)
    assert moved > 1e-3  # training did something
    gap = max(float((trained_one[k] - trained_many[k]).abs().max()) for k in base)
    assert gap < 0.02 * moved, (gap, moved)


def test_zero3_two_processes_equal_one_rmu(setup, tmp_path):
    """RMU (a truncated, hooked forward) with 2 accumulated micro-batches, through a resume."""
    require_deepspeed()
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir()
    one.mkdir()
    # 2 processes x 2 examples x 2 micro-batches = one process x 2 examples x 4 micro-batches
    launch(setup, two, "rmu", batch=4, accum=2, interrupt_at=2)
    worker(str(setup / "tiny"), str(setup), str(one), "rmu", 2, 4, 0)

    ranks = [json.loads((two / f"rmu-rank{r}.json").read_text()) for r in (0, 1)]
    single = json.loads((one / "rmu-rank0.json").read_text())
    assert [r["stopped"] for r in ranks] == [2, 2]  # interrupted, then resumed
    assert [r["zero3"] for r in ranks] == [False, False]
    assert len(ranks[0]["log"]) == STEPS - 2
    sizes = ranks[0]["seen"][0::2]  # PartitionRecorder's entries, before each Recorder entry
    assert all(0 < s["local"] * 2 <= s["whole"] + 64 for s in sizes)  # each process held ~half
    assert single["seen"][0]["local"] == single["seen"][0]["whole"]
    assert ranks[0]["log"] == ranks[1]["log"]
    base = weights(setup / "tiny" / "model.safetensors")
    trained_two = weights(two / "rmu.safetensors")
    trained_one = weights(one / "rmu.safetensors")
    check_equal(base, trained_one, trained_two, single["log"], ranks[0]["log"])
    torch.testing.assert_close(
        logits(setup, trained_two), logits(setup, trained_one), atol=1e-3, rtol=1e-3
    )


def test_zero3_resumes_on_another_process_count_npo(setup, tmp_path):
    """NPO stopped on 2 processes resumes on 3 (whole-tensor checkpoints; the tiny model's
    sizes do not divide by 3, so partitions are padded). NPO averages over examples, so every
    process count gives the single-process step on the same global batch."""
    require_deepspeed()
    many, one = tmp_path / "many", tmp_path / "one"
    many.mkdir()
    one.mkdir()
    launch(setup, many, "npo", batch=6, accum=1, interrupt_at=2, mode="stop")
    assert not (many / "npo.safetensors").exists()  # stopped without resuming
    launch(setup, many, "npo", batch=6, accum=1, interrupt_at=0, mode="resume", processes=3)
    worker(str(setup / "tiny"), str(setup), str(one), "npo", 6, 1, 0)

    ranks = [json.loads((many / f"npo-rank{r}.json").read_text()) for r in (0, 1, 2)]
    single = json.loads((one / "npo-rank0.json").read_text())
    assert [r["log"][0]["step"] for r in ranks] == [3, 3, 3]  # resumed after step 2
    assert [r["zero3"] for r in ranks] == [False, False, False]
    sizes = ranks[0]["seen"][0::2]
    assert all(0 < s["local"] * 3 <= s["whole"] + 64 for s in sizes)  # each held ~a third
    assert ranks[0]["log"] == ranks[2]["log"]
    base = weights(setup / "tiny" / "model.safetensors")
    trained_one = weights(one / "npo.safetensors")
    trained_many = weights(many / "npo.safetensors")
    check_equal(base, trained_one, trained_many, single["log"], ranks[0]["log"])


def ds_config(monkeypatch, tmp_path, config: dict, batch: int = 4) -> dict:
    """:func:`excise.train.zero3.deepspeed_config` for a launch with this DeepSpeed config file."""
    from excise.train import zero3

    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(path))
    return zero3.deepspeed_config(2, batch, 3, 0.5, torch.float32)


ZERO3 = {"zero_optimization": {"stage": 3}}


def test_excise_options_fill_the_deepspeed_config(monkeypatch, tmp_path):
    require_deepspeed()
    ds = ds_config(monkeypatch, tmp_path, {**ZERO3, "train_micro_batch_size_per_gpu": "auto"})
    assert ds["train_micro_batch_size_per_gpu"] == 2  # batch 4 over 2 processes
    assert ds["gradient_accumulation_steps"] == 3
    assert ds["train_batch_size"] == 12
    assert ds["gradient_clipping"] == 0.5
    assert ds["bf16"] == {"enabled": False}
    assert ds["zero_optimization"]["memory_efficient_linear"] is False


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"zero_optimization": {"stage": 2}}, "ZeRO stage 2 is not supported"),
        (
            {"zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}}},
            "offload_param is not supported",
        ),
        ({**ZERO3, "optimizer": {"type": "Adam"}}, "'optimizer' section"),
        ({**ZERO3, "train_micro_batch_size_per_gpu": 8}, "train_micro_batch_size_per_gpu=8"),
        ({**ZERO3, "bf16": {"enabled": True}}, "bf16.enabled but the model is torch.float32"),
    ],
)
def test_unsupported_deepspeed_configs_are_refused(monkeypatch, tmp_path, config, message):
    require_deepspeed()
    from excise.errors import ConfigError

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        ds_config(monkeypatch, tmp_path, config)


def test_missing_deepspeed_is_a_config_error(monkeypatch):
    from excise.errors import ConfigError
    from excise.train import zero3

    monkeypatch.setitem(sys.modules, "deepspeed", None)  # import deepspeed raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'excise\[deepspeed\]'"):
        zero3.deepspeed_config(2, 4, 1, 1.0, torch.float32)


def test_one_process_deepspeed_launch_trains_the_model_itself(
    monkeypatch, tiny_tokenizer, tiny_model
):
    """One process has nothing to partition: the model trains in place (no engine), the launch
    flag is left as it was, and transformers is not left in ZeRO-3 mode."""
    require_deepspeed()
    from transformers.integrations import is_deepspeed_zero3_enabled

    from test_fsdp import train_one_step

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    # ga: train_one_step's forget and retain example are one and the same, so npo's first-step
    # gradient and its retain NLL's cancel (the step moved the weights only by rounding noise)
    train_one_step(tiny_model, tiny_tokenizer, "ga")
    assert any(not torch.equal(v, before[k]) for k, v in tiny_model.state_dict().items())
    assert not is_deepspeed_zero3_enabled()
    assert os.environ["ACCELERATE_USE_DEEPSPEED"] == "true"


def test_deepspeed_checkpoint_is_not_resumed_without_it(tmp_path, tiny_tokenizer, tiny_model):
    """A plain run must refuse a ZeRO-3 checkpoint (optimizer state by name), not load it."""
    from excise.errors import ConfigError
    from excise.train import save_checkpoint
    from test_fsdp import train_one_step

    save_checkpoint(tmp_path, 1, {}, {}, None, launch="deepspeed")
    with pytest.raises(ConfigError, match="written by a DeepSpeed ZeRO-3 run"):
        train_one_step(tiny_model, tiny_tokenizer, "npo", checkpoint_dir=tmp_path)


if __name__ == "__main__":
    model_dir, data_dir, out, method, batch, accum, interrupt_at, mode = sys.argv[1:9]
    worker(model_dir, data_dir, out, method, int(batch), int(accum), int(interrupt_at), mode)
