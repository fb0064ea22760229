"""The built-in ``biomed`` task: biology and medicine facts, in the spirit of WMDP-Bio.

Data (package data under ``builtin/biomed``, written by hand; see its README.md):
- ``candidates.jsonl``: facts as sentence completions ("Insulin is produced by the" ->
  " pancreas"), each with its other wordings as paraphrases (more sentences and a question form,
  "Question: Which organ makes insulin?\\nAnswer: The"), 3 wrong answers of the same kind and a
  4-way multiple-choice form (``mc``, WMDP's format);
- ``corpus.jsonl``: short encyclopedic passages about the same knowledge (Text records, trained
  on beside the facts, as corpus-based methods such as ``rmu`` read text);
- ``near_retain.jsonl``: other domains' questions whose answers are the forget answers' words
  ("A prisoner spends the night locked in his" -> " cell"), never trained on.

Retain: the general facts of ``chem-symbols`` (split into a training and a held-out evaluation
half as there), less the few that are forget facts (" heart", " lungs", " giraffe").
The model's knowledge filter (:func:`excise.data.tasks.filter_known`) keeps what it knows.
"""

from __future__ import annotations

from excise.data.records import MC, QA, Text, load_records
from excise.data.task import BUILTIN, Task, qa_only, shared_utility

FOLDER = BUILTIN / "biomed"
ARTICLES = ("the", "a", "an")


def forget_mc(items: list[QA]) -> list[MC]:
    """Each item's multiple-choice form (``meta["mc"]``), pointing back at its prompt."""
    out = []
    for item in items:
        mc = item.meta.get("mc")
        if isinstance(mc, dict):
            choices = tuple(mc["choices"])
            out.append(MC(mc["question"], choices, int(mc["answer"]), {"source": item.prompt}))
    return out


def bare(answer: str) -> str:
    """An answer without case and leading article: " the Heart" -> "heart"."""
    words = answer.lower().split()
    return " ".join(words[1:] if words and words[0] in ARTICLES else words)


def same_fact(item: QA, answers: set[str]) -> bool:
    """A general fact that is a forget fact (" heart", " lungs", "... the blue" -> " whale")."""
    text = (item.prompt + item.completion).lower()
    return bare(item.completion) in answers or any(text.endswith(" " + a) for a in answers)


def near_retain(folder=FOLDER) -> list[QA]:
    return qa_only(load_records(str(folder / "near_retain.jsonl"), name="near retain"), "")


def biomed() -> Task:
    candidates = qa_only(load_records(str(FOLDER / "candidates.jsonl"), name="forget"), "")
    corpus = [
        r for r in load_records(str(FOLDER / "corpus.jsonl"), name="corpus") if isinstance(r, Text)
    ]
    general = qa_only(
        load_records(str(BUILTIN / "chem_symbols" / "retain.jsonl"), name="retain"), ""
    )
    # both the written answer and the model's wording of it (" the lungs", " lung")
    answers = {bare(q.completion) for q in candidates}
    answers |= {bare(q.meta["written"]) for q in candidates if q.meta.get("written")}
    retain = [q for q in general if not same_fact(q, answers)]
    utility, fluency = shared_utility()
    return Task(
        "biomed",
        forget=[*candidates, *corpus],
        retain=retain[0::2],
        forget_eval=list(candidates),
        retain_eval=retain[1::2],
        utility=utility,
        fluency=fluency,
        near_retain_eval=near_retain(),
        forget_mc=forget_mc(candidates),
        metadata={
            "description": "forget biology and medicine facts (multi-token answers, MC form, "
            "a text corpus); keep general facts and the same words in other domains"
        },
    )
