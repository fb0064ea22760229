"""The audit: run attacks on an unlearned model and set each beside the clean model and references.

:func:`audit` returns JSON-ready data (no NaN or infinity: None instead), schema
``AUDIT_SCHEMA_VERSION`` 1:
- ``schema_version``; ``attacks``: names run, in order; ``budgets``: {attack: budget fields}
- ``clean``: {"unlearned" | "original" | "gold": {forget_accuracy, retain_accuracy, mc_accuracy}}
- ``results``: {attack: {name, budget, metrics, curve, details}} (see :class:`AttackResult`)
- ``scorecard``: {"forget_accuracy": {clean, attacked: {attack: value}, worst, worst_attack},
  "retain_accuracy": {clean, attacked: {attack: value}}}; worst is the highest forget accuracy,
  the clean model included (worst_attack "none" when no attack beats it)
- ``recovery``: {attack: (attacked - unlearned) / (original - unlearned)}, with an original model;
  None where the attack has no forget accuracy or the original knows no more than the unlearned
  model. An attack that scores a subset (relearning: half B; in-context: a capped sample; the
  soft prompt: half B) reports the clean and original accuracy on those items in its details
  (``clean_forget_accuracy``, ``original_forget_accuracy``), and recovery is taken on them.
- ``scorecard["recovery"]``: the headline, {worst, worst_attack, configuration}: the highest
  recovery of any attack, the attack and its configuration (relearning: the winning variant,
  learning rate and step; in-context: the shot count) that reached it.
- ``relearn`` (when relearn ran): threshold (default half the original's clean accuracy on half B;
  0.5 without an original), curves {unlearned, original, gold}, steps_to_threshold
  {model: {variant: steps | None}}, and with a gold model ``ratio`` {variant: {ratio, bound}}: see
  :mod:`excise.attacks.references`. Reference models run ``reference_variants`` of the budget.
- ``timings_s``: {attack: seconds}, and "clean": the clean accuracies of every model

``known`` ({"unlearned" | "original" | "gold": :class:`~excise.attacks.known.Known`}) hands over
what the caller already scored (a job's evaluations before and after): the clean accuracies and
relearning's step 0 and target are read from it, and only items it lacks are scored (and added to
it). Without it the forget set is still scored once per model for every attack that reads it.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from excise.attacks import ATTACKS, get_attack, make_budget
from excise.attacks.known import Known, known_utility
from excise.attacks.references import relearn_references
from excise.data.tasks import Task
from excise.errors import ExciseError
from excise.progress import progress, stage

AUDIT_SCHEMA_VERSION = 1


def recovery(attacked: float, unlearned: float, original: float) -> float | None:
    """Share of the removed accuracy an attack brings back; None when nothing was removed."""
    if any(v is None or not math.isfinite(v) for v in (attacked, unlearned, original)):
        return None
    gap = original - unlearned
    return (attacked - unlearned) / gap if gap > 1e-9 else None


ORIGIN_KEYS = ("clean_forget_accuracy", "original_forget_accuracy")


def _configuration(details: dict[str, Any]) -> Any:
    """What an attack reports as the configuration of its attacked accuracy."""
    return details.get("worst") or details.get("configuration")


def _names(attacks: str | Sequence[str]) -> list[str]:
    if isinstance(attacks, str):  # "all", or names separated by commas
        attacks = (
            ATTACKS if attacks == "all" else [a.strip() for a in attacks.split(",") if a.strip()]
        )
    names = list(dict.fromkeys(attacks))
    for name in names:
        get_attack(name)  # ExciseError for unknown names
    if not names:
        raise ExciseError("no attacks to run")
    return names


def _json(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    return value


def _with_relearning_time(budget, given: Any):
    """With a gold model, also time relearning on half B itself (``same_full``) for every model,
    with early checkpoints: independent facts (``fictitious``) are learned from scratch in a few
    steps, and training on half A teaches no model anything about half B, so only this curve can
    tell hidden knowledge from none. Budgets that name their variants are kept as given."""
    if isinstance(given, dict) and ({"variants", "reference_variants"} & set(given)):
        return budget
    if not isinstance(given, dict) and given is not None:
        return budget
    return dataclasses.replace(
        budget,
        variants=tuple(dict.fromkeys((*budget.variants, "same_full"))),
        reference_variants=tuple(dict.fromkeys((*budget.reference_variants, "same_full"))),
        steps=tuple(sorted({*budget.steps, 1, 2, 3})) if max(budget.steps) > 3 else budget.steps,
    )


def audit(
    model,
    tokenizer,
    task: Task,
    *,
    original=None,
    gold=None,
    attacks: str | Sequence[str] = "all",
    budgets: dict[str, Any] | None = None,
    echo: Callable[[str], None] | None = None,
    threshold: float | None = None,
    known: dict[str, Known] | None = None,
) -> dict[str, Any]:
    """Run ``attacks`` on ``model`` (never changed); ``budgets`` maps attack -> overrides;
    ``known``: what is already scored of each model (module docstring)."""
    names = _names(attacks)
    unknown = sorted(set(budgets or {}) - set(names))
    if unknown:
        raise ExciseError(f"budgets given for attacks not run: {', '.join(unknown)}")
    chosen = {name: make_budget(name, (budgets or {}).get(name)) for name in names}
    if gold is not None and "relearn" in chosen:
        chosen["relearn"] = _with_relearning_time(chosen["relearn"], (budgets or {}).get("relearn"))
    references = {k: v for k, v in (("original", original), ("gold", gold)) if v is not None}
    started = time.perf_counter()
    known = {role: (known or {}).get(role) or Known() for role in ("unlearned", *references)}
    clean = {"unlearned": known_utility(model, tokenizer, task, known["unlearned"])}
    clean |= {
        role: known_utility(ref, tokenizer, task, known[role]) for role, ref in references.items()
    }
    results, timings = {}, {"clean": round(time.perf_counter() - started, 2)}
    bar = progress(total=len(names), desc="attacks", unit="attacks")
    for name in names:
        if echo:
            echo(f"[audit] {name} ...")
        start = time.perf_counter()
        with stage(name):  # the attack's own progress reads "[audit: name] ..."
            run = get_attack(name).run
            # an attack that reads what is already scored (relearn) is handed it
            extra = {"known": known} if "known" in inspect.signature(run).parameters else {}
            results[name] = run(
                model, tokenizer, task, budget=chosen[name], original=original, gold=gold, **extra
            )
        timings[name] = round(time.perf_counter() - start, 2)
        bar.update(1)
    bar.close()
    relearn = None
    if "relearn" in results:
        if echo and references:
            echo(f"[audit] relearn on the reference models ({', '.join(references)}) ...")
        start = time.perf_counter()
        with stage("relearn (references)"):
            relearn = relearn_references(
                tokenizer, task, references, results["relearn"], chosen["relearn"], threshold
            )
        timings["relearn (references)"] = round(time.perf_counter() - start, 2)
    attacked = {
        n: r.metrics["forget_accuracy"]
        for n, r in results.items()
        if "forget_accuracy" in r.metrics
    }
    clean_forget = clean["unlearned"]["forget_accuracy"]
    worst_attack = max(attacked, key=lambda n: attacked[n], default="none")
    if worst_attack == "none" or not attacked[worst_attack] > clean_forget:
        worst_attack = "none"
    scores: dict[str, Any] = {}
    if original is not None:
        for name, value in attacked.items():
            details = results[name].details
            before, known = (details.get(k) for k in ORIGIN_KEYS)
            if before is None or known is None:  # scored on the whole forget_eval
                before, known = clean_forget, clean["original"]["forget_accuracy"]
            scores[name] = recovery(value, before, known)
    finite = {n: v for n, v in scores.items() if v is not None and math.isfinite(v)}
    top = max(finite, key=lambda n: finite[n], default=None)
    headline = {
        "worst": finite.get(top) if top else None,
        "worst_attack": top or "none",
        "configuration": _configuration(results[top].details) if top else None,
    }
    report = {
        "schema_version": AUDIT_SCHEMA_VERSION,
        "attacks": names,
        "budgets": {n: dataclasses.asdict(b) for n, b in chosen.items()},
        "clean": clean,
        "results": {n: r.to_dict() for n, r in results.items()},
        "scorecard": {
            "forget_accuracy": {
                "clean": clean_forget,
                "attacked": attacked,
                "worst": max([clean_forget, *attacked.values()]),
                "worst_attack": worst_attack,
            },
            "recovery": headline,
            "retain_accuracy": {
                "clean": clean["unlearned"]["retain_accuracy"],
                "attacked": {
                    n: r.metrics["retain_accuracy"]
                    for n, r in results.items()
                    if "retain_accuracy" in r.metrics
                },
            },
        },
        "recovery": scores,
        "relearn": relearn,
        "timings_s": timings,
    }
    return _json(report)
