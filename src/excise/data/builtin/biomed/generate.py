"""Generate ``candidates.jsonl`` for the built-in ``biomed`` task from ``candidates.txt``.

Each line of ``candidates.txt`` is ``group | answer | question | leads | wording | wording ...``
(written by hand; see README.md): the answer as said mid-sentence (no leading article: the
article ends the wording), a plain question (the multiple-choice form), the words that may start
the answer to that question (``leads``: one or more, `` / `` between them; ``-`` for none) and one
or more wordings, each a sentence that ends right before the answer. The question becomes one
more wording, ``"Question: <question>\nAnswer: <lead>"``, so every fact has a sentence form and a
question form. This script adds, deterministically (no randomness, only SHA-256 of the question):

- the question form's lead: the first lead after which ``calibration.jsonl`` (written by
  ``calibrate.py``) records that the bundled model says the answer, else the first lead;
- ``prompt``: the first wording the calibration records as known (sentences before the question
  form), else the first wording; ``paraphrases``: all the other wordings;
- ``perturbed``: 3 wrong answers of the same group (of the same kind where the group is too
  small), preferring the answer's number of words, or
  a hand-written list for numeric answers (``PERTURBED``);
- ``mc``: the question with 4 choices (the answer and the 3 wrong ones, at a position set by the
  hash) and the answer's index, WMDP's format.

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

QUESTION = "Question: {question}\nAnswer:"


def digest(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest(), 16)


def wrong_answers(question: str, answer: str, pool: list[str]) -> tuple[str, ...]:
    if answer in PERTURBED:
        return PERTURBED[answer]
    size = len(answer.split())

    def rank(other: str) -> tuple[int, int, str]:
        return (abs(len(other.split()) - size), digest(question + other) % 997, other)

    def same(other: str) -> bool:  # the answer again, up to case and a plural "s"
        return other.lower().rstrip("s") == answer.lower().rstrip("s")

    others = sorted({a for a in pool if not same(a)}, key=rank)
    return tuple(others[:3])


def question_form(question: str, lead: str) -> str:
    return QUESTION.format(question=question) + ("" if lead == "-" else " " + lead)


def parse(path: Path) -> list[tuple[str, str, str, tuple[str, ...]]]:
    """``(group, answer, question, wordings)`` per fact: the sentences, then the question form
    with each lead (``calibrate.py`` tests them all; ``build`` keeps one)."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = [part.strip() for part in line.split("|")]
        if len(fields) < 5 or not all(fields) or fields[0] not in KINDS:
            raise SystemExit(
                f"{path}:{number}: expected 'group | answer | question | leads | wording ...'"
            )
        group, answer, question, leads, *wordings = fields
        forms = [question_form(question, lead.strip()) for lead in leads.split(" / ")]
        rows.append((group, answer, question, (*wordings, *forms)))
    return rows


def calibration(path: Path = HERE / "calibration.jsonl") -> dict[tuple[str, str], list[bool]]:
    """(question, answer) -> which wordings the bundled model completes with the answer."""
    if not path.is_file():
        return {}
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return {
        (line["question"], line["answer"]): line["known"]
        for line in lines
        if line["set"] == "forget"
    }


def is_question(wording: str) -> bool:
    return wording.startswith("Question: ")


def chosen(wordings: tuple[str, ...], known: list[bool]) -> tuple[list[str], int]:
    """The sentences and one question form (the first known lead, else the first lead), and the
    index of the main prompt: the first known of them, else 0."""
    flags = known if len(known) == len(wordings) else [False] * len(wordings)
    sentences = [(w, k) for w, k in zip(wordings, flags, strict=True) if not is_question(w)]
    questions = [(w, k) for w, k in zip(wordings, flags, strict=True) if is_question(w)]
    kept = [*sentences, next((q for q in questions if q[1]), questions[0])]
    return [w for w, _ in kept], next((i for i, (_, k) in enumerate(kept) if k), 0)


def build(rows: list[tuple[str, str, str, tuple[str, ...]]]) -> list[dict]:
    calibrated = calibration()
    pools: dict[str, list[str]] = {}
    for group, answer, _, _ in rows:
        pools.setdefault(group, []).append(answer)
    kinds: dict[str, list[str]] = {}
    for group, pool in pools.items():
        kinds.setdefault(KINDS[group], []).extend(pool)
    items = []
    for group, answer, question, wordings in rows:
        # the group's answers, else (a group of fewer than 4) its kind's
        pool = pools[group] if len(set(pools[group])) >= 4 else kinds[KINDS[group]]
        wrong = wrong_answers(question, answer, pool)
        if len(wrong) != 3:
            raise SystemExit(f"group {group!r} has too few answers for {question!r}")
        position = digest(question) % 4
        choices = [*wrong]
        choices.insert(position, answer)
        kept, main = chosen(wordings, calibrated.get((question, answer), []))
        items.append(
            {
                "prompt": kept[main],
                "completion": " " + answer,
                "paraphrases": [w for i, w in enumerate(kept) if i != main],
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
