"""A whole `excise unlearn --eval none` run against the plain form of the same work, end to end
(never part of `make test`).

    python bench/unlearn_e2e.py [--model smollm2-135m] [--steps 8] [--batch-size 8] [--lr 1e-5]
                                [--threads 2] [--excise-args "..."] [--json FILE] [--md FILE]

excise: ``excise unlearn --model M --task chem-symbols --method npo --eval none --steps 8
--batch-size 8 --lr 1e-5 --out DIR --quiet`` as a subprocess, timed from its start to its exit
(interpreter start, imports, loading the model and the task, training, saving the model and the
report); its stage times are read from the report it writes.

plain: what an open-unlearning-style script does for the same npo run, in a subprocess of this
file (``--plain``): plain transformers and torch, the model and a second, frozen copy of it as
the NPO reference loaded from the same local safetensors folder, the same 8 batches of 8 forget +
8 retain examples (token ids written beforehand from excise's own batching, so both train on the
same rows in the same order), for each step the reference's log-probabilities of the forget
answers, the policy's full forward (logits at every position), ``-(2/beta) logsigmoid(-beta (logp
- logp_ref))`` + the retain NLL, gradients clipped at 1.0, torch's ``AdamW`` (its default
implementation), then ``save_pretrained`` of the model and tokenizer. Its stage times are its own.

Both runs use ``--threads`` torch threads (``OMP_NUM_THREADS``). Preparing the plain form's batches
(loading the task through excise) is done before either run and not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step import machine_line  # noqa: E402

TASK = "chem-symbols"
IGNORE = -100


def export_batches(args, path: Path) -> dict:
    """Write the model folder and the token ids of the run's batches (excise's own draw) to
    ``path``; run in a subprocess so that this process stays light."""
    import torch

    from excise.data.encode import encode_records
    from excise.jobs.common import resolve_task
    from excise.models import load_model, resolve
    from excise.train.batches import batch_indices

    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    task = resolve_task(
        model, tokenizer, task=TASK, forget=None, retain=None, template="auto",
        filter_items=None, data_dir=None,
    )  # fmt: skip
    steps = []
    for step in range(args.steps):
        batch = {}
        for part, seed in (("forget", 0), ("retain", 1)):  # as excise.train.batches.micro_batch
            examples = encode_records(tokenizer, getattr(task, part), task.template)
            lengths = [len(e.input_ids) for e in examples]
            rows = batch_indices(len(examples), args.batch_size, step, seed, lengths)
            batch[part] = [
                {"input_ids": list(examples[i].input_ids), "labels": list(examples[i].labels)}
                for i in rows
            ]
        steps.append(batch)
    folder = str(resolve(args.model))
    path.write_text(json.dumps({"model_dir": folder, "pad_id": tokenizer.pad_token_id,
                                "steps": steps}))  # fmt: skip
    return {"model_dir": folder, "forget": len(task.forget), "retain": len(task.retain)}


def plain_run(args) -> dict:
    """The plain form (module docstring); returns its stage times."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    stages: dict[str, float] = {}
    start = time.perf_counter()
    data = json.loads(Path(args.batches).read_text())
    model = AutoModelForCausalLM.from_pretrained(data["model_dir"], dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(data["model_dir"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(data["model_dir"])
    reference.eval().requires_grad_(False)
    model.train()
    stages["load"] = time.perf_counter() - start

    def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), data["pad_id"], dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = (
                torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
            )  # fmt: skip
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def answer_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits, labels = logits[:, :-1], labels[:, 1:]
        wanted = (labels != IGNORE).float()
        picked = logits.log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (picked * wanted).sum(-1)

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    beta, losses = 0.1, []
    start = time.perf_counter()
    for batches in data["steps"]:
        forget, retain = collate(batches["forget"]), collate(batches["retain"])
        inputs = {k: forget[k] for k in ("input_ids", "attention_mask")}
        with torch.no_grad():
            reference_logprob = answer_logprob(reference(**inputs).logits, forget["labels"])
        logprob = answer_logprob(model(**inputs).logits, forget["labels"])
        npo = -(2.0 / beta) * F.logsigmoid(-beta * (logprob - reference_logprob)).mean()
        loss = npo + model(**retain).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    stages["train"] = time.perf_counter() - start
    start = time.perf_counter()
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    stages["save"] = time.perf_counter() - start
    return {"stages": stages, "losses": losses}


def timed(command: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{command[:4]} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--excise-args", default="", help="more `excise unlearn` flags")
    parser.add_argument("--json", default=None, help="also write the result here")
    parser.add_argument("--md", default=None, help="also write a short table here")
    parser.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--export", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--batches", default=None, help="the plain form's batches: reused when the file exists"
    )
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.export:
        print("RESULT " + json.dumps(export_batches(args, Path(args.batches))), flush=True)
        return
    if args.plain:
        print("RESULT " + json.dumps(plain_run(args)), flush=True)
        return

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    here = os.path.abspath(__file__)
    common = ["--model", args.model, "--steps", str(args.steps)]
    common += ["--batch-size", str(args.batch_size), "--lr", str(args.lr)]
    common += ["--threads", str(args.threads)]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with tempfile.TemporaryDirectory() as tmp:
        batches = Path(args.batches or Path(tmp) / "batches.json")
        if not batches.exists():
            export = [sys.executable, here, "--export", "--batches", str(batches), *common]
            _, done = timed(export, env)
            (batches.parent / (batches.name + ".sizes")).write_text(done.stdout)
        exported = result_line((batches.parent / (batches.name + ".sizes")).read_text())
        excise = [str(Path(sys.executable).parent / "excise"), "unlearn", "--model", args.model]
        excise += ["--task", TASK, "--method", "npo", "--eval", "none", "--steps", str(args.steps)]
        excise += ["--batch-size", str(args.batch_size), "--lr", str(args.lr), "--quiet"]
        excise += ["--out", str(Path(tmp) / "excise-out"), *args.excise_args.split()]
        excise_s, _ = timed(excise, env)
        report = json.loads((Path(tmp) / "excise-out" / "report.json").read_text())
        plain = [sys.executable, here, "--plain", "--batches", str(batches), *common]
        plain_s, done = timed([*plain, "--out", str(Path(tmp) / "plain-out")], env)
        plain_row = result_line(done.stdout)
    result = {
        "machine": machine_line(args.threads),
        "started": started,
        "args": vars(args),
        "command": " ".join(excise).replace(tmp, "TMP"),
        "task_sizes": {k: v for k, v in exported.items() if k != "model_dir"},
        "excise_s": excise_s,
        "excise_stages": report.get("timings_s", {}),
        "excise_losses": [row.get("loss") for row in report.get("loss_log", [])],
        "plain_s": plain_s,
        "plain_stages": plain_row["stages"],
        "plain_losses": plain_row["losses"],
        "ratio": excise_s / plain_s,
    }
    print(f"machine: {result['machine']}; started {started}")
    print(f"excise {excise_s:.1f} s: " + stages_line(result["excise_stages"]))
    print(f"plain  {plain_s:.1f} s: " + stages_line(result["plain_stages"]))
    print(f"excise / plain wall time: {result['ratio']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.md:
        Path(args.md).write_text(markdown(result))


def result_line(stdout: str) -> dict:
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise SystemExit(f"no RESULT line in:\n{stdout[-2000:]}")


def stages_line(stages: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in stages.items())


def markdown(result: dict) -> str:
    return (
        f"# `excise unlearn --eval none` vs the plain form, end to end\n\n"
        f"Measured {result['started']} on {result['machine']} with `python bench/unlearn_e2e.py "
        f"{' '.join(sys.argv[1:])}` (one run each, under the shared heavy-run lock).\n\n"
        f"excise: `{result['command']}`\n\n"
        f"| run | wall s | stages (s) |\n|---|---:|---|\n"
        f"| excise | {result['excise_s']:.1f} | {stages_line(result['excise_stages'])} |\n"
        f"| plain transformers + torch AdamW | {result['plain_s']:.1f} | "
        f"{stages_line(result['plain_stages'])} |\n\n"
        f"excise / plain: **{result['ratio']:.2f}**. Wall times include interpreter start and "
        f"imports; the plain form's batches were prepared beforehand (not timed).\n"
    )


if __name__ == "__main__":
    main()
