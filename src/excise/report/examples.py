"""A handful of example prompts with what the model writes before and after the change.

The report's ``examples`` section is ``{set: [{prompt, expected, before, after, before_match,
after_match}]}`` for the sets ``forget``, ``paraphrase`` (when the task has rephrasings) and
``retain``: the first :data:`COUNT` evaluation items of each, answered by greedy decoding of at
most :data:`MAX_NEW_TOKENS` tokens in one batch (cheap beside the evaluation;
:func:`excise.metrics.generate.answer_sets`). ``*_match``: the generated text starts with the
expected answer (case, punctuation and articles aside). The before-answers must come from the
original model before it is changed (training changes it in place): answer :func:`pick`'s
prompts first, then :func:`combine` them with the answers after.

:func:`html_section` and :func:`card_lines` show them in report.html and the model card.
"""

from __future__ import annotations

import re
from html import escape
from typing import Any

COUNT = 5
MAX_NEW_TOKENS = 8
SHOWN = 160  # characters of a prompt kept in the report (longer prompts are cut, with "...")
SETS = ("forget", "paraphrase", "retain")
HEADINGS = {
    "forget": "Forgotten prompts",
    "paraphrase": "Rephrased forgotten prompts",
    "retain": "Prompts to keep",
}


def pick(task, count: int = COUNT) -> dict[str, list[tuple[str, str]]]:
    """``{set: [(prompt, expected answer)]}``: the first ``count`` items of each evaluation set
    (sets without items left out)."""
    sets = {
        "forget": task.forget_eval,
        "paraphrase": task.paraphrases,
        "retain": task.retain_eval,
    }
    return {
        name: [(q.prompt, q.completion) for q in items[:count]]
        for name, items in sets.items()
        if items
    }


def _short(text: str, size: int = SHOWN) -> str:
    return text if len(text) <= size else text[: size - 3].rstrip() + "..."


ARTICLES = re.compile(r"^(the|a|an)\s+")


def _normalise(text: str) -> str:
    text = re.sub(r"[^\w\s]", " ", text.lower())
    return ARTICLES.sub("", " ".join(text.split()))


def _match(generated: str, expected: str) -> bool:
    """The generation starts with the expected answer, whole words, after normalisation (as
    excise.editing.metrics.generated_match: "Rome" does not match "Romania")."""
    got, want = _normalise(generated), _normalise(expected)
    return bool(want) and (got == want or got.startswith(want + " "))


def combine(
    chosen: dict[str, list[tuple[str, str]]],
    before: dict[str, list[str]],
    after: dict[str, list[str]],
) -> dict[str, list[dict[str, Any]]]:
    """The report's ``examples`` section."""
    section: dict[str, list[dict[str, Any]]] = {}
    for name, items in chosen.items():
        rows = []
        for index, (prompt, expected) in enumerate(items):
            old, new = before[name][index], after[name][index]
            rows.append(
                {
                    "prompt": _short(prompt),
                    "expected": _short(expected),
                    "before": old,
                    "after": new,
                    "before_match": _match(old, expected),
                    "after_match": _match(new, expected),
                }
            )
        section[name] = rows
    return section


def _one_line(text: str) -> str:
    """Generated text on one line: newlines shown as the return sign; "(nothing)" for an empty
    answer, "(blank)" for one of only spaces and newlines."""
    if not text.strip():
        return "(blank)" if text else "(nothing)"
    return text.replace("\r", "").replace("\n", " \u21b5 ").strip()


def html_section(
    examples: dict[str, list[dict[str, Any]]] | None,
    *,
    after: str = "after",
    headings: dict[str, str] | None = None,
) -> str:
    """report.html's examples: one table per set; a generation that still gives the expected
    answer is marked."""
    if not examples:
        return ""
    tables = []
    for name, rows in examples.items():
        if not rows:
            continue
        body = "".join(
            "<tr>"
            f"<td>{escape(row['prompt'])}</td><td>{escape(row['expected'] or '–')}</td>"
            + "".join(
                f"<td class='{'said' if row.get(f'{when}_match') else 'other'}'>"
                f"{escape(_one_line(row[when]))}</td>"
                for when in ("before", "after")
            )
            + "</tr>"
            for row in rows
        )
        tables.append(
            f"<h3>{escape((headings or HEADINGS).get(name, name))}</h3>"
            f"<table class='examples'><tr><th>prompt</th><th>expected</th><th>before</th>"
            f"<th>{escape(after)}</th></tr>{body}</table>"
        )
    return (
        "<section id='examples'><h2>Examples</h2><p><small>Greedy answers (at most "
        f"{MAX_NEW_TOKENS} new tokens) to the first items of each set; "
        "<span class='said'>highlighted</span>: the answer starts with the expected one."
        "</small></p>" + "".join(tables) + "</section>"
    )


def _cell(text: str) -> str:
    """Text for a Markdown table cell."""
    return _one_line(text).replace("|", "\\|").replace("`", "'")


def card_lines(
    examples: dict[str, list[dict[str, Any]]] | None,
    *,
    heading: str = "What forgotten prompts now produce",
    after: str = "after",
    headings: dict[str, str] | None = None,
) -> list[str]:
    """The model card's section: what the changed model writes where it was asked to forget
    (and, beside it, on what it keeps)."""
    if not examples:
        return []
    lines = [
        f"## {heading}",
        "",
        f"Greedy answers (at most {MAX_NEW_TOKENS} new tokens) of the model before and after "
        "the change, to the first items of each set (also in report.json).",
        "",
    ]
    for name, rows in examples.items():
        if not rows:
            continue
        lines += [
            f"**{(headings or HEADINGS).get(name, name)}**",
            "",
            f"| prompt | expected | before | {after} |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {_cell(r['prompt'])} | {_cell(r['expected']) if r['expected'] else '–'} | "
            f"{_cell(r['before'])} | "
            f"{_cell(r['after'])} |"
            for r in rows
        ]
        lines.append("")
    return lines
