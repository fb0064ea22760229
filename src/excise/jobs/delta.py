"""The edit's tools as jobs: ``excise apply-delta`` / ``revert-delta`` (:class:`DeltaJob`: an
edit's exact weight deltas added to, or taken from, a model) and ``excise stats``
(:class:`StatsJob`: key statistics computed, or taken from the cache, and exported)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from excise import models
from excise.editing import make_config
from excise.editing.delta import apply_delta, load_delta
from excise.editing.layers import check_layers
from excise.editing.stats import DEFAULT_TOKENS, export_stats, key_stats
from excise.errors import ConfigError
from excise.fsutil import atomic_dir, atomic_file, check_output, write_manifest
from excise.jobs.common import check_choices


@dataclass(kw_only=True)
class DeltaJob:
    """Apply (``sign=1``) or revert (``sign=-1``) the deltas of ``delta`` (a
    ``delta.safetensors`` written by ``excise edit``) on ``model``; write the result to ``out``."""

    model: str
    delta: str
    out: str | Path
    sign: float = 1.0
    overwrite: bool = False
    dtype: str = "float32"
    allow_pickle: bool = False
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        check_choices(dtype=self.dtype)
        if self.sign not in (1.0, -1.0):
            raise ConfigError(f"sign is 1 (apply) or -1 (revert), got {self.sign}")


def run_delta(job: DeltaJob) -> dict[str, Any]:
    """Returns the delta file's metadata and how many tensors changed (``tensors``)."""
    check_output(
        Path(job.out), overwrite=job.overwrite, inputs={"--model": job.model, "--delta": job.delta}
    )
    deltas, meta = load_delta(job.delta)
    model, tokenizer = models.load_model(
        job.model,
        dtype=job.dtype,
        allow_pickle=job.allow_pickle,
        trust_remote_code=job.trust_remote_code,
    )
    apply_delta(model, deltas, sign=job.sign)
    with atomic_dir(job.out, overwrite=job.overwrite) as tmp:
        models.save_model(model, tokenizer, tmp)
        write_manifest(tmp)
    return {**meta, "tensors": len(deltas)}


@dataclass(kw_only=True)
class StatsJob:
    """Key statistics of ``model`` at ``layers`` (default: ``method``'s) from ``tokens`` tokens of
    ``corpus`` (default: the shipped general and encyclopedic samples), exported to the
    ``.safetensors`` file ``out``."""

    out: str | Path
    model: str = "smollm2-135m"
    method: str = "memit"
    layers: list[int] | None = None
    tokens: int | None = None
    corpus: str | None = None
    overwrite: bool = False
    allow_pickle: bool = False
    trust_remote_code: bool = False


def run_stats(job: StatsJob) -> dict[str, Any]:
    """Returns what was written: layers, tokens read, model fingerprint and the file."""
    out = Path(job.out)
    inputs = {"--model": job.model, "--corpus": job.corpus}
    check_output(out, overwrite=job.overwrite, inputs=inputs, kind="file")
    if job.tokens is not None and job.tokens < 1:
        raise ConfigError(f"--tokens must be >= 1, got {job.tokens}")
    model, tokenizer = models.load_model(
        job.model, allow_pickle=job.allow_pickle, trust_remote_code=job.trust_remote_code
    )
    if job.layers is not None:
        layers = check_layers(model, job.layers)
    else:
        layers = make_config(job.method, {}).layers_for(model)
    stats = key_stats(
        model, tokenizer, layers, tokens=job.tokens or DEFAULT_TOKENS, corpus=job.corpus
    )
    with atomic_file(out, overwrite=job.overwrite) as tmp:
        export_stats(stats, tmp)
    return {"layers": layers, "tokens": stats.tokens, "model": stats.model, "out": str(out)}
