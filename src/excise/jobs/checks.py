"""Checks of a job's data and models once they are loaded: items longer than the model's context,
forget items also in the retain set, a model that does not know what it should forget, and an
audited model whose weights are not the expected ones."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from excise.attacks.bypass import behaviour_from_task
from excise.data.encode import encode_records
from excise.data.records import QA, Text
from excise.data.tasks import Task
from excise.errors import ConfigError, DataError, ExciseError
from excise.methods import get_method

MAX_TOKENS = 256  # the encoder's cut (excise.data.encode): longer items are cut to this
KNOWN_FLOOR = 0.2  # forget accuracy of the original below this: it hardly knows the forget set
log = logging.getLogger("excise")


def context_length(model) -> int | None:
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    return None


def check_lengths(task: Task, tokenizer, context: int | None) -> None:
    """Records longer than the model's context are an error, not a silent truncation: cutting a
    forget item changes what is forgotten. Items between ``MAX_TOKENS`` and the context are cut
    to ``MAX_TOKENS`` tokens (the encoder's limit), with a warning."""
    long = 0
    for name, records in (("forget", task.forget), ("retain", task.retain)):
        examples = encode_records(tokenizer, records, task.template, max_length=1 << 30)
        for example in examples:
            size = len(example.input_ids)
            if context is not None and size > context:
                record = records[example.index]
                start = getattr(record, "prompt", None) or getattr(record, "text", "")
                raise DataError(
                    f"{name} item {example.index + 1} ({start[:30]!r}...) is {size} tokens, "
                    f"longer than the model's context of {context}; shorten it or split it "
                    "into several records"
                )
            long += size > MAX_TOKENS
    if long:
        log.warning(
            "excise: warning: %d forget/retain items are longer than %d tokens and are cut to %d",
            long,
            MAX_TOKENS,
            MAX_TOKENS,
        )


def record_key(record) -> tuple[str, ...]:
    """What makes two records the same item (whitespace at the ends aside)."""
    if isinstance(record, QA):
        return ("qa", record.prompt.strip(), record.completion.strip())
    if isinstance(record, Text):
        return ("text", record.text.strip())
    return ("other", repr(record))


def check_overlap(task: Task) -> tuple[Task, list[str]]:
    """Forget items also in the retain set pull training both ways. Not an error (users may mean
    it), but a warning, and the count goes into the report (``task.metadata``)."""
    retained = {record_key(r) for r in task.retain}
    count = sum(record_key(r) in retained for r in task.forget)
    metadata = {**task.metadata, "forget_retain_overlap": count}
    warnings = []
    if count:
        warnings.append(
            f"{count} forget item(s) also appear in the retain set and are pulled both ways; "
            "remove them from the retain set"
        )
    return dataclasses.replace(task, metadata=metadata), warnings


def check_training_data(
    task: Task, model, tokenizer, *, method: str, bypass_check: bool = False
) -> tuple[Task, list[str]]:
    """What a task must pass before ``method`` trains on it: a retain set if the method has a
    retain term, items that fit the model's context, and (with ``bypass_check``) enough items for
    the bypass check. Returns the task with its forget/retain overlap counted, and the warnings
    (logged already)."""
    task.check()
    if get_method(method).uses_retain and not task.retain:
        raise ConfigError(
            f"method {method} needs a retain set and it is empty; give --retain FILE "
            "or choose a method without a retain term (ga)"
        )
    check_lengths(task, tokenizer, context_length(model))
    task, warnings = check_overlap(task)
    if bypass_check:  # too few items for the check fails now, not after training
        behaviour_from_task(task)
    for warning in warnings:
        log.warning("excise: warning: %s", warning)
    return task, warnings


def setup_warnings(before: dict[str, Any], template: str, *, requested: str) -> list[str]:
    """What the original model's numbers say about the set-up: a model that does not know what it
    should forget (often the wrong template for the data) makes any removal look perfect."""
    accuracy = before.get("forget_accuracy")
    if accuracy is None or not accuracy < KNOWN_FLOOR:
        return []
    other = "raw" if template == "chat" else "chat"
    how = "chosen by --template auto" if requested == "auto" else "as given"
    return [
        f"the original model answers only {accuracy:.3f} of the forget set with the {template} "
        f"template ({how}), so there is little to forget; check the data, or try --template {other}"
    ]


def expected_hash(value: str) -> str:
    """A sha256 to compare against: the full 64 hex digits or a prefix of at least 12."""
    wanted = value.strip().lower()
    if not 12 <= len(wanted) <= 64 or any(c not in "0123456789abcdef" for c in wanted):
        raise ConfigError(
            f"--expect-hash takes a sha256 (12 to 64 hex digits), got {value!r}; "
            "copy model_sha256 from a report"
        )
    return wanted


def check_hash(spec: str, actual: str, expected: str | None) -> None:
    """Refuse a model whose weights are not the ones the caller asked about."""
    if expected is not None and not actual.startswith(expected_hash(expected)):
        raise ExciseError(
            f"model {spec} has weights sha256 {actual[:16]}..., not the expected "
            f"{expected_hash(expected)[:16]}...; it is not the model you asked to audit: "
            "check --model (or drop --expect-hash)"
        )
