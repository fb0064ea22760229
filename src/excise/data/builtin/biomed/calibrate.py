"""Record which wordings of each ``biomed`` fact, and which near-retain items of both tasks, the
bundled model knows, by the knowledge filter's own test.

The knowledge filter (:func:`excise.data.tasks.filter_known`) keeps an item when its completion
is, token for token, the model's greedy continuation: teacher forced, every token of the answer
is the model's most likely next token (:func:`excise.scoring.score_pairs`, ``correct``). This
script runs that test with the bundled model (SmolLM2-135M, ``smollm2-135m``, CPU, raw prompts)
on every wording of every fact of ``candidates.txt`` (its sentences and its question form, see
``generate.py``) and on every item of ``near_retain.jsonl`` here and of
``../chem_symbols/near_retain.jsonl``. Nothing is rewritten: an answer is never looked up or
replaced; the record only says which wording ``generate.py`` makes the main prompt (the first
the model completes; the others stay as paraphrases, which the filter tests the same way).

Writes ``calibration.jsonl``, deterministically: one line per fact (``set``: forget; the
question, the answer, the wordings and ``known`` per wording) and one per near-retain item
(``set``: near_biomed or near_chem; prompt, completion, ``known``).

Run (loads the model; about two minutes on 2 CPU cores), then ``python generate.py``::

    OMP_NUM_THREADS=2 python src/excise/data/builtin/biomed/calibrate.py

``--near-only`` tests only the near-retain items again (after an edit of a near-retain file) and
keeps the facts' lines.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHEM_NEAR = HERE.parent / "chem_symbols" / "near_retain.jsonl"
NEAR = HERE / "near_retain.jsonl"
MODEL = "smollm2-135m"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def known_pairs(pairs: list[tuple[str, str]]) -> list[bool]:
    """The filter's test: the completion is the model's greedy continuation, teacher forced."""
    from excise.models import load_model
    from excise.scoring import score_pairs

    model, tokenizer = load_model(MODEL, device=None)
    return [bool(ok) for ok in score_pairs(model, tokenizer, pairs, "raw").correct.tolist()]


def main() -> None:
    sys.path.insert(0, str(HERE))
    from generate import parse

    facts = parse(HERE / "candidates.txt")
    near = {"near_biomed": read_jsonl(NEAR), "near_chem": read_jsonl(CHEM_NEAR)}
    # --near-only: test the near-retain items again, keep the facts' lines as they are
    near_only = "--near-only" in sys.argv
    pairs = [] if near_only else [(w, " " + a) for _, a, _, wordings in facts for w in wordings]
    pairs += [(r["prompt"], r["completion"]) for rows in near.values() for r in rows]
    known = iter(known_pairs(pairs))
    old = read_jsonl(HERE / "calibration.jsonl") if near_only else []
    lines = [line for line in old if line["set"] == "forget"]
    for _, answer, question, wordings in [] if near_only else facts:
        flags = [next(known) for _ in wordings]
        lines.append(
            {"set": "forget", "question": question, "answer": answer, "wordings": list(wordings)}
            | {"known": flags}
        )
    for name, rows in near.items():
        for row in rows:
            lines.append(
                {"set": name, "prompt": row["prompt"], "completion": row["completion"]}
                | {"known": next(known)}
            )
    text = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    (HERE / "calibration.jsonl").write_text(text, encoding="utf-8")
    forget = [line for line in lines if line["set"] == "forget"]
    print(f"forget: {sum(any(f['known']) for f in forget)}/{len(forget)} facts known in a wording")
    for name in near:
        mine = [line for line in lines if line["set"] == name]
        print(f"{name}: {sum(line['known'] for line in mine)}/{len(mine)} known")


if __name__ == "__main__":
    main()
