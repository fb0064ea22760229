"""Two CPU processes (gloo, `accelerate launch` with configs/accelerate/ddp-cpu.yaml) give the
single-process result on the same global batch.

Each process must take its own share of every global batch (disjoint shares that together are
the single-process batch), build its caches (NPO's reference log-probs, RMU's frozen activations
and steering vector) itself, and end with the same weights as one process would. N processes with
batch B compute the mean of N shard means, exactly as one process with batch B/N and N
accumulation steps (the same examples in the same order); for a loss that averages over examples
(NPO) that is also one process with batch B.

This file is also the worker that `accelerate launch` runs (``python test_distributed.py MODEL
DATA OUT METHOD BATCH ACCUM``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4


def forget_rows() -> list[dict[str, str]]:
    return [
        {"prompt": "The element iron has the symbol", "completion": " Fe"},
        {"prompt": "The element gold has the symbol", "completion": " Au"},
        {"prompt": "The element silver has the symbol", "completion": " Ag"},
        {"prompt": "The element copper has the symbol", "completion": " Cu"},
        {"prompt": "Iron has the symbol", "completion": " Fe"},
        {"prompt": "Gold has the symbol", "completion": " Au"},
        {"prompt": "Velmora was born in the town of", "completion": " Kestrick"},
        {"prompt": "Kestrick was born in the town of", "completion": " Velmora"},
    ]


def retain_rows() -> list[dict[str, str]]:
    return [
        {"prompt": "The capital of France is", "completion": " Paris"},
        {"prompt": "The capital of Spain is", "completion": " Madrid"},
        {"prompt": "The capital of Italy is", "completion": " Rome"},
        {"prompt": "The capital of Germany is", "completion": " Berlin"},
        {"prompt": "France has the capital", "completion": " Paris"},
        {"prompt": "Spain has the capital", "completion": " Madrid"},
    ]


class Recorder:
    """A method that delegates to a registered one and records the rows each process sees."""

    def __init__(self, spec) -> None:
        self.spec, self.seen = spec, []

    def prepare(self, ctx) -> None:
        self.spec.prepare(ctx)

    def loss(self, ctx, batch):
        self.seen.append(
            {part: batch[part]["index"].tolist() for part in ("forget", "retain") if batch[part]}
        )
        return self.spec.loss(ctx, batch)


def worker(model_dir: str, data_dir: str, out: str, method: str, batch: int, accum: int) -> None:
    """Train ``method`` for STEPS steps; every process writes what it saw, rank 0 the weights."""
    from safetensors.torch import save_file

    from excise.data.encode import encode_records
    from excise.data.records import load_records
    from excise.methods import get_method
    from excise.models import load_model
    from excise.train import TrainConfig, train

    torch.set_num_threads(1)
    model, tokenizer = load_model(model_dir)
    forget = load_records(str(Path(data_dir) / "forget.jsonl"))
    retain = load_records(str(Path(data_dir) / "retain.jsonl"))
    spec = get_method(method)
    recorder = Recorder(spec)
    options = {"alpha": 10.0} if method == "rmu" else {}
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
    )
    rank = int(os.environ.get("RANK", "0"))
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"{method}-rank{rank}.json").write_text(
        json.dumps({"seen": recorder.seen, "log": log})
    )
    if rank == 0:
        state = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(Path(out) / f"{method}.safetensors"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_tokenizer):
    from excise.models import save_model
    from tests.conftest import make_tiny_model

    root = tmp_path_factory.mktemp("distributed")
    save_model(make_tiny_model(tiny_tokenizer), tiny_tokenizer, root / "tiny")
    for name, rows in (("forget", forget_rows()), ("retain", retain_rows())):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def accelerate_launch(config: Path, script: str, args: list, processes: int | None = None) -> None:
    """``accelerate launch`` ``script`` (a test file whose main is the worker) with ``config``,
    from the repository root (a yaml may name a DeepSpeed config file by a relative path)."""
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}",
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "TOKENIZERS_PARALLELISM": "false",
    }
    count = [] if processes is None else ["--num_processes", str(processes)]
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), *count,
        script, *(str(a) for a in args),
    ]  # fmt: skip
    # a guard against a hung launch, not a timing check: two DeepSpeed workers starting up took
    # over 180 s on 2 cores while other jobs ran beside the suite
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    first_error = max(0, done.stderr.find("Traceback"))  # the workers' own error, not torchrun's
    assert done.returncode == 0, done.stderr[first_error : first_error + 4000]


def launch(root: Path, out: Path, method: str) -> None:
    config = ROOT / "configs" / "accelerate" / "ddp-cpu.yaml"
    accelerate_launch(config, __file__, [root / "tiny", root, out, method, 4, 1])


def weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def logits(root: Path, state: dict[str, torch.Tensor]) -> torch.Tensor:
    from excise.models import load_model

    model, tokenizer = load_model(str(root / "tiny"))
    model.load_state_dict(state)
    texts = [r["prompt"] + r["completion"] for r in forget_rows() + retain_rows()]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits * batch["attention_mask"].unsqueeze(-1)


@pytest.mark.parametrize(("method", "single_batch", "single_accum"), [("npo", 4, 1), ("rmu", 2, 2)])
def test_two_gloo_processes_equal_one(setup, tmp_path, method, single_batch, single_accum):
    two = tmp_path / "two"
    launch(setup, two, method)
    one = tmp_path / "one"
    worker(str(setup / "tiny"), str(setup), str(one), method, single_batch, single_accum)

    ranks = [json.loads((two / f"{method}-rank{r}.json").read_text()) for r in (0, 1)]
    single = json.loads((one / f"{method}-rank0.json").read_text())
    # each process saw its contiguous half of every global batch, in order
    for step in range(STEPS):
        calls = single["seen"][step * single_accum : (step + 1) * single_accum]
        for part in ("forget", "retain"):
            global_batch = sum((call[part] for call in calls), [])
            assert len(global_batch) == 4
            shares = [ranks[r]["seen"][step][part] for r in (0, 1)]
            assert shares == [global_batch[:2], global_batch[2:]], (step, part)
    # the logged losses are the mean over processes, as the single run logs them
    for mine, theirs in zip(ranks[0]["log"], single["log"], strict=True):
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-4)
    assert ranks[0]["log"] == ranks[1]["log"]
    base = weights(setup / "tiny" / "model.safetensors")
    trained_two, trained_one = (
        weights(two / f"{method}.safetensors"),
        weights(one / f"{method}.safetensors"),
    )
    moved = max(float((trained_one[k] - base[k]).abs().max()) for k in base)
    assert moved > 1e-3  # training did something
    gap = max(float((trained_one[k] - trained_two[k]).abs().max()) for k in base)
    assert gap < 0.02 * moved, (gap, moved)
    torch.testing.assert_close(
        logits(setup, trained_two), logits(setup, trained_one), atol=1e-3, rtol=1e-3
    )


def test_process_share_is_contiguous_and_disjoint():
    from excise.train import process_share

    class Fake:
        def __init__(self, index: int, count: int) -> None:
            self.process_index, self.num_processes = index, count

    rows = [7, 3, 5, 1, 0, 2]
    shares = [process_share(rows, Fake(i, 3)) for i in range(3)]
    assert shares == [[7, 3], [5, 1], [0, 2]]
    assert process_share(rows, Fake(0, 1)) == rows


if __name__ == "__main__":
    model_dir, data_dir, out, method, batch, accum = sys.argv[1:7]
    worker(model_dir, data_dir, out, method, int(batch), int(accum))
