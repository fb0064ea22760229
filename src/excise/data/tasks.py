"""Tasks: forget, retain and evaluation sets bundled under one name.

Built-in tasks (shipped as package data, no network):
- ``chem-symbols``: forget the model's real knowledge of chemical elements (symbols and facts);
  retain geography and other general facts. Items are filtered to those the original model
  answers correctly (greedy exact match, teacher forced), and the filter is recorded in
  ``metadata["filter"]``; the retain items that survive are split into a training half and a
  held-out evaluation half.
- ``fictitious``: TOFU-style invented people (4 facts each). The model is first taught all of
  them, and a gold model only the retained people (see :mod:`excise.jobs.fictitious`); 10% of the
  people are forgotten.
- ``toxicity`` and ``bias``: the use cases' tasks (:mod:`excise.data.usecases`, metrics in :mod:`excise.metrics.usecases`), not filtered.

Benchmarks (``tofu:forget10``, ``muse:news``, ``wmdp:bio``, ...) are read from a local folder or
the hub by :mod:`excise.data.benchmarks`; ``load_task(name, data_dir=...)`` dispatches to them.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace

from excise.data.benchmarks import BENCHMARK_TASKS, check_name, load_benchmark
from excise.data.encode import Template
from excise.data.records import QA, Text, load_records
from excise.data.task import BUILTIN, Task, qa_only, shared_utility, with_perturbed
from excise.data.usecases import load_use_case_task
from excise.errors import DataError, ExciseError
from excise.models import excise_home, fingerprint
from excise.scoring import score_pairs

BUILTIN_TASKS = ("chem-symbols", "fictitious", "toxicity", "bias")


def chem_symbols() -> Task:
    folder = BUILTIN / "chem_symbols"
    forget = with_perturbed(
        qa_only(load_records(str(folder / "forget.jsonl"), name="forget"), "forget")
    )
    retain = with_perturbed(
        qa_only(load_records(str(folder / "retain.jsonl"), name="retain"), "retain")
    )
    utility, fluency = shared_utility()
    return Task(
        "chem-symbols",
        forget=list(forget),
        retain=retain[0::2],
        forget_eval=list(forget),
        retain_eval=retain[1::2],
        utility=utility,
        fluency=fluency,
        metadata={"description": "forget chemical-element symbols and facts; keep general facts"},
    )


def fictitious(forget_every: int = 10) -> Task:
    """Invented people; every ``forget_every``-th person is forgotten (10% by default)."""
    path = BUILTIN / "fictitious" / "people.jsonl"
    forget: list[QA] = []
    retain: list[QA] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        person = json.loads(line)
        for fact in person["facts"]:
            item = QA(
                fact["prompt"],
                fact["completion"],
                tuple(fact.get("paraphrases", ())),
                tuple(fact.get("perturbed", ())),
                {"person": person["person"], "kind": fact.get("attribute", "")},
            )
            (forget if number % forget_every == 0 else retain).append(item)
    utility, fluency = shared_utility()
    return Task(
        "fictitious",
        forget=list(forget),
        retain=list(retain),
        forget_eval=list(forget),
        retain_eval=retain[:: max(1, len(retain) // 120)],
        utility=utility,
        fluency=fluency,
        metadata={
            "description": "TOFU-style invented people; model taught all facts, gold model the retained",
            "needs_teaching": True,
            "forget_people": len(forget) // 4,
        },
    )


def custom_task(
    forget: str,
    retain: str | None = None,
    *,
    forget_eval: str | None = None,
    retain_eval: str | None = None,
    template: Template = "raw",
) -> Task:
    """A task from the user's files; utility and fluency sets are the built-in general ones."""
    forget_records = load_records(forget, name="forget")
    retain_records = load_records(retain, name="retain") if retain else []
    forget_qa = (
        qa_only(load_records(forget_eval, name="forget eval"), "")
        if forget_eval
        else qa_only(forget_records, "")
    )
    retain_qa = (
        qa_only(load_records(retain_eval, name="retain eval"), "")
        if retain_eval
        else qa_only(retain_records, "")
    )
    if not any(isinstance(r, QA | Text) for r in forget_records):
        raise DataError(f"{forget}: the forget set needs prompt/completion or text records")
    utility, fluency = shared_utility()
    return Task(
        "custom",
        forget=[r for r in forget_records if isinstance(r, QA | Text)],
        retain=[r for r in retain_records if isinstance(r, QA | Text)],
        forget_eval=forget_qa,
        retain_eval=retain_qa,
        utility=utility,
        fluency=fluency,
        template=template,
        metadata={"forget": forget, "retain": retain},
    ).check()


def load_task(name: str, data_dir: str | None = None, template: Template = "raw") -> Task:
    """A built-in task, or a benchmark task (``tofu:forget10``) read from ``data_dir`` or the hub
    with prompts in ``template``'s format."""
    if ":" in name:
        return load_benchmark(name, data_dir, template)
    if name == "chem-symbols":
        return chem_symbols()
    if name == "fictitious":
        return fictitious()
    if name in ("toxicity", "bias"):
        return load_use_case_task(name)
    raise ExciseError(f"unknown task {name!r}; {task_names_help()}")


def check_task_name(name: str) -> None:
    """An unknown task name is an error before any loading (benchmark splits included)."""
    if ":" in name:
        check_name(name)
    elif name not in BUILTIN_TASKS:
        raise ExciseError(f"unknown task {name!r}; {task_names_help()}")


def task_names_help() -> str:

    return (
        f"built-in tasks: {', '.join(BUILTIN_TASKS)}; benchmarks (with --data-dir or the hub): "
        f"{', '.join(BENCHMARK_TASKS)}"
    )


def filter_known(task: Task, model, tokenizer) -> Task:
    """Keep only the items ``model`` answers correctly (greedy, teacher forced), and paraphrases too.

    The counts before and after go into ``metadata["filter"]``.
    """

    cache_dir = excise_home() / "filters"
    weights = fingerprint(model)

    def known(items: list[QA]) -> list[QA]:
        if not items:
            return []
        # what a model knows depends only on its weights and the items: cache it
        key = hashlib.sha256(
            json.dumps(
                [weights, task.template, [(q.prompt, q.completion, q.paraphrases) for q in items]]
            ).encode()
        ).hexdigest()[:20]
        cached = cache_dir / f"{key}.json"
        if cached.is_file():
            kept = json.loads(cached.read_text())
            return [replace(items[int(i)], paraphrases=tuple(p)) for i, p in kept]
        result = _known(items)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps([[i, list(q.paraphrases)] for i, q in result]))
        os.replace(tmp, cached)
        return [q for _, q in result]

    def _known(items: list[QA]) -> list[tuple[int, QA]]:
        main = score_pairs(
            model, tokenizer, [(q.prompt, q.completion) for q in items], task.template
        )
        paras = [(i, p) for i, q in enumerate(items) for p in q.paraphrases]
        para_ok = (
            score_pairs(
                model, tokenizer, [(p, items[i].completion) for i, p in paras], task.template
            ).correct.tolist()
            if paras
            else []
        )
        good: dict[int, list[str]] = {}
        for (i, p), ok in zip(paras, para_ok, strict=True):
            if ok:
                good.setdefault(i, []).append(p)
        return [
            (i, replace(q, paraphrases=tuple(good.get(i, ()))))
            for i, q in enumerate(items)
            if main.correct[i]
        ]

    forget = known(task.forget_eval)
    retain_eval = known(task.retain_eval)
    retain_train = known([r for r in task.retain if isinstance(r, QA)])
    counts = {
        "rule": "kept items whose answer is the original model's greedy continuation (teacher forced); "
        "paraphrases likewise",
        "forget": [len(forget), len(task.forget_eval)],
        "forget_paraphrases": [sum(len(q.paraphrases) for q in forget), len(task.paraphrases)],
        "retain_eval": [len(retain_eval), len(task.retain_eval)],
        "retain_train": [len(retain_train), sum(isinstance(r, QA) for r in task.retain)],
    }
    if not forget:
        raise ExciseError(
            f"task {task.name}: the model answers none of the forget items; nothing to unlearn"
        )
    return replace(
        task,
        forget=list(forget),
        forget_eval=forget,
        retain=retain_train or task.retain,
        retain_eval=retain_eval,
        metadata={**task.metadata, "filter": counts},
    )
