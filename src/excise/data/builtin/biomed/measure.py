"""Count what the knowledge filter keeps of ``biomed`` and of both near-retain sets for the bundled
model, by the task loader's own path (``load_task`` with the raw template, then
:func:`excise.data.tasks.filter_known`, cached under ``excise_home()/filters``).

Prints one JSON object: per set, kept / candidates; the share of kept forget answers that are 2 or
more tokens (the completion as the filter tokenizes it, leading space included); how many kept facts keep a
paraphrase of the other form (question form vs sentence); kept facts by kind. For chem-symbols
only the near-retain set is filtered (its other sets are unchanged by this data).

Run (loads the model; a few minutes on 2 CPU cores the first time)::

    OMP_NUM_THREADS=2 python src/excise/data/builtin/biomed/measure.py
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

MODEL = "smollm2-135m"


def is_question(prompt: str) -> bool:
    return prompt.startswith("Question: ")


def main() -> None:
    from excise.data.tasks import filter_known, load_task
    from excise.models import load_model

    model, tokenizer = load_model(MODEL, device=None)
    task = replace(load_task("biomed", None, "raw"), template="raw")
    kept = filter_known(task, model, tokenizer)
    counts = dict(kept.metadata["filter"])
    counts.pop("rule", None)
    tokens = [
        len(tokenizer(q.completion, add_special_tokens=False).input_ids) for q in kept.forget_eval
    ]
    other_form = sum(
        any(is_question(p) != is_question(q.prompt) for p in q.paraphrases)
        for q in kept.forget_eval
    )
    chem = replace(load_task("chem-symbols", None, "raw"), template="raw")
    chem = replace(chem, forget=chem.forget_eval[:1], forget_eval=chem.forget_eval[:1])
    chem = replace(chem, retain=[], retain_eval=[], forget_mc=[])
    chem_kept = filter_known(chem, model, tokenizer)
    out = {
        "model": MODEL,
        "biomed": counts,
        "forget_answers_2plus_tokens": [sum(n >= 2 for n in tokens), len(tokens)],
        "forget_with_a_kept_paraphrase_of_the_other_form": [other_form, len(kept.forget_eval)],
        "forget_main_prompt_is_question_form": sum(is_question(q.prompt) for q in kept.forget_eval),
        "forget_by_kind": dict(Counter(q.meta["kind"] for q in kept.forget_eval).most_common()),
        "chem_symbols_near_retain": chem_kept.metadata["filter"]["near_retain"],
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
