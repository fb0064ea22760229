"""MUSE: Shi et al. 2024, "MUSE: machine unlearning six-way evaluation for language models"
(``muse-bench/MUSE-News``, ``muse-bench/MUSE-Books``).

Tasks ``muse:news`` and ``muse:books``. Files, as hub ``config/split`` (a local folder holds
``config/split.json``, ``.jsonl`` or ``.parquet``):
- ``raw/forget``, ``raw/retain1``: texts (a list of strings, or rows with ``text``): the training
  sets, cut into pieces of ``CHUNK_WORDS`` words (excise's encoder keeps 256 tokens of a record;
  MUSE trains on 2048-token chunks, so nothing of the corpus is dropped this way);
- ``verbmem/forget``: {prompt, gt};
- ``knowmem/forget_qa``, ``knowmem/retain_qa`` (``retain2_qa`` in MUSE's GitHub data) and their
  ``*_icl`` few-shot examples: {question, answer};
- ``privleak/forget``, ``privleak/holdout`` (``retain`` too): texts.

Metrics (:func:`metrics`), as MUSE's evaluation code computes them:
- VerbMem: ROUGE-L F1 between the greedy continuation (128 new tokens) of each ``prompt`` and
  ``gt``, averaged, x100 (lower is better);
- KnowMem (forget, retain): the few-shot prompt "Question: q\\nAnswer: a\\n\\n"... then
  "Question: q\\nAnswer: ", 32 greedy tokens cut at "\\n\\n" / "\\nQuestion" / "Question:",
  ROUGE-L F1 against the answer, averaged, x100;
- PrivLeak: Min-K% Prob (Shi et al. 2024, "Detecting pretraining data from large language
  models") with k = 40%: a text's score is minus the mean of its floor(k n) lowest token
  log-probabilities; AUC is the ROC area for telling ``holdout`` (label 1) from ``forget``
  (label 0) by minus that score (MUSE's ``forget_holdout_Min-40%``), and
  PrivLeak = (AUC_unlearned - AUC_retrain) / AUC_retrain x 100 with AUC_retrain that of a model
  never trained on the forget set (:func:`reference`); 0 is ideal, large negative values mean
  the forget set is still recognisable (under-unlearning), large positive ones over-unlearning.
"""

from __future__ import annotations

from dataclasses import dataclass

from excise.data.benchmarks.source import chunk_words, field, read_rows, text_of
from excise.data.records import QA, Text
from excise.data.task import Task, shared_utility

HUB_IDS = {"news": "muse-bench/MUSE-News", "books": "muse-bench/MUSE-Books"}
SPLITS = ("news", "books")
CHUNK_WORDS = 150


@dataclass
class MuseSets:
    verbmem: list[tuple[str, str]]  # (prompt, gt)
    knowmem_forget: list[tuple[str, str]]  # (question, answer)
    knowmem_retain: list[tuple[str, str]]
    icl_forget: list[tuple[str, str]]
    icl_retain: list[tuple[str, str]]
    privleak_forget: list[str]
    privleak_holdout: list[str]


def _pairs(rows: list, where: str, first: str, second: str) -> list[tuple[str, str]]:
    return [
        (str(field(r, first, f"{where}[{i}]")), str(field(r, second, f"{where}[{i}]")))
        for i, r in enumerate(rows)
    ]


def load(split: str, data_dir: str | None, template: str = "raw"):

    hub_id = HUB_IDS[split]

    def rows(config: str, name: str, *aliases: str, required: bool = True) -> list:
        names = tuple(f"{config}/{n}" for n in (name, *aliases))
        return read_rows(
            data_dir, names, hub_id=hub_id, config=config, split=name, required=required
        )

    def texts(config: str, name: str, *aliases: str) -> list[str]:
        return [
            text_of(r, f"{config}/{name}[{i}]") for i, r in enumerate(rows(config, name, *aliases))
        ]

    def chunks(name: str) -> list[Text]:
        return [
            Text(piece) for text in texts("raw", name) for piece in chunk_words(text, CHUNK_WORDS)
        ]

    sets = MuseSets(
        verbmem=_pairs(rows("verbmem", "forget"), "verbmem/forget", "prompt", "gt"),
        knowmem_forget=_pairs(
            rows("knowmem", "forget_qa"), "knowmem/forget_qa", "question", "answer"
        ),
        knowmem_retain=_pairs(
            rows("knowmem", "retain_qa", "retain2_qa"), "knowmem/retain_qa", "question", "answer"
        ),
        icl_forget=_pairs(
            rows("knowmem", "forget_qa_icl", required=False),
            "knowmem/forget_qa_icl",
            "question",
            "answer",
        ),
        icl_retain=_pairs(
            rows("knowmem", "retain_qa_icl", "retain2_qa_icl", required=False),
            "knowmem/retain_qa_icl",
            "question",
            "answer",
        ),
        privleak_forget=texts("privleak", "forget"),
        privleak_holdout=texts("privleak", "holdout"),
    )
    utility, fluency = shared_utility()
    return Task(
        f"muse:{split}",
        forget=chunks("forget"),
        retain=chunks("retain1"),
        forget_eval=[QA(f"Question: {q}\nAnswer:", f" {a}") for q, a in sets.knowmem_forget],
        retain_eval=[QA(f"Question: {q}\nAnswer:", f" {a}") for q, a in sets.knowmem_retain],
        utility=utility,
        fluency=fluency,
        template=template,
        metadata={
            "benchmark": "muse",
            "split": split,
            "source": str(data_dir) if data_dir else hub_id,
            "description": f"MUSE-{split.title()}: forget the corpus, keep retain knowledge",
            "chunk_words": CHUNK_WORDS,
        },
        benchmark=sets,
    )
