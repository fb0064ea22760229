"""Turn records into token ids: loss only on completion tokens, dynamic padding per batch.

``template="raw"`` feeds prompt and completion as plain text (cloze prompts such as the built-in
tasks); ``"chat"`` wraps the prompt as a user turn with the tokenizer's chat template.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass
from typing import Literal

import torch

from excise.data.records import QA, Record, Text

Template = Literal["raw", "chat"]
IGNORE = -100


@dataclass(frozen=True)
class Example:
    """One tokenized training/scoring example; ``index`` points back into its set."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]  # IGNORE where no loss is taken
    index: int


def prompt_ids(tokenizer, prompt: str, template: Template) -> list[int]:
    if template == "chat":
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt.strip()}],
            add_generation_prompt=True,
            tokenize=False,
        )
        return tokenizer(text, add_special_tokens=False).input_ids
    return lead_ids(tokenizer) + tokenizer(prompt, add_special_tokens=False).input_ids


_LEAD: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> its lead ids


def lead_ids(tokenizer) -> list[int]:
    """The special tokens the tokenizer puts before any text (Gemma: <bos>; SmolLM2: none):
    a raw prompt starts as the model saw text start in training (Gemma 3 270M answered 0 of 20
    element prompts without its <bos>, 18 with it)."""
    try:
        return list(_LEAD[tokenizer])
    except (KeyError, TypeError):
        pass
    ids = tokenizer("a").input_ids
    special = set(tokenizer.all_special_ids)
    count = next((i for i, token in enumerate(ids) if token not in special), len(ids))
    lead = tuple(ids[:count])
    with contextlib.suppress(TypeError):  # not weakly referable: computed each time
        _LEAD[tokenizer] = lead
    return list(lead)


def completion_ids(tokenizer, completion: str, template: Template) -> list[int]:
    text = completion.strip() if template == "chat" else completion
    return tokenizer(text, add_special_tokens=False).input_ids


def encode_pair(
    tokenizer,
    prompt: str,
    completion: str,
    template: Template,
    index: int = 0,
    max_length: int = 256,
) -> Example:
    """Prompt and completion tokenized apart, so the completion's tokens are the same in every use."""
    context = prompt_ids(tokenizer, prompt, template)
    target = completion_ids(tokenizer, completion, template)[:max_length]
    context = (
        context[-(max_length - len(target)) :]
        if len(context) + len(target) > max_length
        else context
    )
    return Example(tuple(context + target), tuple([IGNORE] * len(context) + target), index)


def encode_text(tokenizer, text: str, index: int = 0, max_length: int = 256) -> Example:
    # text starts as the model saw text start in training: after the tokenizer's leading special
    # tokens (Gemma's <bos>, which its tokenizer adds without an ``add_bos_token`` flag: scored
    # without it, gemma3-270m's perplexity on the fluency texts read 244)
    ids = [*lead_ids(tokenizer), *tokenizer(text, add_special_tokens=False).input_ids]
    ids = ids[:max_length]
    # the first token has no prediction; every later token is a target
    return Example(tuple(ids), (IGNORE, *ids[1:]), index)


def encode_records(
    tokenizer, records: list[Record], template: Template, max_length: int = 256
) -> list[Example]:
    """Encode QA and Text records (others are skipped); ``index`` is the position in ``records``."""
    examples = []
    for index, record in enumerate(records):
        if isinstance(record, QA):
            examples.append(
                encode_pair(
                    tokenizer, record.prompt, record.completion, template, index, max_length
                )
            )
        elif isinstance(record, Text):
            examples.append(encode_text(tokenizer, record.text, index, max_length))
    return examples


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example in the batch."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention_mask[row, :n] = 1
    index = torch.tensor([e.index for e in examples], dtype=torch.long)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "index": index,
    }
