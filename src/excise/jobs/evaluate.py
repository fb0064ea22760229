"""``excise evaluate`` as data and one function: :class:`EvaluateJob` and :func:`run`."""

from __future__ import annotations

from dataclasses import dataclass

from excise.jobs.common import check_choices, evaluate_task, job_task, load
from excise.metrics import Evaluation
from excise.metrics.benchmarks import benchmark_reference
from excise.metrics.lmeval import parse_utility


@dataclass(kw_only=True)
class EvaluateJob:
    """Score ``model`` on a task. With ``original`` the task's items are filtered by what that
    model knows, not the evaluated one; ``gold`` is a model never trained on the forget set
    (benchmarks' forget quality); ``utility`` (``lm-eval:TASKS``) adds lm-evaluation-harness
    scores."""

    model: str = "smollm2-135m"
    original: str | None = None
    task: str | None = None
    forget: str | None = None
    retain: str | None = None
    data_dir: str | None = None
    template: str = "auto"
    dtype: str = "float32"
    gold: str | None = None
    utility: str | None = None
    allow_pickle: bool = False
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        check_choices(self.template, self.dtype)
        if self.utility is not None:
            parse_utility(self.utility)


def run(job: EvaluateJob) -> Evaluation:
    """The metrics of ``job.model`` on the task (and the benchmark's own, and lm-eval's)."""
    model, tokenizer = load(job.model, job)
    # items are filtered by what the original model knew, not by the evaluated one
    knows = load(job.original, job)[0] if job.original else model
    task = job_task(job, knows, tokenizer)
    del knows
    gold = None
    if job.gold:  # a model never trained on the forget set (benchmarks' forget quality)
        gold = benchmark_reference(load(job.gold, job)[0], tokenizer, task)
    utility = parse_utility(job.utility) if job.utility else None
    return evaluate_task(model, tokenizer, task, reference=gold, utility=utility)
