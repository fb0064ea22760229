"""Generate ``candidates.jsonl`` for the built-in ``biomed`` task from ``candidates.txt``.

Each line of ``candidates.txt`` is ``group | prompt | answer | paraphrase | question`` (written by
hand; see README.md). This script adds, deterministically (no randomness, only SHA-256 of the
prompt):

- ``paraphrases``: the paraphrase, and the question as ``"Question: ...\\nAnswer:"``;
- ``perturbed``: 3 wrong answers of the same group, preferring the answer's shape (same leading
  article, same number of words), or a hand-written list for numeric answers (``PERTURBED``);
- ``mc``: the question with 4 choices (the answer and the 3 wrong ones, at a position set by the
  hash) and the answer's index, WMDP's format.

The prompt and completion are the written ones, or where ``calibration.jsonl`` (written by
``calibrate.py``) records the first of the three wordings (prompt, paraphrase, question) after
which the bundled model says the answer, that wording as the prompt (the other two become the
paraphrases) and the model's own words for the answer as the completion (" The pancreas" for
" the pancreas"); the written answer is kept in ``written`` and used by the multiple-choice
form.

Run ``python generate.py``; it writes ``candidates.jsonl`` next to this file, byte-identical on
every run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

# the broad kind (meta ``kind``) of each distractor group
KINDS = {
    "organ": "organs",
    "body_part": "anatomy",
    "anatomy": "anatomy",
    "heart_part": "anatomy",
    "vessel": "anatomy",
    "system": "anatomy",
    "body_fn": "physiology",
    "blood": "cells",
    "cell": "cells",
    "organelle": "cells",
    "molecule": "molecules",
    "neurotransmitter": "molecules",
    "hormone": "hormones",
    "vitamin": "nutrition",
    "nutrition": "nutrition",
    "process": "processes",
    "genetics": "genetics",
    "disease": "diseases",
    "infectious": "pathogens",
    "pathogen": "pathogens",
    "immunology": "immunology",
    "pharma": "pharmacology",
    "scientist": "history",
    "field": "fields",
    "doctor": "fields",
    "tool": "medicine",
    "plant": "plants",
    "ecology": "ecology",
}

# numeric answers: wrong values of the same kind, written by hand
PERTURBED = {
    "206 bones": ("106 bones", "306 bones", "156 bones"),
    "four chambers": ("two chambers", "three chambers", "five chambers"),
    "46 chromosomes": ("48 chromosomes", "44 chromosomes", "24 chromosomes"),
    "23 chromosomes": ("46 chromosomes", "22 chromosomes", "12 chromosomes"),
    "32 teeth": ("28 teeth", "36 teeth", "24 teeth"),
    "20 baby teeth": ("24 baby teeth", "16 baby teeth", "32 baby teeth"),
    "37 degrees Celsius": ("39 degrees Celsius", "35 degrees Celsius", "40 degrees Celsius"),
    "60 to 100 beats per minute": (
        "30 to 50 beats per minute",
        "120 to 160 beats per minute",
        "10 to 20 beats per minute",
    ),
    "120/80 mmHg": ("180/120 mmHg", "90/40 mmHg", "150/100 mmHg"),
    "5 liters of blood": ("1 liter of blood", "10 liters of blood", "20 liters of blood"),
    "60% water": ("10% water", "30% water", "90% water"),
    "1859": ("1809", "1882", "1905"),
    "7.4": ("5.4", "6.2", "8.6"),
    "six legs": ("eight legs", "four legs", "ten legs"),
    "eight legs": ("six legs", "ten legs", "four legs"),
    "nine months": ("six months", "twelve months", "four months"),
    "20 percent of the body's energy": (
        "2 percent of the body's energy",
        "50 percent of the body's energy",
        "80 percent of the body's energy",
    ),
    "86 billion neurons": ("8 million neurons", "860 billion neurons", "86 million neurons"),
    "chromosome 21": ("chromosome 1", "chromosome 7", "chromosome 13"),
    "O": ("C", "D", "X"),
}

ARTICLES = ("the", "a", "an")


def digest(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest(), 16)


def shape(answer: str) -> tuple[str, int]:
    words = answer.split()
    return (words[0].lower() if words[0].lower() in ARTICLES else "", len(words))


def wrong_answers(prompt: str, answer: str, pool: list[str]) -> tuple[str, ...]:
    if answer in PERTURBED:
        return PERTURBED[answer]
    article, size = shape(answer)

    def rank(other: str) -> tuple[int, int, int, str]:
        other_article, other_size = shape(other)
        closeness = (other_article != article, abs(other_size - size))
        return (*closeness, digest(prompt + other) % 997, other)

    others = sorted({a for a in pool if a.lower() != answer.lower()}, key=rank)
    return tuple(others[:3])


def parse(path: Path) -> list[tuple[str, ...]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = tuple(part.strip() for part in line.split("|"))
        if len(fields) != 5 or not all(fields) or fields[0] not in KINDS:
            raise SystemExit(
                f"{path}:{number}: expected 'group | prompt | answer | para | question'"
            )
        rows.append(fields)
    return rows


def calibration(path: Path = HERE / "calibration.jsonl") -> dict[tuple[str, str], dict]:
    """(prompt, written answer) -> the form the bundled model says it in (calibrate.py)."""
    if not path.is_file():
        return {}
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return {
        (line["prompt"], line["written"]): line
        for line in lines
        if line["set"] == "forget" and line["completion"]
    }


def build(rows: list[tuple[str, ...]]) -> list[dict]:
    calibrated = calibration()
    pools: dict[str, list[str]] = {}
    for group, _, answer, _, _ in rows:
        pools.setdefault(group, []).append(answer)
    items = []
    for group, prompt, answer, paraphrase, question in rows:
        wrong = wrong_answers(prompt, answer, pools[group])
        if len(wrong) != 3:
            raise SystemExit(f"group {group!r} has too few answers for {prompt!r}")
        position = digest(question) % 4
        choices = [*wrong]
        choices.insert(position, answer)
        forms = [prompt, paraphrase, f"Question: {question}\nAnswer:"]
        said = calibrated.get((prompt, " " + answer))
        said = said or {}
        asked = said.get("asked") or prompt
        completion = said.get("completion") or " " + answer
        others = [f for i, f in enumerate(forms) if i != (said.get("form") or 0)]
        written = {"written": " " + answer} if completion != " " + answer else {}
        items.append(
            {
                "prompt": asked,
                "completion": completion,
                **written,
                "paraphrases": others,
                "perturbed": [" " + w for w in wrong],
                "kind": KINDS[group],
                "group": group,
                "mc": {"question": question, "choices": choices, "answer": position},
            }
        )
    return items


def main() -> None:
    items = build(parse(HERE / "candidates.txt"))
    text = "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items)
    (HERE / "candidates.jsonl").write_text(text, encoding="utf-8")
    print(f"wrote {len(items)} items")


if __name__ == "__main__":
    main()
