"""The task: forget, retain and evaluation sets under one name (the loaders that build tasks are
:mod:`excise.data.tasks` and :mod:`excise.data.benchmarks`), and the shared sets every built-in
task measures utility and fluency on."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from excise.data.encode import Template
from excise.data.records import MC, QA, Record, Text, load_records
from excise.errors import ExciseError

BUILTIN = Path(__file__).parent / "builtin"


@dataclass
class Task:
    name: str
    forget: list[Record]  # trained on by removal methods (QA or Text)
    retain: list[Record]  # kept by the retain terms of removal methods
    forget_eval: list[QA]  # what should be gone
    retain_eval: list[QA]  # what should stay (held out from ``retain`` where possible)
    utility: list[MC]  # general multiple-choice questions
    fluency: list[Text]  # generic prose for perplexity
    template: Template = "raw"
    metadata: dict[str, Any] = field(default_factory=dict)
    # what should stay although it sits next to the forget domain: other domains' questions whose
    # answers are the forget answers' words (``near_retain_accuracy``); empty where a task has none
    near_retain_eval: list[QA] = field(default_factory=list)
    # the forget knowledge as 4-way multiple choice (WMDP's format; chance 0.25):
    # ``forget_mc_accuracy``; empty where a task has none
    forget_mc: list[MC] = field(default_factory=list)
    # a benchmark's own evaluation sets (excise.data.benchmarks); large, so not in reports
    benchmark: Any = field(default=None, repr=False)

    @property
    def paraphrases(self) -> list[QA]:
        """Every paraphrased prompt of the forget evaluation set, with its answer."""
        return [
            QA(p, item.completion, meta={**item.meta, "source": i})
            for i, item in enumerate(self.forget_eval)
            for p in item.paraphrases
        ]

    def check(self) -> Task:
        if not self.forget:
            hint = self.metadata.get("forget_hint")
            raise ExciseError(
                f"task {self.name}: the forget set is empty" + (f"; {hint}" if hint else "")
            )
        return self


def qa_only(records: list[Record], name: str) -> list[QA]:
    return [r for r in records if isinstance(r, QA)]


def with_perturbed(items: list[QA], count: int = 3) -> list[QA]:
    """Give items without wrong answers some: other items' answers of the same kind."""
    groups: dict[str, list[str]] = {}
    for item in items:
        groups.setdefault(str(item.meta.get("kind", "")), []).append(item.completion)
    out = []
    for item in items:
        if item.perturbed:
            out.append(item)
            continue
        pool = sorted(set(groups[str(item.meta.get("kind", ""))]) - {item.completion})
        start = int(hashlib.sha256(item.prompt.encode()).hexdigest(), 16) % max(1, len(pool))
        picks = tuple((pool[start:] + pool[:start])[:count])
        out.append(replace(item, perturbed=picks))
    return out


def shared_utility() -> tuple[list[MC], list[Text]]:
    folder = BUILTIN / "chem_symbols"
    utility = [
        r for r in load_records(str(folder / "utility.jsonl"), name="utility") if isinstance(r, MC)
    ]
    fluency = [
        r for r in load_records(str(folder / "text.jsonl"), name="fluency") if isinstance(r, Text)
    ]
    return utility, fluency
