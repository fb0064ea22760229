"""Calibrate the written answers of ``biomed`` and the near-retain sets to the bundled model's words.

The knowledge filter (:func:`excise.data.tasks.filter_known`) keeps an item when its completion is
the model's greedy continuation, token for token. A fact the model knows but says another way
(" pancreas" for " the pancreas", " The Heart" for " the heart", " kidneys" for " the kidney") is
then dropped although the model knows it. This script asks the bundled model (SmolLM2-135M) for
its greedy continuation (``model.generate``, ``do_sample=False``, batched, left padding) of every
prompt: the forget facts of ``candidates.txt``, ``near_retain.jsonl`` here and
``../chem_symbols/near_retain.jsonl``. Where the written answer (lower case, leading
"the/a/an" dropped, a plural "s" on either side tolerated) is the start of the continuation
(after at most a leading article), the completion becomes the model's own words up to and
including the answer (" the pancreas", " pancreas", " kidneys"); where it is not, the item stays
as written, and the filter drops it. The answer stays the intended fact; only its surface form
(article, casing, number) follows the model. No answer is looked up or replaced by another one.

Writes, deterministically:
- ``calibration.jsonl``: one line per prompt (``set``: forget, near_biomed, near_chem), with
  the written answer, the model's greedy continuation and the calibrated completion (``null`` where the answer is not at its start); ``generate.py`` reads the forget
  lines and uses ``completion`` as the fact's completion;
- the near-retain files, in place: ``completion`` calibrated, the written answer kept in
  ``written`` where they differ (a second run starts from ``written``).

Paraphrases are not rewritten: a fact keeps the completion of its main prompt, and the filter
keeps a paraphrase only where the completion is, token for token, the greedy continuation of the
paraphrase too (teacher-forced exact match is that test), so a paraphrase counts only where the
model says the fact in the same words after it.

``--all-wordings`` (not yet run or measured) also asks the paraphrase and the question, accepts
a leading " called" (moved into the prompt), and records the first wording the model answers
(``form``, ``asked``), which ``generate.py`` then uses as the prompt.

Run (loads the model; under a minute on 2 idle CPU cores), then ``python generate.py``::

    OMP_NUM_THREADS=2 python src/excise/data/builtin/biomed/calibrate.py
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHEM_NEAR = HERE.parent / "chem_symbols" / "near_retain.jsonl"
NEAR = HERE / "near_retain.jsonl"
MODEL = "smollm2-135m"
NEW_TOKENS = 8
ARTICLES = ("the", "a", "an")
PUNCTUATION = ".,;:!?)\"'"
FILLERS = (" called",)  # a word the model says before the answer, moved into the prompt


def words(answer: str) -> list[str]:
    out = answer.lower().split()
    return out[1:] if out and out[0] in ARTICLES else out


def same_word(seen: str, wanted: str) -> bool:
    return seen == wanted or seen == wanted + "s" or seen + "s" == wanted


def calibrated(answer: str, greedy: str) -> str | None:
    """The start of ``greedy`` that says ``answer`` (with its leading article), or None."""
    wanted = words(answer)
    found = list(re.finditer(r"\S+", greedy))
    if not wanted or not found or greedy[: found[0].start()] != " ":
        return None
    start = 1 if found[0].group().lower() in ARTICLES and len(found) > 1 else 0
    seen = found[start : start + len(wanted)]
    if len(seen) < len(wanted):
        return None
    for k, (match, want) in enumerate(zip(seen, wanted, strict=True)):
        word = match.group().lower()
        core = word.rstrip(PUNCTUATION) if k == len(wanted) - 1 else word
        if not core or not same_word(core, want):
            return None
    last = seen[-1]
    end = last.start() + len(last.group().rstrip(PUNCTUATION))
    return greedy[:end]


def lead_and_answer(answer: str, greedy: str) -> tuple[str, str] | None:
    """``("", completion)``, or ``(" called", completion)`` where the model first says "called"."""
    completion = calibrated(answer, greedy)
    if completion is not None:
        return "", completion
    for lead in FILLERS:
        if greedy.lower().startswith(lead + " "):
            completion = calibrated(answer, greedy[len(lead) :])
            if completion is not None:
                return greedy[: len(lead)], completion
    return None


def greedy_continuations(prompts: list[str], batch_size: int = 64) -> dict[str, str]:
    import torch

    from excise.data.encode import prompt_ids
    from excise.models import load_model

    model, tokenizer = load_model(MODEL, device=None)
    pad = tokenizer.pad_token_id
    unique = sorted(set(prompts), key=lambda p: (len(prompt_ids(tokenizer, p, "raw")), p))
    out: dict[str, str] = {}
    for first in range(0, len(unique), batch_size):
        batch = unique[first : first + batch_size]
        ids = [prompt_ids(tokenizer, p, "raw") for p in batch]
        width = max(map(len, ids))
        input_ids = torch.tensor([[pad] * (width - len(i)) + i for i in ids])
        mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])
        with torch.no_grad():
            generated = model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                pad_token_id=pad,
            )
        for prompt, row in zip(batch, generated[:, width:].tolist(), strict=True):
            out[prompt] = tokenizer.decode(row, skip_special_tokens=True)
        print(f"{min(first + batch_size, len(unique))}/{len(unique)}", file=sys.stderr)
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    path.write_text(text, encoding="utf-8")


def main() -> None:
    sys.path.insert(0, str(HERE))
    from generate import parse

    facts = parse(HERE / "candidates.txt")
    near = {
        "near_biomed": (NEAR, read_jsonl(NEAR)),
        "near_chem": (CHEM_NEAR, read_jsonl(CHEM_NEAR)),
    }
    # default: the cloze prompt only, article/case/plural (what the shipped files hold);
    # --all-wordings (not yet measured): also the paraphrase and the question, and " called"
    wide = "--all-wordings" in sys.argv
    forms = {
        prompt: (prompt, para, f"Question: {question}\nAnswer:") if wide else (prompt,)
        for _, prompt, _, para, question in facts
    }
    prompts = [form for three in forms.values() for form in three]
    prompts += [row["prompt"] for _, rows in near.values() for row in rows]
    greedy = greedy_continuations(prompts)

    lines = []
    for _, prompt, answer, *_ in facts:
        if not wide:
            line = {"set": "forget", "prompt": prompt, "written": " " + answer}
            line["greedy"] = greedy[prompt]
            line["completion"] = calibrated(answer, greedy[prompt])
            lines.append(line)
            continue
        found = [(i, lead_and_answer(answer, greedy[f])) for i, f in enumerate(forms[prompt])]
        form, said = next(((i, s) for i, s in found if s is not None), (None, None))
        lines.append(
            {
                "set": "forget",
                "prompt": prompt,
                "written": " " + answer,
                "greedy": [greedy[f] for f in forms[prompt]],
                "form": form,
                "asked": None if said is None else forms[prompt][form] + said[0],
                "completion": None if said is None else said[1],
            }
        )
    for name, (path, rows) in near.items():
        for row in rows:
            written = row.pop("written", row["completion"])
            completion = calibrated(written, greedy[row["prompt"]])
            lines.append(
                {
                    "set": name,
                    "prompt": row["prompt"],
                    "written": written,
                    "greedy": greedy[row["prompt"]],
                    "completion": completion,
                }
            )
            row["completion"] = completion or written
            if row["completion"] != written:
                row["written"] = written
        write_jsonl(path, rows)
    write_jsonl(HERE / "calibration.jsonl", lines)
    for name in ("forget", "near_biomed", "near_chem"):
        mine = [line for line in lines if line["set"] == name]
        said = sum(line["completion"] is not None for line in mine)
        same = sum(line["completion"] == line["written"] for line in mine)
        print(f"{name}: {said}/{len(mine)} say the answer ({same} as written)")


if __name__ == "__main__":
    main()
