"""LEACE on the bundled model: can a fresh linear probe still read the concept? (never in `make test`)

    python bench/erasure.py [--tasks chem-symbols,harmful] [--rounds 0,8,32] [--layer L]
                            [--positions all|last] [--form folded|runtime] [--json OUT]

For each concept task and each erasure size it runs ``erase(..., "leace")`` on a fresh copy of
SmolLM2-135M and prints what the report holds: the held-out probe before and after (a fresh
logistic regression cross-fitted on the held-out items, 95% interval clustered by item), chance
(the majority class share), the probe trained on the eraser's own fit side, the eraser's rank and
perplexity on the fluency passages before and after. ``rounds`` 0 is LEACE's single direction
(the class-mean difference); ``rounds`` k adds k INLP probe directions (excise.erasure.inlp).
Tasks: ``chem-symbols`` (forget prompts vs retain prompts, filtered to what the model knows, raw
template, as ``excise erase --task chem-symbols``), ``harmful`` (builtin:harmful vs
builtin:harmless, chat template, as the README's refusal example) and ``bias`` (the bias use
case's 2880 female / male minimal pairs, as ``excise erase --task bias``).
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def concept(name: str, model, tokenizer) -> tuple[list, list, str, list[str]]:
    from excise.data.records import QA
    from excise.data.tasks import load_task
    from excise.jobs.common import resolve_task
    from excise.jobs.erase import read_prompts

    texts = [t.text for t in load_task("chem-symbols").fluency]
    if name == "harmful":
        negative = read_prompts("builtin:harmless", "negative")
        return read_prompts("builtin:harmful", "positive"), negative, "chat", texts
    if name == "bias":
        from excise.data.usecases import bias_contrast

        female, male = bias_contrast()
        return female, male, "raw", texts
    task = resolve_task(model, tokenizer, task=name, template="auto")
    positive = [[q.prompt, *q.paraphrases] for q in task.forget_eval]
    negative = [[r.prompt, *r.paraphrases] for r in task.retain if isinstance(r, QA)]
    return positive, negative, task.template, [t.text for t in task.fluency]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="chem-symbols,harmful")
    parser.add_argument("--rounds", default="0,8,32")
    parser.add_argument("--layer", type=int)
    parser.add_argument("--positions", default="all", choices=("all", "last"))
    parser.add_argument("--form", default="folded", choices=("folded", "runtime"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="fit / held-out split")
    parser.add_argument("--json", help="also write every row here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from excise.erasure.core import erase
    from excise.models import load_model

    rows = []
    for name in args.tasks.split(","):
        for rounds in (int(r) for r in args.rounds.split(",")):
            started = time.perf_counter()
            model, tokenizer = load_model("smollm2-135m")
            positive, negative, template, texts = concept(name, model, tokenizer)
            options = {"rounds": rounds, "positions": args.positions, "form": args.form}
            options["split_seed"] = args.seed
            if args.layer is not None:
                options["layer"] = args.layer
            _, result = erase(
                model, tokenizer, "leace", positive, negative,
                template=template, texts=texts, **options,
            )  # fmt: skip
            m, after = result.metrics, "after" if result.folded else "runtime"
            row = {
                "task": name,
                "rounds": rounds,
                "seed": args.seed,
                "rank": result.details["rank"],
                "layer": result.layer,
                "form": args.form,
                "positions": args.positions,
                **result.details["probe"],
                "chance": m["chance"],
                "probe_before": m["probe_before"],
                "probe_before_ci95": m["probe_before_ci95"],
                "probe_after": m[f"probe_{after}"],
                "probe_after_ci95": m[f"probe_{after}_ci95"],
                "probe_after_fit_trained": m[f"probe_{after}_fit_trained"],
                "perplexity_before": m["perplexity_before"],
                "perplexity_after": m[f"perplexity_{after}"],
                "seconds": round(time.perf_counter() - started, 1),
            }
            rows.append(row)
            print(
                f"{name:<13} block {row['layer']:>2} rank {row['rank']:>3} ({args.form}, "
                f"{args.positions}; {row['rows']} rows / {row['items']} items held out): "
                f"probe {row['probe_before']:.3f}±{row['probe_before_ci95']:.3f} -> "
                f"{row['probe_after']:.3f}±{row['probe_after_ci95']:.3f}, chance "
                f"{row['chance']:.3f}, fit-side probe {row['probe_after_fit_trained']:.3f}; "
                f"perplexity {row['perplexity_before']:.2f} -> {row['perplexity_after']:.2f} "
                f"({row['seconds']:.0f} s)",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
