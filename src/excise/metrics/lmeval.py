"""Utility on lm-evaluation-harness tasks, for the model in memory (optional extra
``excise[lmeval]``).

``--utility lm-eval:TASKS`` scores the model before and after the change with lm-eval's Hugging
Face wrapper (``HFLM(pretrained=model, tokenizer=tokenizer)``): no checkpoint is written for it.
TASKS is a comma list of lm-eval task or group names (``mmlu,hellaswag``), of task config files
(``.yaml``, lm-eval's format: a local ``jsonl`` is read with ``dataset_path: json`` and
``dataset_kwargs: {data_files: {test: FILE}}``), or of folders of such files (their tasks are
then named like lm-eval's own). Hub tasks need the hub or lm-eval's dataset cache; local files
work offline. Each numeric result becomes a metric ``lmeval_{task}_{metric}`` (``acc``,
``acc_norm``, ...; standard errors are left out).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from excise.errors import ConfigError, ExciseError

PREFIX = "lm-eval:"


@dataclass(frozen=True)
class LmEvalUtility:
    tasks: tuple[str, ...]
    limit: int | None = None  # items per task (None: all)
    batch_size: int = 8


def parse_utility(value: str) -> LmEvalUtility:
    """``lm-eval:TASK[,TASK...]`` -> the tasks, or a clear error."""
    if not value.startswith(PREFIX):
        raise ConfigError(f"--utility takes lm-eval:TASKS (e.g. lm-eval:mmlu), got {value!r}")
    tasks = tuple(t.strip() for t in value[len(PREFIX) :].split(",") if t.strip())
    if not tasks:
        raise ConfigError("--utility lm-eval: names no task; e.g. lm-eval:mmlu,hellaswag")
    return LmEvalUtility(tasks)


def _lm_eval():
    try:
        import lm_eval
    except ImportError:
        raise ConfigError(
            "--utility lm-eval needs lm-evaluation-harness: pip install 'excise[lmeval]'"
        ) from None
    return lm_eval


def _yaml_task_names(path: Path) -> list[str]:
    import yaml

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: not a readable lm-eval task file ({error})") from None
    name = config.get("task") if isinstance(config, dict) else None
    return [name] if isinstance(name, str) else []


def _task_list(utility: LmEvalUtility):
    """(task manager, task names): files and folders go on lm-eval's search path and are run by
    the ``task`` name their YAML gives."""
    _lm_eval()
    from lm_eval.tasks import TaskManager

    folders: list[str] = []
    names: list[str] = []
    local = True  # only task files: lm-eval's own task index (thousands of files) is not read
    for entry in utility.tasks:
        path = Path(entry).expanduser()
        if path.is_file():
            folders.append(str(path.resolve().parent))
            found = _yaml_task_names(path)
        elif path.is_dir():
            folders.append(str(path.resolve()))
            found = [n for f in sorted(path.glob("*.yaml")) for n in _yaml_task_names(f)]
        else:
            found, local = [entry], False
        if not found:
            raise ConfigError(f"{entry}: names no lm-eval task (a 'task:' key in its YAML)")
        names.extend(found)
    manager = TaskManager(include_path=sorted(set(folders)) or None, include_defaults=not local)
    return manager, names


def check_utility(utility: LmEvalUtility) -> None:
    """Unknown task names are an error before any training."""
    manager, names = _task_list(utility)
    known = set(manager.match_tasks(names))
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigError(
            f"unknown lm-eval task(s) {', '.join(unknown)}; see `lm-eval ls tasks`, or give "
            "a task .yaml file or a folder of them"
        )


def lm_eval_scores(model, tokenizer, utility: LmEvalUtility) -> dict[str, float]:
    """Every numeric result of the tasks, as ``lmeval_{task}_{metric}``."""
    manager, tasks = _task_list(utility)
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    was_training = model.training
    model.eval()
    try:
        wrapped = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=utility.batch_size)
        results = simple_evaluate(
            model=wrapped,
            tasks=tasks,
            task_manager=manager,
            limit=utility.limit,
            log_samples=False,
            bootstrap_iters=0,
        )
    except (ConfigError, ExciseError):
        raise
    except Exception as error:  # lm-eval and datasets raise many types (hub, config, data)
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ExciseError(f"lm-eval failed on {', '.join(utility.tasks)}: {first}") from error
    finally:
        model.train(was_training)
    scores: dict[str, float] = {}
    for task, values in (results or {}).get("results", {}).items():
        for key, value in values.items():
            metric = key.split(",")[0]
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if number and "stderr" not in metric and metric not in ("alias", "sample_len"):
                scores[f"lmeval_{task}_{metric}"] = float(value)
    return scores
