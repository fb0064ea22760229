"""What ``excise tasks`` lists: the built-in tasks, the benchmark loaders and the edit requests.

Built-in sets are counted from the shipped files, as loaded and before any model-based filter
(``chem-symbols`` keeps only what the model knows when it runs; ``counterfact-mini`` was filtered
against the bundled model when it was generated). Benchmarks are not shipped: their sizes are the
authors' published ones, read from ``--data-dir`` or the hub when a command uses them. No model
is loaded.
"""

from __future__ import annotations

from typing import Any

from excise.data.benchmarks import BENCHMARK_TASKS, benchmark_datasets
from excise.data.benchmarks.wmdp import SUBJECTS
from excise.data.tasks import BUILTIN_TASKS, load_task
from excise.editing.requests import BUILTIN, builtin_requests

# one line each on what a task measures
MEASURES = {
    "chem-symbols": "removing real knowledge the model has (chemical-element symbols and facts) "
    "while general facts, multiple choice and fluency stay",
    "biomed": "removing biology and medicine knowledge with multi-token answers (WMDP-Bio in "
    "spirit: exact match, paraphrases, 4-way multiple choice) while general facts and the same "
    "words in other domains stay",
    "fictitious": "TOFU-style removal of invented people the model is first taught, against a "
    "gold model taught only the others",
    "toxicity": "whether toxic continuations stop being preferred over neutral ones, on held-out "
    "prompts (a behaviour)",
    "bias": "gender-stereotyped professions and whether gender is still linearly readable (a "
    "concept to bound with erase, not unlearn)",
    "tofu": "TOFU: forgetting {percent}% of 200 invented authors: forget quality (KS test against "
    "a retain model), model utility, truth ratio, ROUGE",
    "muse": "MUSE-{title}: verbatim and knowledge memorization of the corpus, privacy leakage "
    "(PrivLeak against a retrained model) and retained knowledge",
    "wmdp": "WMDP {subject}: hazardous knowledge as 4-way multiple choice (0.25 is chance)",
    "counterfact-mini": "fact editing (excise edit --task): efficacy, paraphrases, unchanged "
    "neighbours and ripple probes on facts the bundled model knows",
}
# the authors' published sizes (rows as excise reads them)
TOFU = {"forget01": (40, 3960), "forget05": (200, 3800), "forget10": (400, 3600)}
TOFU_EVAL_SIZE = 300  # TOFU evaluates the first 300 items of each set
MUSE = {
    "news": {"forget_documents": 889, "retain_documents": 1777},
    "books": {"forget_documents": 4, "retain_documents": 12},
}
MUSE_EVAL = {"verbmem": 100, "knowmem_forget": 100, "knowmem_retain": 100, "privleak": 100}
WMDP = {"bio": 1273, "cyber": 1987, "chem": 408}


def builtin_tasks() -> list[dict[str, Any]]:

    out = []
    for name in BUILTIN_TASKS:
        task = load_task(name)
        sizes = {
            "forget": len(task.forget),
            "retain": len(task.retain),
            "forget_eval": len(task.forget_eval),
            "paraphrases": len(task.paraphrases),
            "retain_eval": len(task.retain_eval),
            "utility": len(task.utility),
            "fluency": len(task.fluency),
        }
        out.append(
            {
                "name": name,
                "kind": "built-in task",
                "measures": MEASURES[name],
                "source": "shipped with excise",
                "sizes": sizes,
            }
        )
    return out


def benchmarks() -> list[dict[str, Any]]:

    out = []
    for name in BENCHMARK_TASKS:
        benchmark, _, split = name.partition(":")
        if benchmark == "tofu":
            forget, retain = TOFU[split]
            sizes = {
                "forget": forget,
                "retain": retain,
                "forget_eval": min(forget, TOFU_EVAL_SIZE),
                "retain_eval": TOFU_EVAL_SIZE,
            }
            measures = MEASURES["tofu"].format(percent=int(split.removeprefix("forget")))
        elif benchmark == "muse":
            sizes = {**MUSE[split], **MUSE_EVAL}
            measures = MEASURES["muse"].format(title=split.title())
        else:
            sizes = {"questions": WMDP[split]}
            measures = MEASURES["wmdp"].format(subject=SUBJECTS[split])
        out.append(
            {
                "name": name,
                "kind": "benchmark",
                "measures": measures,
                "source": "hub " + ", ".join(benchmark_datasets(name)) + " or --data-dir",
                "sizes": sizes,
            }
        )
    return out


def edit_requests() -> list[dict[str, Any]]:

    out = []
    for name in BUILTIN:
        requests = builtin_requests(name)
        sizes = {
            "requests": len(requests),
            "paraphrases": sum(len(r.paraphrases) for r in requests),
            "neighborhood": sum(len(r.neighborhood) for r in requests),
            "probes": sum(len(r.probes) for r in requests),
        }
        out.append(
            {
                "name": name,
                "kind": "edit requests",
                "measures": MEASURES[name],
                "source": "shipped with excise",
                "sizes": sizes,
            }
        )
    return out


def catalog() -> list[dict[str, Any]]:
    """Every task ``--task`` takes, with its sizes and what it measures."""
    return builtin_tasks() + benchmarks() + edit_requests()
