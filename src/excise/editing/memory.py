"""``memory``: edits kept in a key-routed side memory instead of the weights (GRACE, Hartvigsen
et al. 2023; WISE, Wang et al. 2024), for long sequences of edits that must leave everything
else as it was.

Every weight editor (ROME, MEMIT, AlphaEdit) writes each edit into a matrix that all text goes
through, so edits pile up as drift: on the bundled model 500 sequential AlphaEdit edits kept
0.99 of the edits but 0.46 of unrelated facts. Here the weights never change. Per batch:

1. the shift each request needs is found as MEMIT finds it (:mod:`excise.editing.targets`: a
   change of what the MLP output projection of block ``layer`` writes at the subject's last
   token, optimised on the model as it now is, earlier entries applied; same-subject requests,
   ripple's implied ones among them, share one shift);
2. the shift becomes an entry of the model's side memory (:mod:`excise.sidememory`), keyed by
   each of its requests' keys (that projection's input at the subject) in every context it was
   written in; a key within ``merge_above`` of a stored one adds the shift to that entry.

At run time a token whose whitened key is within cosine ``threshold`` of a stored key gets its
entry's shift; every other token computes what the unedited model computes. So an edit reaches
the prompts that lead up to its subject as the edit prompt did (a causal model's key depends
only on the words up to it), and nothing else: unrelated facts, fluency and questions about
other subjects stay put by construction, whatever the number of edits. The first token's key
is the attention sink's whatever the token, so a subject that opens a prompt is written for
the prefixed contexts only (reported among the refused edits as "partly"). The price is
generalisation: a paraphrase whose key falls under ``threshold`` is not routed (lower it to
reach more phrasings, at the risk of routing neighbours), and facts that are reached without
the subject's token are not.

**The output is not a plain checkpoint**: the weights saved are the unedited ones and the memory
is a file beside them (``excise-memory.safetensors``, named in ``config.json`` and the model
card). ``transformers``' ``from_pretrained`` loads the model WITHOUT the edits; excise's loader
(every command, :func:`excise.models.load_model`) attaches them.

Hyper-parameters: ``layer`` (default the last layer MEMIT edits for the family), ``threshold``
0.6 and ``merge_above`` 0.9 (cosines after whitening; ``bench/memory_routing.py`` measures where
the edit prompts, their paraphrases, their neighbours and unrelated text fall: at 0.6 on the
bundled model 0.99 / 0.79 / 0.03 / 0.00), plus MEMIT's target options.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from excise import sidememory
from excise.arch import block_part
from excise.data.encode import IGNORE, lead_ids
from excise.editing import EDITORS, EditorSpec, EditOutcome
from excise.editing.layers import check_layers, default_layers
from excise.editing.locate import Row, out_in, read_at
from excise.editing.stats import DEFAULT_TOKENS, SAMPLE, read_corpus
from excise.editing.targets import TargetConfig, optimise_deltas, request_rows, subject_groups
from excise.errors import ConfigError

SINK_TEXTS, SINK_TOKENS = 64, 8  # text openings read for the first token's key


@dataclass
class MemoryConfig(TargetConfig):
    layer: int | None = None  # default: the last layer MEMIT edits (excise.editing.layers)
    threshold: float = 0.6  # whitened cosine at which a token's key routes to an entry
    merge_above: float = 0.9  # a new key this close to an entry adds its shift to the entry's
    stats_tokens: int = DEFAULT_TOKENS  # text tokens for the key statistics (the whitening)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"threshold is a cosine in (0, 1], got {self.threshold}")
        if not self.threshold <= self.merge_above <= 1.0:
            raise ConfigError(
                f"merge_above must be in [threshold, 1] = [{self.threshold}, 1], "
                f"got {self.merge_above}"
            )

    def layers_for(self, model) -> list[int]:
        chosen = self.layer if self.layer is not None else default_layers(model)[-1]
        return check_layers(model, [chosen])


def model_memory(ctx, layer: int) -> sidememory.SideMemory:
    """The model's side memory (created, empty, on first use), with this run's threshold."""
    found = sidememory.find(ctx.model)
    if found is not None:
        if found[0] != layer:
            raise ConfigError(
                f"the model's side memory is on layer {found[0]}; edit it with layer={found[0]}"
            )
        memory = found[1]
    else:
        whiten = sidememory.whitening(ctx.stats.covariance(layer))
        hidden = out_in(block_part(ctx.model, layer, "mlp_out")).shape[0]
        memory = sidememory.SideMemory(whiten, hidden, ctx.config.threshold)
        memory.sink.copy_(sink_direction(ctx, layer, memory))
        sidememory.attach(ctx.model, layer, memory)
    memory.threshold.fill_(ctx.config.threshold)
    return memory


def sink_direction(ctx, layer: int, memory: sidememory.SideMemory) -> torch.Tensor:
    """The whitened unit direction of the first token's key (the attention sink's), averaged
    over openings of the shipped text sample."""
    starts = lead_ids(ctx.tokenizer)  # as every prompt starts (a BOS token, where there is one)
    rows = []
    for text in read_corpus(SAMPLE)[:SINK_TEXTS]:
        ids = starts + ctx.tokenizer(text, add_special_tokens=False)["input_ids"][:SINK_TOKENS]
        rows.append(Row(tuple(ids), (IGNORE,) * len(ids), 0, 0))
    keys = read_at(ctx.model, rows, [layer], ctx.pad_id, what="key")[layer]
    return torch.nn.functional.normalize(memory.directions(keys).mean(0), dim=0)


def store(ctx, memory, layer: int, requests, shifts: torch.Tensor) -> list[int]:
    """Write each request's shift under its keys; returns each request's entry (-1: none).

    Every context's key is stored (the edit prompt's own among them; their mean is a
    compromise the prompt itself can fall under the threshold of); same-subject requests
    share one shift and one entry (``shared_subject``)."""
    rows = request_rows(ctx.tokenizer, requests, ctx.prefixes, ctx.template, target=False)
    keys = read_at(ctx.model, rows, [layer], ctx.pad_id, what="key")[layer]
    group = torch.tensor(subject_groups(requests, ctx.config.shared_subject))
    first = [int((group == g).nonzero()[0]) for g in range(int(group.max()) + 1)]
    row_group = group[torch.tensor([row.owner for row in rows])]
    entries = memory.add(keys, row_group, shifts[first], ctx.config.merge_above)
    return [entries[g] for g in group.tolist()]


def apply(ctx, requests) -> EditOutcome:
    config: MemoryConfig = ctx.config
    layer = config.layers_for(ctx.model)[0]
    memory = model_memory(ctx, layer)
    shifts, _, nll = optimise_deltas(
        ctx.model,
        ctx.tokenizer,
        requests,
        layer,
        config,
        template=ctx.template,
        prefixes=ctx.prefixes,
    )
    entries = store(ctx, memory, layer, requests, shifts)
    plain = request_rows(ctx.tokenizer, requests, [""], ctx.template, target=False)
    refused = []
    for index, request in enumerate(requests):
        if entries[index] < 0:
            reason = "no context gives the subject a routable key (only the first token holds it)"
        elif plain[index].position == 0:
            reason = (
                "partly: the subject is the prompt's first token, whose key is the attention "
                "sink's: stored for the prefixed contexts only, the prompt as given is not routed"
            )
        else:
            continue
        refused.append({"case_id": request.case_id, "reason": reason})
    return EditOutcome(nll, refused)


SPEC = EDITORS.register(
    EditorSpec(
        "memory",
        "edits in a key-routed side memory, weights unchanged (GRACE/WISE-style)",
        MemoryConfig,
        apply,
    )
)
