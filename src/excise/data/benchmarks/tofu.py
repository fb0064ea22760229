"""TOFU: Maini et al. 2024, "TOFU: a task of fictitious unlearning for LLMs" (``locuslab/TOFU``).

Tasks ``tofu:forget01``, ``tofu:forget05``, ``tofu:forget10``: forget 1/5/10% of 200 invented
authors, retain the rest. Files (hub configs of the same name; TOFU's ``.json`` files are JSON
lines):
- ``forgetNN``, ``retain{100-NN}``: {question, answer}, the training sets;
- ``forgetNN_perturbed``, ``retain_perturbed``: {question, answer, paraphrased_answer,
  paraphrased_question, perturbed_answer: [...]}, the evaluation sets;
- ``real_authors_perturbed``, ``world_facts_perturbed``: {question, answer, perturbed_answer};
- ``holdoutNN`` (optional): {question, answer} about authors never trained on, which the audit's
  membership-inference attack uses as non-members.
Prompts are TOFU's plain format, ``"Question: {question}\\nAnswer:"`` and ``" {answer}"``, or with
``--template chat`` the bare question as the user turn (as TOFU fine-tunes chat models).

Metrics (:func:`metrics`), as TOFU's ``evaluate_util.py`` and ``aggregate_eval_stat.py`` compute
them on the first ``EVAL_SIZE`` (300, the ``ds_size`` of its ``eval_everything.yaml``) items of
each set, with L(q, a) the per-token loss -log P(a | q) / |a|:
- Prob: forget/retain mean exp(-L(q, a)); real authors/world facts mean of
  P(a) / (P(a) + sum_j P(a'_j)), P = exp(-L);
- ROUGE: ROUGE-L recall of the greedy answer against ``answer``;
- truth-ratio statistic s = exp(mean_j L(q, a'_j) - L(q, b)) with b the paraphrased answer
  (forget, retain) or the answer (real authors, world facts); Truth Ratio is mean min(s, 1/s) on
  the forget set and mean max(0, 1 - 1/s) elsewhere;
- Forget Quality: p-value of the two-sample KS test between s on the forget set for the model and
  for the retain model (a model never trained on the forget authors; :func:`reference`);
- Model Utility: harmonic mean of the 9 Prob, ROUGE and Truth Ratio values on retain, real
  authors and world facts.
"""

from __future__ import annotations

from dataclasses import dataclass

from excise.data.benchmarks.source import field, read_rows
from excise.data.records import MC, QA
from excise.data.task import Task, shared_utility
from excise.errors import DataError

HUB_ID = "locuslab/TOFU"
SPLITS = ("forget01", "forget05", "forget10")
EVAL_SIZE = 300


def prompt(question: str, template: str = "raw") -> str:
    return question.strip() if template == "chat" else f"Question: {question.strip()}\nAnswer:"


def completion(answer: str) -> str:
    return f" {answer.strip()}"  # the chat template strips the space


@dataclass
class Item:
    """One evaluation question: the answer, the answer compared in the truth ratio, wrong ones."""

    question: str
    answer: str
    base: str  # paraphrased answer (forget, retain) or the answer itself
    perturbed: tuple[str, ...]


@dataclass
class TofuSets:
    forget: list[Item]
    retain: list[Item]
    real_authors: list[Item]
    world_facts: list[Item]
    template: str = "raw"


def _items(rows: list, where: str, base_key: str) -> list[Item]:
    items = []
    for number, row in enumerate(rows[:EVAL_SIZE]):
        here = f"{where}[{number}]"
        perturbed = field(row, "perturbed_answer", here)
        if isinstance(perturbed, str):
            perturbed = [perturbed]
        if not isinstance(perturbed, list | tuple):
            raise DataError(f"{here}: 'perturbed_answer' must be a list of answers")
        items.append(
            Item(
                str(field(row, "question", here)),
                str(field(row, "answer", here)),
                str(field(row, base_key, here)),
                tuple(str(p) for p in perturbed),
            )
        )
        if not items[-1].perturbed:
            raise DataError(f"{here}: 'perturbed_answer' is empty")
    return items


def qa_only(rows: list, where: str, template: str) -> list[QA]:
    return [
        QA(
            prompt(str(field(r, "question", f"{where}[{i}]")), template),
            completion(str(field(r, "answer", f"{where}[{i}]"))),
        )
        for i, r in enumerate(rows)
    ]


def load(split: str, data_dir: str | None, template: str = "raw"):

    percent = int(split.removeprefix("forget"))
    retain_split = f"retain{100 - percent:02d}"

    def rows(name: str, required: bool = True) -> list:
        return read_rows(
            data_dir, (name,), hub_id=HUB_ID, config=name, split="train", required=required
        )

    forget_rows, retain_rows = rows(split), rows(retain_split)
    sets = TofuSets(
        _items(rows(f"{split}_perturbed"), f"{split}_perturbed", "paraphrased_answer"),
        _items(rows("retain_perturbed"), "retain_perturbed", "paraphrased_answer"),
        _items(rows("real_authors_perturbed"), "real_authors_perturbed", "answer"),
        _items(rows("world_facts_perturbed"), "world_facts_perturbed", "answer"),
        template,
    )
    paraphrased = {
        str(r.get("question")): r.get("paraphrased_question")
        for r in rows(f"{split}_perturbed")
        if isinstance(r, dict)
    }

    def evaluation(items: list[Item], with_paraphrase: bool) -> list[QA]:
        out = []
        for item in items:
            rephrased = paraphrased.get(item.question) if with_paraphrase else None
            out.append(
                QA(
                    prompt(item.question, template),
                    completion(item.answer),
                    (prompt(rephrased, template),)
                    if isinstance(rephrased, str) and rephrased
                    else (),
                    tuple(completion(p) for p in item.perturbed),
                )
            )
        return out

    general = [
        MC(i.question.strip(), (i.answer, *i.perturbed), 0)  # mc_accuracy adds "Question:"
        for i in sets.real_authors + sets.world_facts
    ]
    _, fluency = shared_utility()
    holdout = rows(f"holdout{percent:02d}", required=False)
    metadata = {
        "benchmark": "tofu",
        "split": split,
        "source": str(data_dir) if data_dir else HUB_ID,
        "description": f"TOFU: forget {percent}% of the fictitious authors, keep the rest",
    }
    if holdout:
        metadata["holdout"] = [
            {"prompt": q.prompt, "completion": q.completion}
            for q in qa_only(holdout, "holdout", template)
        ]
    return Task(
        f"tofu:{split}",
        forget=qa_only(forget_rows, split, template),
        retain=qa_only(retain_rows, retain_split, template),
        forget_eval=evaluation(sets.forget, True),
        retain_eval=evaluation(sets.retain, False),
        utility=general,
        fluency=fluency,
        template=template,
        metadata=metadata,
        benchmark=sets,
    )
