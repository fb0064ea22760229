"""Teaching for TOFU-style tasks: a model taught every fact, and a gold model taught only the retained.

The gold model never saw the forget facts, so it is what perfect unlearning should look like:
forget quality compares against it, and the relearn ratio of the audit uses it as the baseline.
Both are fine-tuned once per (base model weights, data, settings) and cached as safetensors
checkpoints under ``$EXCISE_HOME/taught/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from excise import models
from excise.data.encode import encode_records
from excise.data.tasks import Task
from excise.train import TrainConfig, fine_tune

TEACH_DEFAULTS = {"epochs": 4, "lr": 1e-4, "batch_size": 16}


def teach(
    model, tokenizer, task: Task, records, *, epochs: int, lr: float, batch_size: int
) -> None:
    """Fine-tune ``model`` in place on ``records`` (plain NLL, cosine schedule)."""
    examples = encode_records(tokenizer, records, task.template)
    steps = max(1, epochs * len(examples) // batch_size)
    settings = TrainConfig(
        steps=steps, lr=lr, batch_size=batch_size, schedule="cosine", warmup_steps=steps // 10
    )
    fine_tune(model, tokenizer, examples, records, task.template, settings)


def taught_models(
    model_spec: str,
    task: Task,
    *,
    dtype: str = "float32",
    settings: dict | None = None,
    echo: Callable[[str], None] | None = None,
) -> tuple[Path, Path]:
    """Folders of the model taught all facts and of the gold model (retained facts only)."""
    settings = {**TEACH_DEFAULTS, **(settings or {})}
    base, tokenizer = models.load_model(model_spec, dtype=dtype)
    facts = [(q.prompt, q.completion) for q in task.forget + task.retain]
    key = hashlib.sha256(
        json.dumps([models.fingerprint(base), facts, settings, task.template, dtype]).encode()
    ).hexdigest()[:16]
    folder = models.excise_home() / "taught" / f"{task.name}-{key}"
    targets = {"full": task.forget + task.retain, "gold": task.retain}
    for name, records in targets.items():
        if (folder / name / "config.json").is_file():
            continue
        if echo:
            echo(
                f"teaching the {name} model ({len(records)} facts, once; cached in {folder / name})"
            )
        model, _ = models.load_model(model_spec, dtype=dtype)
        teach(model, tokenizer, task, records, **settings)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder))
        models.save_model(model, tokenizer, tmp)
        if (folder / name).exists():
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, folder / name)
    return folder / "full", folder / "gold"
