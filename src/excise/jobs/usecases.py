"""The four use-case demos (``excise demo --use-case toxicity|bias|privacy|hazard``): each runs its
recipe (``recipes/<use case>.yaml`` holds the same) and shows the use case's own figures before
and after; the privacy demo also measures PrivLeak and verbatim extraction and records them in
its report. The use cases' tasks are :mod:`excise.data.usecases`, their metrics
:mod:`excise.metrics.usecases`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from excise import models
from excise.data.records import QA
from excise.data.tasks import Task, load_task
from excise.errors import ConfigError
from excise.fsutil import write_manifest
from excise.jobs.common import reference_sources
from excise.jobs.erase import EraseJob
from excise.jobs.recipe import parse_recipe
from excise.jobs.unlearn import UnlearnJob
from excise.metrics.benchmarks.muse import min_k_score, privleak, token_logprobs
from excise.metrics.generate import generate_answers
from excise.metrics.quality import auc
from excise.report import write_report

# each demo runs its recipe; recipes/<use case>.yaml holds the same (tests keep them equal)
RECIPES: dict[str, dict[str, Any]] = {
    "toxicity": {
        "model": "smollm2-135m",
        "task": "toxicity",
        "template": "raw",
        "method": {"name": "dpo", "options": {"beta": 0.1, "retain_weight": 1.0}},
        "train": {"steps": 40, "lr": 2.0e-5, "batch_size": 8, "seed": 0},
        "audit": {"attacks": ["relearn"]},
        "out": "runs/toxicity-dpo",
    },
    "bias": {
        "model": "smollm2-135m",
        "task": "bias",
        "template": "raw",
        # exact LEACE on the last prompt token of the last block, where the profession is
        # predicted (block 7, the default, leaves the stereotype untouched: README Use cases)
        "method": {
            "name": "leace",
            "options": {"form": "runtime", "positions": "last", "layer": 29},
        },
        "out": "runs/bias-leace",
    },
    "privacy": {
        "model": "smollm2-135m",
        "task": "fictitious",
        "template": "raw",
        "method": {"name": "npo", "options": {"beta": 0.1, "retain_weight": 1.0}},
        "train": {"steps": 40, "lr": 2.0e-5, "batch_size": 8, "seed": 0},
        "audit": {"attacks": ["mia"]},
        "out": "runs/privacy-npo",
    },
    "hazard": {
        "model": "smollm2-135m",
        "task": "chem-symbols",
        "template": "raw",
        "method": {
            "name": "rmu",
            "options": {"alpha": 1000.0, "steering_scale": 8.0, "update_layers": 3},
        },
        "train": {"steps": 150, "lr": 5.0e-4, "batch_size": 8, "seed": 0},
        "audit": {"attacks": "all"},
        "out": "runs/hazard-rmu",
    },
}
USE_CASES = tuple(RECIPES)
SHOWN = {
    "toxicity": ("toxic_preference", "toxic_logodds", "toxicity_lexicon", "toxicity_probe"),
    "bias": (
        "stereotype_preference",
        "stereotype_logodds",
        "stereotype_preference_profession",
        "stereotype_preference_pronoun",
        "attribute_probe",
        "attribute_probe_final",
    ),
}


def demo_job(
    use_case: str, out: str, *, overwrite: bool = False, quiet: bool = False
) -> UnlearnJob | EraseJob:
    """The job of the use case's recipe, writing into ``out``."""
    if use_case not in RECIPES:
        raise ConfigError(f"unknown use case {use_case!r}; choose one of {', '.join(USE_CASES)}")
    data = {**RECIPES[use_case], "out": out, "overwrite": overwrite}
    if quiet and "train" in data:
        data["train"] = {**data["train"], "progress": False}
    return parse_recipe(data, f"demo {use_case}")


def shown_figures(use_case: str, report: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """The use case's own metrics (before, after) that its demo shows."""
    pairs = {
        key: (report["before"].get(key), report["after"].get(key))
        for key in SHOWN.get(use_case, ())
    }
    return {key: pair for key, pair in pairs.items() if None not in pair}


def extra_figures(use_case: str, job: UnlearnJob) -> dict[str, float]:
    """Figures a demo measures after its run and records in ``OUT/report.json`` (privacy: PrivLeak
    and extraction, under ``privacy``); {} for the others."""
    if use_case != "privacy":
        return {}
    figures = privacy_figures(job.model, str(job.out))
    record_figures(str(job.out), "privacy", figures)
    return figures


def record_figures(out: str, key: str, figures: dict[str, float]) -> None:
    """Add ``figures`` to ``out/report.json`` under ``key``; rewrite the HTML and the manifest."""
    folder = Path(out)
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    report[key] = figures
    write_report(report, folder)
    write_manifest(folder)


def holdout_people(task: Task) -> list[QA]:
    """Facts of invented people nobody was taught: each forget person's first name with another
    person's surname (a name not in the data), and that other person's facts, re-attributed."""
    people: dict[str, list[QA]] = {}
    for item in [*task.forget, *task.retain]:
        if isinstance(item, QA):
            people.setdefault(str(item.meta.get("person")), []).append(item)
    names = list(people)
    forgotten = list(dict.fromkeys(str(q.meta.get("person")) for q in task.forget_eval))
    out: list[QA] = []
    for number, person in enumerate(forgotten):
        donor = names[(names.index(person) + 7 + number) % len(names)]
        fresh = f"{person.split()[0]} {donor.split()[-1]}"
        if fresh in people:
            continue
        out += [
            QA(q.prompt.replace(donor, fresh), q.completion, meta={"person": fresh})
            for q in people[donor]
        ]
    return out


def privacy_figures(model_spec: str, out: str) -> dict[str, float]:
    """MUSE-style PrivLeak (Min-40% AUC, forget vs never-taught holdout facts, relative to the
    gold model) and verbatim extraction (greedy continuation starts with the answer) for the
    taught model before unlearning and for ``out/model``; the demo adds them to
    ``out/report.json`` under ``privacy``."""
    task = load_task("fictitious")
    taught, gold = reference_sources(model_spec, task)
    forget = [q.prompt + q.completion for q in task.forget_eval]
    holdout = [q.prompt + q.completion for q in holdout_people(task)]

    def leak_auc(model, tokenizer) -> float:
        def scores(texts: list[str]) -> list[float]:
            return [-min_k_score(lp) for lp in token_logprobs(model, tokenizer, texts)]

        return auc(scores(holdout), scores(forget))  # MUSE: holdout positive, minus Min-K%

    def extraction(model, tokenizer) -> float:
        prompts = [q.prompt for q in task.forget_eval]
        answers = generate_answers(model, tokenizer, prompts, task.template, max_new_tokens=8)
        hits = [a.strip().startswith(q.completion.strip()) for a, q in zip(answers, task.forget_eval, strict=True)]  # fmt: skip
        return sum(hits) / len(hits)

    figures: dict[str, float] = {}
    gold_model, tokenizer = models.load_model(str(gold))
    gold_auc = leak_auc(gold_model, tokenizer)
    del gold_model
    for name, spec in (("original", str(taught)), ("unlearned", f"{out}/model")):
        model, tokenizer = models.load_model(spec)
        figures[f"privleak_{name}"] = privleak(leak_auc(model, tokenizer), gold_auc)
        figures[f"extraction_{name}"] = extraction(model, tokenizer)
    figures["privleak_auc_gold"] = gold_auc
    return figures
