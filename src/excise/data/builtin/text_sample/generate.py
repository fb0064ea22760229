"""Regenerate the text samples shipped for key statistics: ``sample.jsonl`` and
``encyclopedic.jsonl``.

Editing methods need the second moment of MLP keys over ordinary text. Shipping a slice of a
public corpus would need a download; text sampled from the model itself follows the distribution
the model was trained on closely enough for this purpose (and its statistics are exactly the
model's own). Deterministic for a fixed seed, torch version and thread count.

- ``sample.jsonl`` (``--kind general``): continuations of 30 generic openings ("The", "In 1998,",
  "Scientists", ...), temperature 1.0.
- ``encyclopedic.jsonl`` (``--kind encyclopedic``): one continuation per topic of ``topics.txt``
  (485 hand-picked encyclopedia topics: places, people, events, organisations, science, nature,
  culture), opened as "{topic} is", "The history of {topic}", ..., temperature 0.7. MEMIT and
  AlphaEdit took their statistics from Wikipedia; named entities are rare in the general sample
  (~4% of its tokens end a capitalised word), and keys at entity positions are what an edit
  writes through. Without entity-dense text in the statistics, the directions that entity
  positions share are cheap to write along, and edits of one subject spread to others of its
  kind (bench/README.md, "Editing: what the key statistics are made of").

    python -m excise.data.builtin.text_sample.generate --kind general       [--tokens 120000]
    python -m excise.data.builtin.text_sample.generate --kind encyclopedic
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
STARTS = (
    "The", "In", "A", "He", "She", "It", "On", "After", "When", "This", "According to",
    "Scientists", "The city of", "During the", "Many people", "In 1998,", "The history of",
    "One of the", "Researchers", "The company", "Water", "The government", "Students",
    "There are", "Although", "The first", "Music", "The river", "Football", "Doctors",
)  # fmt: skip
FORMS = ("{} is", "{} was", "The history of {}", "{} is known for", "{} has")
KINDS = {
    # kind: (output file, sampling temperature, new tokens, repetition penalty)
    "general": ("sample.jsonl", 1.0, 160, 1.0),
    "encyclopedic": ("encyclopedic.jsonl", 0.7, 110, 1.1),
}


def topic_openings() -> list[str]:
    """One opening per topic, the forms taken in turn; a leading "the" is capitalised."""
    topics = [t.strip() for t in (HERE / "topics.txt").read_text().splitlines() if t.strip()]
    openings = []
    for index, topic in enumerate(topics):
        text = FORMS[index % len(FORMS)].format(topic)
        openings.append(text[0].upper() + text[1:])
    return openings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", choices=sorted(KINDS), default="general")
    parser.add_argument("--tokens", type=int, default=120_000, help="general: tokens to sample")
    parser.add_argument("--batch", type=int, default=30)
    parser.add_argument("--out", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args()

    from excise.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    name, temperature, length, penalty = KINDS[args.kind]
    model, tokenizer = load_model("smollm2-135m")
    tokenizer.padding_side = "left"
    out = Path(args.out) if args.out else HERE / name
    partial = out.with_suffix(".partial")
    rows = (
        [json.loads(line) for line in partial.read_text().splitlines()] if partial.exists() else []
    )
    total = sum(len(tokenizer(r["text"]).input_ids) for r in rows)
    openings = topic_openings() if args.kind == "encyclopedic" else None
    while (total < args.tokens) if openings is None else (len(rows) < len(openings)):
        torch.manual_seed(len(rows))  # batch b is seeded by its position: resumable
        starts = (
            list(STARTS[: args.batch])
            if openings is None
            else openings[len(rows) : len(rows) + args.batch]
        )
        batch = tokenizer(starts, return_tensors="pt", padding=True)
        with torch.no_grad():
            output = model.generate(
                **batch,
                do_sample=True,
                temperature=temperature,
                top_p=0.95,
                repetition_penalty=penalty,
                max_new_tokens=length,
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
        print(f"{len(rows)} texts, {total} tokens", flush=True)
    partial.replace(out)


if __name__ == "__main__":
    main()
