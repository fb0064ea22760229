"""Greedy generation in left-padded batches (for ROUGE and generation-based checks)."""

from __future__ import annotations

import torch

from excise.data.encode import prompt_ids
from excise.progress import progress


@torch.no_grad()
def generate_answers(
    model,
    tokenizer,
    prompts: list[str],
    template: str,
    *,
    max_new_tokens: int = 12,
    batch_size: int = 16,
) -> list[str]:
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    answers: list[str] = []
    bar = progress(total=len(prompts), desc="generate", unit="prompts")
    for start in range(0, len(prompts), batch_size):
        encoded = [prompt_ids(tokenizer, p, template) for p in prompts[start : start + batch_size]]
        width = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, ids in enumerate(encoded):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
        output = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        answers.extend(tokenizer.batch_decode(output[:, width:], skip_special_tokens=True))
        bar.update(len(encoded))
    bar.close()
    model.train(was_training)
    return answers


def answer_sets(
    model,
    tokenizer,
    sets: dict[str, list[tuple[str, str]]],
    template: str,
    *,
    max_new_tokens: int = 8,
) -> dict[str, list[str]]:
    """Greedy answers to the prompts of ``{set: [(prompt, expected)]}`` (a report's examples:
    :mod:`excise.report.examples`), all in one batch."""
    prompts = [prompt for items in sets.values() for prompt, _ in items]
    if not prompts:
        return {}
    texts = generate_answers(
        model, tokenizer, prompts, template, max_new_tokens=max_new_tokens, batch_size=len(prompts)
    )
    answers, start = {}, 0
    for name, items in sets.items():
        answers[name] = texts[start : start + len(items)]
        start += len(items)
    return answers
