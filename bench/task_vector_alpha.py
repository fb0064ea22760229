"""Task-vector negation at several alphas from one fine-tuning (chem-symbols, bundled model).

    python bench/task_vector_alpha.py [--ft-lr 1e-4] [--ft-steps 20] [--alphas 0.5,1,2,4]

Fine-tunes the original on the forget set (plain NLL, batch 8, through the one training loop),
then for each alpha sets theta = theta_0 - alpha * (theta_ft - theta_0) (no repair steps) and
prints forget, retain (and near-domain retain, where the task has it) accuracy and perplexity,
one JSON line each. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    from excise.attacks.base import accuracy
    from excise.data.encode import encode_records
    from excise.jobs.common import resolve_task
    from excise.methods.task_vector import negate
    from excise.metrics import perplexity
    from excise.models import load_model
    from excise.train import TrainConfig
    from excise.train.objectives import fine_tune

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default="chem-symbols")
    parser.add_argument("--ft-lr", type=float, default=1e-4)
    parser.add_argument("--ft-steps", type=int, default=20)
    parser.add_argument("--alphas", default="0.5,1,2,4")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start_time = time.perf_counter()
    model, tokenizer = load_model(args.model)
    task = resolve_task(model, tokenizer, task=args.task)

    def measure() -> dict:
        out = {
            "forget": accuracy(model, tokenizer, task.forget_eval, task.template),
            "retain": accuracy(model, tokenizer, task.retain_eval, task.template),
            "perplexity": perplexity(model, tokenizer, [t.text for t in task.fluency]),
        }
        if getattr(task, "near_retain_eval", None):
            out["near_retain"] = accuracy(model, tokenizer, task.near_retain_eval, task.template)
        return out

    print(json.dumps({"model": "original", **measure()}), flush=True)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    examples = encode_records(tokenizer, task.forget, task.template)
    settings = TrainConfig(steps=args.ft_steps, lr=args.ft_lr, batch_size=8, progress=False)
    fine_tune(model, tokenizer, examples, task.forget, task.template, settings)
    tuned = {n: p.detach().clone() for n, p in model.named_parameters()}
    for alpha in (float(a) for a in args.alphas.split(",")):
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.copy_(tuned[name])
        tau = negate(model, start, alpha)
        row = {"ft_lr": args.ft_lr, "alpha": alpha, "tau_norm": round(tau, 3), **measure()}
        row["seconds"] = round(time.perf_counter() - start_time)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
