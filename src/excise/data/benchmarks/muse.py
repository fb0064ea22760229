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

import math
from dataclasses import dataclass

import numpy as np
import torch

from excise.data.benchmarks.source import chunk_words, field, read_rows, text_of
from excise.data.records import QA, Text

HUB_IDS = {"news": "muse-bench/MUSE-News", "books": "muse-bench/MUSE-Books"}
SPLITS = ("news", "books")
CHUNK_WORDS = 150
MIN_K = 0.4
VERBMEM_NEW_TOKENS = 128
KNOWMEM_NEW_TOKENS = 32
PRIVLEAK_MAX_TOKENS = 2048


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
    from excise.data.tasks import Task, _shared_utility

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
    utility, fluency = _shared_utility()
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


def rouge_l_f1(reference: str, generated: str) -> float:
    """ROUGE-L F1 on words (MUSE reports the F-measure of rouge_score's ROUGE-L)."""
    from excise.metrics.rouge import lcs_length, words

    ref, gen = words(reference), words(generated)
    if not ref or not gen:
        return 0.0
    common = lcs_length(ref, gen)
    if not common:
        return 0.0
    precision, recall = common / len(gen), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def cut_answer(text: str) -> str:
    for stop in ("\n\n", "\nQuestion", "Question:"):
        text = text.split(stop)[0]
    return text


def knowmem(
    model, tokenizer, qa: list[tuple[str, str]], icl: list[tuple[str, str]], template: str
) -> float:
    from excise.metrics.generate import generate_answers

    shots = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in icl)
    prompts = [f"{shots}Question: {q}\nAnswer: " for q, _ in qa]
    outputs = generate_answers(
        model, tokenizer, prompts, template, max_new_tokens=KNOWMEM_NEW_TOKENS
    )
    scores = [rouge_l_f1(a, cut_answer(o)) for (_, a), o in zip(qa, outputs, strict=True)]
    return 100 * float(np.mean(scores))


def verbmem(model, tokenizer, pairs: list[tuple[str, str]], template: str) -> float:
    from excise.metrics.generate import generate_answers

    outputs = generate_answers(
        model, tokenizer, [p for p, _ in pairs], template, max_new_tokens=VERBMEM_NEW_TOKENS
    )
    return 100 * float(
        np.mean([rouge_l_f1(gt, o) for (_, gt), o in zip(pairs, outputs, strict=True)])
    )


@torch.no_grad()
def token_logprobs(
    model,
    tokenizer,
    texts: list[str],
    *,
    max_tokens: int = PRIVLEAK_MAX_TOKENS,
    batch_size: int = 8,
) -> list[np.ndarray]:
    """log P(token | prefix) of every token of each text but the first (a BOS where the
    tokenizer adds one)."""
    from excise.data.encode import collate, encode_text

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    examples = [encode_text(tokenizer, t, i, max_length=max_tokens) for i, t in enumerate(texts)]
    out: list[np.ndarray] = []
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start : start + batch_size], tokenizer.pad_token_id)
        logits = model(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
        ).logits[:, :-1]  # (batch, seq - 1, vocab): position t predicts token t + 1
        targets = batch["input_ids"][:, 1:].to(device)
        picked = torch.log_softmax(logits.float(), -1).gather(-1, targets.unsqueeze(-1))
        for row, example in enumerate(examples[start : start + batch_size]):
            out.append(picked[row, : len(example.input_ids) - 1, 0].cpu().numpy())
    model.train(was_training)
    return out


def min_k_score(logprobs: np.ndarray, k: float = MIN_K) -> float:
    """Min-K% Prob as MUSE computes it: minus the mean of the floor(k n) lowest log-probs
    (at least one, where MUSE's own code would average nothing)."""
    lowest = np.sort(logprobs)[: max(1, int(len(logprobs) * k))]
    return float(-lowest.mean())


def privleak_auc(model, tokenizer, sets: MuseSets) -> float:
    """MUSE's ``forget_holdout_Min-40%`` AUC: holdout texts are the positives, scored by
    minus their Min-K% score."""
    from excise.attacks.mia import auc

    def scores(texts: list[str]) -> list[float]:
        return [-min_k_score(lp) for lp in token_logprobs(model, tokenizer, texts)]

    return auc(scores(sets.privleak_holdout), scores(sets.privleak_forget))


def privleak(auc_unlearned: float, auc_retrain: float) -> float:
    """(AUC_unlearned - AUC_retrain) / AUC_retrain x 100 (MUSE, Section 3)."""
    return (auc_unlearned - auc_retrain) / auc_retrain * 100


def reference(model, tokenizer, task) -> dict:
    """The retrain model's PrivLeak AUC, which PrivLeak is relative to."""
    return {"privleak_auc": privleak_auc(model, tokenizer, task.benchmark)}


def metrics(model, tokenizer, task, reference: dict | None = None) -> dict[str, float]:
    """MUSE's metrics (see the module docstring), as ``muse_*`` keys."""
    sets: MuseSets = task.benchmark
    out = {
        "muse_verbmem_forget": verbmem(model, tokenizer, sets.verbmem, task.template),
        "muse_knowmem_forget": knowmem(
            model, tokenizer, sets.knowmem_forget, sets.icl_forget, task.template
        ),
        "muse_knowmem_retain": knowmem(
            model, tokenizer, sets.knowmem_retain, sets.icl_retain, task.template
        ),
        "muse_privleak_auc": privleak_auc(model, tokenizer, sets),
    }
    if reference is not None and not math.isnan(reference["privleak_auc"]):
        out["muse_privleak"] = privleak(out["muse_privleak_auc"], reference["privleak_auc"])
    return out
