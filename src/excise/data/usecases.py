"""The use cases' data: the built-in ``toxicity`` and ``bias`` tasks (written for this package,
shipped in ``excise/data/builtin/{toxicity,bias}``) and the bias task's own contrast set. What
each task holds, and what its metrics measure, is in :mod:`excise.metrics.usecases`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from excise.data.records import QA, load_records
from excise.data.task import BUILTIN, Task, qa_only, shared_utility
from excise.errors import ConfigError

SPLITS: tuple[str, ...] = ()  # no ``toxicity:split`` names (the benchmarks registry asks)


@dataclass(frozen=True)
class StereotypePair:
    prompt: str
    stereotyped: str
    anti: str
    kind: str  # "profession" (gender -> profession) or "pronoun" (profession -> pronoun)


def toxicity_rows() -> list[dict[str, str]]:
    path = BUILTIN / "toxicity" / "prompts.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def toxicity_task() -> Task:

    rows = toxicity_rows()
    toxic = [
        QA(
            r["prompt"],
            r["toxic"],
            perturbed=(r["neutral"],),
            meta={"kind": "toxic", "chosen": r["neutral"]},
        )
        for r in rows
    ]
    neutral = [
        QA(r["prompt"], r["neutral"], perturbed=(r["toxic"],), meta={"kind": "neutral"})
        for r in rows
    ]
    facts = qa_only(load_records(str(BUILTIN / "chem_symbols" / "retain.jsonl"), name="retain"), "")
    utility, fluency = shared_utility()
    return Task(
        "toxicity",
        forget=list(toxic[0::2]),
        retain=[*neutral[0::2], *facts[0::2]],
        forget_eval=toxic[1::2],
        retain_eval=facts[1::2],
        utility=utility,
        fluency=fluency,
        metadata={
            "description": "forget toxic continuations of insult-eliciting prompts, keep neutral "
            "ones and general facts; evaluated on held-out prompts",
            "benchmark": "toxicity",
            "neutral_eval": [q.completion for q in neutral[1::2]],
        },
        benchmark="toxicity",
    )


def _bias_spec() -> dict[str, Any]:
    return json.loads((BUILTIN / "bias" / "spec.json").read_text(encoding="utf-8"))


def _lower_first(subject: str) -> str:
    return subject[0].lower() + subject[1:] if subject[:3] in ("My ", "The") else subject


def _context(template: str, subject: str, female: bool) -> str:
    pronouns = ("she", "her") if female else ("he", "his")
    return template.format(
        S=subject,
        s=_lower_first(subject),
        she=pronouns[0],
        her=pronouns[1],
        She=pronouns[0].capitalize(),
    )


def bias_contexts() -> tuple[list[QA], list[QA]]:
    """(female, male) context items, paired: item i of each list differs only in the subject."""
    spec = _bias_spec()
    pairs = spec["professions"]
    female: list[QA] = []
    male: list[QA] = []
    index = 0
    for template in spec["context_templates"]:
        for woman, man in spec["subjects"]:
            f_job, m_job = pairs[index % len(pairs)]
            for subject, out, stereo, anti in ((woman, female, f_job, m_job), (man, male, m_job, f_job)):  # fmt: skip
                prompt = _context(template, subject, out is female)
                out.append(QA(prompt, stereo, perturbed=(anti,), meta={"pair": index}))
            index += 1
    return female, male


def stereotype_pairs(templates: int = 3) -> list[StereotypePair]:
    """Gender -> profession pairs (the first ``templates`` context templates, every profession
    pair) and profession -> pronoun pairs (every profession, every pronoun template)."""
    spec = _bias_spec()
    out: list[StereotypePair] = []
    for template in spec["context_templates"][:templates]:
        for woman, man in spec["subjects"]:
            for f_job, m_job in spec["professions"]:
                for subject, stereo, anti in ((woman, f_job, m_job), (man, m_job, f_job)):
                    prompt = _context(template, subject, subject == woman)
                    out.append(StereotypePair(prompt, stereo, anti, "profession"))
    for template, she, he in spec["pronoun_templates"]:
        for f_job, m_job in spec["professions"]:
            out.append(StereotypePair(template.format(p=f_job), she, he, "pronoun"))
            out.append(StereotypePair(template.format(p=m_job), he, she, "pronoun"))
    return out


def bias_task() -> Task:
    female, male = bias_contexts()
    utility, fluency = shared_utility()
    return Task(
        "bias",
        forget=[],
        retain=list(male),
        forget_eval=female,
        retain_eval=male,
        utility=utility,
        fluency=fluency,
        metadata={
            "description": "gender (a protected attribute) in profession contexts: female "
            "contexts are the positives, male ones the negatives; completions are stereotyped "
            "professions",
            "benchmark": "bias",
            "forget_hint": "bias is a concept to bound, not data to unlearn: use "
            "`excise erase --method leace --task bias` (or ablate)",
        },
        benchmark="bias",
    )


def bias_contrast() -> tuple[list[str], list[str]]:
    """(female, male) prompts of the erasure contrast set: every subject (``subjects`` and
    ``contrast.more_subjects``) in every ``contrast`` opening + ending, 2880 a class; prompt k of
    each list is a minimal pair. LEACE fitted on the 60 evaluation contexts a class (fewer items
    than the stream has dimensions) left a held-out probe at 0.59-0.62; on 1440 a class at chance."""
    spec = _bias_spec()
    extra = spec["contrast"]
    subjects = [*spec["subjects"], *extra["more_subjects"]]
    female: list[str] = []
    male: list[str] = []
    for opening in extra["openings"]:
        for ending in extra["endings"]:
            template = f"{opening} {ending}"
            for woman, man in subjects:
                female.append(_context(template, woman, True))
                male.append(_context(template, man, False))
    return female, male


def contrast(task: Task) -> tuple[list[str], list[str]] | None:
    """The benchmarks registry's ``contrast`` hook: bias erases gender on its own 2880 minimal
    pairs (larger than its evaluation items); toxicity has none (its forget/retain prompts)."""
    return bias_contrast() if task.metadata.get("benchmark") == "bias" else None


def load_use_case_task(name: str) -> Task:
    if name == "toxicity":
        return toxicity_task()
    if name == "bias":
        return bias_task()
    raise ConfigError(f"unknown use-case task {name!r}")
