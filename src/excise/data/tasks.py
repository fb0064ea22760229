"""Tasks: forget, retain and evaluation sets bundled under one name.

Built-in tasks (shipped as package data, no network):
- ``chem-symbols``: forget the model's real knowledge of chemical elements (symbols and facts);
  retain geography and other general facts. Items are filtered to those the original model
  answers correctly (greedy exact match, teacher forced), and the filter is recorded in
  ``metadata["filter"]``; the retain items that survive are split into a training half and a
  held-out evaluation half. ``near_retain_eval``: other domains' questions whose answers are
  element names (" copper" wires, " calcium" in milk, " Mercury" the planet), never trained on.
- ``biomed``: forget biology and medicine facts with multi-token answers, each with paraphrases
  and a 4-way multiple-choice form (``forget_mc``), beside a text corpus of the domain
  (:mod:`excise.data.biomed`); filtered as ``chem-symbols``.
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
from excise.data.biomed import biomed, near_retain
from excise.data.encode import Template
from excise.data.records import MC, QA, Text, load_records
from excise.data.task import BUILTIN, Task, qa_only, shared_utility, with_perturbed
from excise.data.usecases import load_use_case_task
from excise.errors import DataError, ExciseError
from excise.models import excise_home, fingerprint
from excise.scoring import score_pairs

BUILTIN_TASKS = ("chem-symbols", "fictitious", "biomed", "toxicity", "bias")


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
        near_retain_eval=near_retain(folder),
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
    if name == "biomed":
        return biomed()
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


FILTER_VERSION = 2  # part of the cache key: bump it when what "known" means changes


def filter_known(task: Task, model, tokenizer) -> Task:
    """Keep only the items ``model`` knows, in one scoring pass over every set.

    QA items (forget, retain, near-retain) are kept when their answer is the model's greedy
    continuation (teacher forced); paraphrases likewise. Multiple-choice items (``forget_mc``)
    are kept when the right choice has the highest log-likelihood after
    ``"Question: ...\\nAnswer:"``, as :func:`excise.metrics.mc_accuracy` scores them. Text
    records of the forget set (a corpus) are kept as they are. The counts before and after go
    into ``metadata["filter"]``; what a model knows depends only on its weights and the items, so
    the result is cached under ``excise_home()/filters``.
    """
    retain_qa = [r for r in task.retain if isinstance(r, QA)]
    sets = {
        "forget": task.forget_eval,
        "retain_eval": task.retain_eval,
        "retain_train": retain_qa,
        "near_retain": task.near_retain_eval,
    }
    kept = _cached_filter(task, sets, model, tokenizer)
    known = {
        name: [replace(items[int(i)], paraphrases=tuple(paras)) for i, paras in kept[name]]
        for name, items in sets.items()
    }
    forget_mc = [task.forget_mc[int(i)] for i in kept["forget_mc"]]
    forget = known["forget"]
    counts = {
        "rule": "kept QA items whose answer is the original model's greedy continuation (teacher "
        "forced), paraphrases likewise; MC items whose answer has the highest log-likelihood",
        "forget": [len(forget), len(task.forget_eval)],
        "forget_paraphrases": [sum(len(q.paraphrases) for q in forget), len(task.paraphrases)],
        "retain_eval": [len(known["retain_eval"]), len(task.retain_eval)],
        "retain_train": [len(known["retain_train"]), len(retain_qa)],
        "near_retain": [len(known["near_retain"]), len(task.near_retain_eval)],
        "forget_mc": [len(forget_mc), len(task.forget_mc)],
    }
    if not forget:
        raise ExciseError(
            f"task {task.name}: the model answers none of the forget items; nothing to unlearn"
        )
    texts = [r for r in task.forget if isinstance(r, Text)]
    return replace(
        task,
        forget=[*forget, *texts],
        forget_eval=forget,
        retain=known["retain_train"] or task.retain,
        retain_eval=known["retain_eval"],
        near_retain_eval=known["near_retain"],
        forget_mc=forget_mc,
        metadata={**task.metadata, "filter": counts},
    )


def _cached_filter(task: Task, sets: dict[str, list[QA]], model, tokenizer) -> dict[str, list]:
    """Per QA set, ``[index, kept paraphrases]`` of each known item; ``forget_mc``: indices."""
    key = hashlib.sha256(
        json.dumps(
            [
                FILTER_VERSION,
                fingerprint(model),
                task.template,
                {n: [(q.prompt, q.completion, q.paraphrases) for q in s] for n, s in sets.items()},
                [(m.question, m.choices, m.answer) for m in task.forget_mc],
            ]
        ).encode()
    ).hexdigest()[:20]
    cached = excise_home() / "filters" / f"{key}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    result = _known_items(task, sets, model, tokenizer)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, cached)
    return result


def _known_items(task: Task, sets: dict[str, list[QA]], model, tokenizer) -> dict[str, list]:
    # every main prompt and paraphrase of every set in one score_pairs call
    rows = [
        (name, i, prompt, q.completion)
        for name, items in sets.items()
        for i, q in enumerate(items)
        for prompt in (None, *q.paraphrases)
    ]
    pairs = [(p if p is not None else sets[n][i].prompt, c) for n, i, p, c in rows]
    correct = score_pairs(model, tokenizer, pairs, task.template).correct.tolist() if pairs else []
    main_ok: set[tuple[str, int]] = set()
    good: dict[tuple[str, int], list[str]] = {}
    for (name, i, prompt, _), ok in zip(rows, correct, strict=True):
        if ok and prompt is None:
            main_ok.add((name, i))
        elif ok:
            good.setdefault((name, i), []).append(prompt)
    result: dict[str, list] = {
        name: [[i, good.get((name, i), [])] for i in range(len(items)) if (name, i) in main_ok]
        for name, items in sets.items()
    }
    result["forget_mc"] = _known_mc(task.forget_mc, model, tokenizer)
    return result


def _known_mc(questions: list[MC], model, tokenizer) -> list[int]:
    """Indices of the questions whose right choice scores highest (summed log-probability)."""
    if not questions:
        return []
    pairs = [(f"Question: {q.question}\nAnswer:", f" {c}") for q in questions for c in q.choices]
    logprob = score_pairs(model, tokenizer, pairs, "raw").logprob
    kept, start = [], 0
    for i, q in enumerate(questions):
        if int(logprob[start : start + len(q.choices)].argmax()) == q.answer:
            kept.append(i)
        start += len(q.choices)
    return kept
