"""Knowledge editing: change specific facts in place (ROME, MEMIT, AlphaEdit, constrained FT).

``edit(model, tokenizer, requests, method="memit")`` applies the requests, all at once or in
sequential batches, and returns an :class:`EditResult` holding the model, the exact weight deltas
(float64, reversible: :mod:`excise.editing.delta`), per-batch diagnostics, refused edits and, when
a monitor is given, the retain/utility trace that can stop a collapsing sequence.

``ripple`` edits the facts each request implies with it (:mod:`excise.editing.ripple`);
``guard`` turns on the drift guard for sequential runs (:mod:`excise.editing.guard`).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from excise.arch import block_part
from excise.errors import ConfigError, ExciseError
from excise.progress import progress as progress_bar
from excise.registry import Registry


@dataclass(frozen=True)
class EditOutcome:
    """What one editor call did to one batch of requests."""

    target_nll: list[float]  # per applied request: NLL of its new target after optimisation
    refused: list[dict[str, str]] = field(default_factory=list)  # case_id, reason
    nullspace_dims: dict[int, int] | None = None  # alphaedit: free dimensions per layer


@dataclass(frozen=True)
class EditorSpec:
    name: str
    summary: str  # one line, for listings
    config_cls: type
    apply: Callable[[Any, Sequence[Any]], EditOutcome]  # (EditContext, requests)
    needs_stats: bool = True  # reads key covariance statistics (excise.editing.stats)


EDITORS: Registry[EditorSpec] = Registry(
    "edit method", "excise.editing", ("rome", "memit", "alphaedit", "ft", "memory")
)


@dataclass
class EditContext:
    model: Any
    tokenizer: Any
    config: Any
    template: str
    stats: Any  # KeyStats or None
    prefixes: list[str]
    state: dict[str, Any] = field(default_factory=dict)  # kept across sequential batches

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id


@dataclass
class EditResult:
    """What ``edit`` did. ``model`` is the caller's model when ``in_place`` else a copy."""

    model: Any
    method: str
    config: dict[str, Any]
    in_place: bool
    deltas: dict[str, Any]  # parameter name -> float64 change (exact, reversible)
    batches: list[dict[str, Any]]
    refused: list[dict[str, Any]]
    stopped: str | None = None  # why a sequential run stopped early, if it did
    preserved: int = 0  # texts in the preservation set
    implied: list[dict[str, Any]] = field(default_factory=list)  # ripple: the extra requests

    @property
    def applied(self) -> int:
        """Requests applied (implied ripple requests not counted)."""
        refused = [r for r in self.refused if "+ripple" not in r["case_id"]]
        return sum(b["size"] for b in self.batches) - len(refused)


def make_config(name: str, options: dict[str, Any] | None) -> Any:
    """The editor's config from user options (unknown names and keys refused)."""
    return EDITORS.config(name, options)


def edit(
    model,
    tokenizer,
    requests: Sequence[Any],
    method: str = "memit",
    *,
    in_place: bool = False,
    template: str = "raw",
    batch_size: int | None = None,
    stats: Any = None,
    stats_corpus: str | None = None,
    preserve: str | Sequence[str] | None = None,
    monitor: Callable[[Any], dict[str, float]] | None = None,
    monitor_key: str | None = None,
    min_monitor: float | None = None,
    on_drop: str = "stop",
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
    ripple: str | bool | None = None,
    guard: bool = False,
    **options: Any,
) -> EditResult:
    """Apply ``requests`` with ``method``; ``batch_size`` splits them into sequential batches.

    ``preserve`` (memit, alphaedit): texts whose keys at the edited layers, every token, the
    update must keep (each weighted ``preserve_weight``; read on the model before any edit), or
    a source (``"facts"``, built in; a records file; ``"none"``); ``None`` is the method's
    default (:mod:`excise.editing.preserve`). ``in_place=False`` (default) edits a copy and
    leaves ``model`` untouched; ``True`` changes ``model`` itself. After each batch ``monitor(model)`` (if given) is recorded; when
    ``monitor[monitor_key]`` falls below ``min_monitor`` the run stops (``on_drop="stop"``) or
    warns and continues (``"warn"``). ``ripple`` (True: the shipped relation templates; a path:
    your own) adds each request's implied facts, read from the unedited model, to its batch.
    ``guard=True`` sets the drift guard's defaults under ``options`` (memit, alphaedit).
    """
    from excise.editing.delta import difference, merge, snapshot
    from excise.editing.guard import guard_options
    from excise.editing.preserve import preserved_moments
    from excise.editing.preserve import resolve as resolve_preserve
    from excise.editing.ripple import implied_requests, load_relations, with_implied
    from excise.editing.stats import key_stats
    from excise.editing.targets import context_prefixes
    from excise.models import clone_model

    if not requests:
        raise ExciseError("no edit requests given")
    if on_drop not in ("stop", "warn"):
        raise ConfigError("on_drop must be 'stop' or 'warn'")
    if batch_size is not None and batch_size < 1:
        raise ConfigError("batch_size (--sequential) must be >= 1")
    spec = EDITORS.get(method)
    if guard:
        options = guard_options(method, options)
    config = make_config(method, options)
    relations = load_relations(None if ripple is True else ripple) if ripple else None
    kept = resolve_preserve(method, preserve, requests)
    target = model if in_place else clone_model(model)
    layers = config.layers_for(target)
    implied = (
        implied_requests(target, tokenizer, requests, relations, template=template)
        if relations
        else []
    )
    if echo and relations:
        echo(f"ripple: {len(implied)} implied facts added to {len(requests)} requests")
    if stats is None and spec.needs_stats:
        stats = key_stats(
            target,
            tokenizer,
            layers,
            tokens=config.stats_tokens,
            corpus=stats_corpus,
            progress=progress,
        )
    prefixes = context_prefixes(getattr(config, "prefixes", 0))
    ctx = EditContext(target, tokenizer, config, template, stats, prefixes)
    if kept:
        ctx.state["preserved"] = preserved_moments(
            target, tokenizer, layers, kept, progress=progress
        )
    names = [
        f"{name}.weight"
        for name, module_ in target.named_modules()
        for layer in layers
        if module_ is block_part(target, layer, "mlp_out")
    ]
    size = batch_size or len(requests)
    chunks = [list(requests[i : i + size]) for i in range(0, len(requests), size)]
    deltas: dict[str, Any] = {}
    batches: list[dict[str, Any]] = []
    refused: list[dict[str, Any]] = []
    stopped = None
    for index, chunk in enumerate(
        progress_bar(
            chunks, desc=f"edit ({method})", unit="batches", enabled=progress and len(chunks) > 1
        )
    ):
        started = time.perf_counter()
        before = snapshot(target, names)
        outcome = spec.apply(ctx, with_implied(chunk, implied))
        merge(deltas, difference(target, before))
        refused.extend(outcome.refused)
        nll = outcome.target_nll or [float("nan")]
        record = {
            "batch": index,
            "size": len(chunk),
            "implied": len(with_implied(chunk, implied)) - len(chunk),
            "target_nll": sum(nll) / len(nll),
            "seconds": time.perf_counter() - started,
        }
        if outcome.nullspace_dims is not None:
            record["nullspace_dims"] = outcome.nullspace_dims
        if monitor is not None:
            record["monitor"] = monitor(target)
        batches.append(record)
        if monitor is not None and monitor_key and min_monitor is not None:
            value = record["monitor"].get(monitor_key)
            if value is not None and value < min_monitor:
                message = (
                    f"after batch {index + 1}/{len(chunks)}: {monitor_key} {value:.3f} "
                    f"< {min_monitor:.3f}"
                )
                if on_drop == "stop":
                    stopped = message + "; stopped (later batches not applied)"
                    if echo:
                        echo(stopped)
                    break
                warnings.warn(message, stacklevel=2)
                if echo:
                    echo("warning: " + message)
    for item in refused:
        if echo:
            echo(f"refused edit {item['case_id']}: {item['reason']}")
    return EditResult(
        target,
        method,
        dataclasses.asdict(config),
        in_place,
        deltas,
        batches,
        refused,
        stopped,
        len(kept),
        [
            {"parent": i.parent, "prompt": i.request.text(), "target_new": i.request.target_new}
            | {"target_true": i.request.target_true, "asked": i.asked, "confidence": i.confidence}
            for i in implied
        ],
    )
