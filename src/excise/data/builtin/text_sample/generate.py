"""Regenerate ``sample.jsonl``: text sampled from the bundled model, for key statistics.

Editing methods need the second moment of MLP keys over ordinary text. Shipping a slice of a
public corpus would need a download; text sampled from the model itself follows the distribution
the model was trained on closely enough for this purpose (and its statistics are exactly the
model's own). Deterministic for a fixed seed, torch version and thread count.

    python -m excise.data.builtin.text_sample.generate  [--tokens 120000]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

STARTS = (
    "The", "In", "A", "He", "She", "It", "On", "After", "When", "This", "According to",
    "Scientists", "The city of", "During the", "Many people", "In 1998,", "The history of",
    "One of the", "Researchers", "The company", "Water", "The government", "Students",
    "There are", "Although", "The first", "Music", "The river", "Football", "Doctors",
)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=120_000)
    parser.add_argument("--length", type=int, default=160)
    parser.add_argument("--batch", type=int, default=30)
    parser.add_argument("--out", default=str(Path(__file__).with_name("sample.jsonl")))
    args = parser.parse_args()

    from excise.models import load_model

    model, tokenizer = load_model("smollm2-135m")
    tokenizer.padding_side = "left"
    out = Path(args.out)
    partial = out.with_suffix(".partial")
    rows = (
        [json.loads(line) for line in partial.read_text().splitlines()] if partial.exists() else []
    )
    total = sum(len(tokenizer(r["text"]).input_ids) for r in rows)
    while total < args.tokens:
        torch.manual_seed(len(rows))  # batch b is seeded by its position: resumable
        batch = tokenizer(list(STARTS[: args.batch]), return_tensors="pt", padding=True)
        with torch.no_grad():
            output = model.generate(
                **batch,
                do_sample=True,
                temperature=1.0,
                top_p=0.95,
                max_new_tokens=args.length,
                pad_token_id=tokenizer.pad_token_id,
            )
        batch_rows = [
            {"text": " ".join(text.split())}
            for text in tokenizer.batch_decode(output, skip_special_tokens=True)
        ]
        with open(partial, "a") as handle:  # an interrupted run resumes from here
            handle.write("".join(json.dumps(r) + "\n" for r in batch_rows))
        rows += batch_rows
        total += sum(len(tokenizer(r["text"]).input_ids) for r in batch_rows)
        print(f"{total} tokens", flush=True)
    partial.replace(out)


if __name__ == "__main__":
    main()
