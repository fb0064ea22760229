"""Where the ``memory`` editor's routing threshold should sit, measured (never part of `make test`).

    python bench/memory_routing.py [--edits 100] [--threads 2] [--out memory-routing-DATE]

Builds the side-memory entries of the first ``--edits`` counterfact-mini requests with the
editor's own code (:func:`excise.editing.memory.store`: every context's key at the subject's
last token, one entry per subject; zero shifts: routing only depends on keys), then reads every
token's key at the memory's layer over five kinds of text and reports, per threshold, the share
of texts with a token routed:

- ``edit``: the edit prompts (max over tokens of the similarity to the request's own entry);
- ``paraphrase``: the requests' paraphrases (same, own entry): the edit should reach them;
- ``neighbourhood``: other subjects' prompts (max over tokens and over every entry): any route
  there changes a fact that must stay;
- ``chem-symbols prompts`` that name no edited subject (every forget and retain item; the
  sequential bench's unrelated facts are among them) and general text passages (max over tokens
  and entries).

Writes bench/results/OUT.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def token_keys(
    model, tokenizer, texts: list[str], layer: int, batch: int = 32
) -> list[torch.Tensor]:
    """Per text: every token's key (input of block ``layer``'s MLP output projection)."""
    from excise.arch import block_part, run_until

    found: list[torch.Tensor] = []
    handle = block_part(model, layer, "mlp_out").register_forward_pre_hook(
        lambda _m, args: found.append(args[0].detach().float())
    )
    out: list[torch.Tensor] = []
    try:
        with torch.no_grad():
            for start in range(0, len(texts), batch):
                enc = tokenizer(texts[start : start + batch], return_tensors="pt", padding=True)
                found.clear()
                run_until(model, layer, **enc)
                keys = found[0]
                for row, mask in zip(keys, enc["attention_mask"], strict=True):
                    out.append(row[mask.bool()])
    finally:
        handle.remove()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--edits", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=f"memory-routing-{time.strftime('%Y-%m-%d')}")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from excise.data.tasks import load_task
    from excise.editing import EditContext, make_config
    from excise.editing.memory import model_memory, store
    from excise.editing.requests import builtin_requests
    from excise.editing.stats import SAMPLE, key_stats, read_corpus
    from excise.editing.targets import context_prefixes
    from excise.models import load_model

    started = time.perf_counter()
    model, tokenizer = load_model("smollm2-135m", device=None)
    tokenizer.padding_side = "right"
    requests = builtin_requests("counterfact-mini")[: args.edits]
    config = make_config("memory", {})
    layer = config.layers_for(model)[0]
    stats = key_stats(model, tokenizer, [layer], tokens=config.stats_tokens, progress=False)
    ctx = EditContext(model, tokenizer, config, "raw", stats, context_prefixes(config.prefixes))
    memory = model_memory(ctx, layer)  # attached to the model: zero shifts change nothing
    entry_of = store(
        ctx, memory, layer, requests, torch.zeros(len(requests), model.config.hidden_size)
    )

    def own(texts_of: list[list[str]]) -> list[float]:
        flat = [(i, t) for i, texts in enumerate(texts_of) for t in texts]
        keys_per = token_keys(model, tokenizer, [t for _, t in flat], layer)
        return [
            best(k, memory.owners == entry_of[i]) for (i, _), k in zip(flat, keys_per, strict=True)
        ]

    def any_entry(texts: list[str]) -> list[float]:
        everything = torch.ones(len(memory.owners), dtype=torch.bool)
        return [best(k, everything) for k in token_keys(model, tokenizer, texts, layer)]

    def best(keys: torch.Tensor, stored: torch.Tensor) -> float:
        """The best cosine of a routable token of ``keys`` with the ``stored`` keys."""
        units = memory.directions(keys)
        cosines = (units @ memory.keys[stored].T).amax(-1)
        cosines[~memory.routable(units)] = -1.0
        return float(cosines.max())

    task = load_task("chem-symbols")
    general = [" ".join(t.split()[:64]) for t in read_corpus(SAMPLE)[:200]]
    kinds = {
        "edit": own([[r.text()] for r in requests]),
        "paraphrase": own([list(r.paraphrases) for r in requests]),
        "neighbourhood": any_entry([p.prompt for r in requests for p in r.neighborhood]),
        "chem-symbols prompts": any_entry(
            [
                item.prompt
                for item in task.retain + task.forget
                if not any(r.subject in item.prompt for r in requests)
            ]
        ),
        "general text": any_entry(general),
    }
    table = {
        kind: {
            "n": len(values),
            "median": float(torch.tensor(values).median()),
            "routed": {str(t): sum(v >= t for v in values) / len(values) for t in THRESHOLDS},
        }
        for kind, values in kinds.items()
    }
    result = {
        "model": "smollm2-135m",
        "layer": layer,
        "entries": memory.size,
        "requests": len(requests),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "seconds": round(time.perf_counter() - started, 1),
        "kinds": table,
        "values": kinds,
    }
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=1) + "\n")
    header = "| text | n | median best cosine | " + " | ".join(f">= {t}" for t in THRESHOLDS) + " |"
    lines = [
        f"# Side-memory routing on {result['model']} ({result['date']})",
        "",
        f"`python bench/memory_routing.py --edits {args.edits}`: {memory.size} entries "
        f"({memory.keys.shape[0]} keys) on layer {layer} from {len(requests)} counterfact-mini "
        "requests, keyed as the editor keys them; share of texts with a routable token (not "
        "sink-like) at each threshold (edit, paraphrase: to the request's own entry; the rest: "
        f"to any entry). {result['seconds']} s.",
        "",
        header,
        "|" + "---|" * (3 + len(THRESHOLDS)),
    ]
    for kind, row in table.items():
        shares = " | ".join(f"{row['routed'][str(t)]:.2f}" for t in THRESHOLDS)
        lines.append(f"| {kind} | {row['n']} | {row['median']:.2f} | {shares} |")
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
