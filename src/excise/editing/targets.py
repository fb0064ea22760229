"""The value an edit should write: a residual-stream shift at the subject that makes the model
say the new target (Meng et al. 2022, 2023: the "v*" of ROME, the "z" of MEMIT).

For every request a vector ``delta`` is added to the output of one decoder block at the subject's
last token (under a write norm, Gemma 2/3 and OLMo 2: to its MLP's output before the norm, the
only shift an edit of that MLP can make), in the plain prompt and under a few generated
prefixes, and optimised with Adam to minimise the new target's negative log-likelihood, plus a
KL term keeping the model's view of the subject ("{subject} is a") and a decay on ``|delta|``;
its norm is clamped to a multiple of the original activation's. Shifts are independent, so all
of them are optimised in one batch (Adam is element-wise: this equals optimising each alone).

``shared_subject`` (default on): requests with the same subject (a subject's ripple implied
requests among them, :mod:`excise.editing.ripple`) get ONE shift, optimised on all of their
prompts and targets together (the sum of their NLLs; one KL and decay term). The closed forms
key an edit on the subject's last token, so same-subject requests have (nearly) one key: given
separate shifts, least squares writes roughly their average, and each request gets part of its
own change (they dilute each other). A shared shift is one that serves them all: the words
after the subject read each answer from it. A prompt that ends at the subject has no such
words (the answer is read at the subject's token), so its request keeps its own shift.

``most_probable`` (ENCORE's most-probable early stopping, Gupta et al. 2025): a shift stops
being optimised (it is frozen) once every token of each of its targets is the argmax in every
context, instead of pushing on to ``early_stop`` NLL; over-optimised shifts are what sequential
edits pile up. ``stop_margin`` (nats, with ``most_probable``; 0: the bare argmax) asks for more:
every target token's log-probability above the runner-up's by this much, so that the written
edit survives the next batches' updates (a bare argmax is flipped by them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from excise.arch import block_part, decoder_layers, write_norm
from excise.data.encode import IGNORE
from excise.editing.locate import Row, batch_rows, read_at, shifted, subject_row
from excise.editing.requests import EditRequest, answer
from excise.errors import ConfigError
from excise.scoring import SequenceStats, forward_stats, sequence_stats


@dataclass
class TargetConfig:
    """How hard to push: optimisation of the residual shift written by the edit."""

    v_steps: int = 25
    v_lr: float = 0.5
    v_weight_decay: float = 0.5  # on |delta|^2 / |h|^2
    kl_factor: float = 0.0625
    clamp_norm: float = 4.0  # |delta| <= clamp_norm * |h|
    early_stop: float = 0.05  # mean NLL per target token
    prefixes: int = 2  # text openings the edit must hold under (0: plain prompt only; MEMIT used 5)
    chunk: int = 32  # requests optimised per batch (memory bound)
    most_probable: bool = False  # stop each request once its target is the argmax (MPES)
    stop_margin: float = 0.0  # with most_probable: target above the runner-up by this (nats)
    shared_subject: bool = True  # one shift per subject, for all of its requests

    def __post_init__(self) -> None:
        if self.v_steps < 1 or self.v_lr <= 0 or self.clamp_norm <= 0 or self.chunk < 1:
            raise ConfigError("v_steps and chunk must be >= 1, v_lr and clamp_norm > 0")
        if self.v_weight_decay < 0 or self.kl_factor < 0 or self.prefixes < 0:
            raise ConfigError("v_weight_decay, kl_factor and prefixes must be >= 0")
        if not self.stop_margin >= 0:
            raise ConfigError(f"stop_margin must be >= 0 (nats), got {self.stop_margin}")


def context_prefixes(count: int, words: int = 8) -> list[str]:
    """``""`` plus ``count`` short openings of ordinary text (from the shipped text sample),
    so an edit holds when the fact is asked mid-text, not only at the start."""
    from excise.editing.stats import SAMPLE, read_corpus

    if count == 0:
        return [""]
    texts = read_corpus(SAMPLE)  # general text: an encyclopedic opening would name entities
    prefixes = [""]
    for text in texts:
        opening = text.replace("{", " ").replace("}", " ").split()[:words]
        if len(opening) == words and all(w.isascii() and len(w) < 15 for w in opening):
            prefixes.append(" ".join(opening).rstrip(".,;:") + ". ")
        if len(prefixes) > count:
            break
    return prefixes


def request_rows(
    tokenizer,
    requests: Sequence[EditRequest],
    prefixes: Sequence[str],
    template: str,
    *,
    target: bool,
) -> list[Row]:
    """Each request under each prefix, with ``target_new`` appended when ``target``."""
    return [
        subject_row(
            tokenizer,
            r.prompt,
            r.subject,
            prefix=prefix,
            target=answer(r.target_new, template) if target else None,
            template=template,
            owner=i,
        )
        for i, r in enumerate(requests)
        for prefix in prefixes
    ]


def subject_groups(requests: Sequence[EditRequest], shared: bool = True) -> list[int]:
    """The shift each request uses, numbered in order of first appearance: with ``shared``,
    requests with the same subject share one, except those whose prompt ends at the subject
    (there the subject's last token is where the answer is read, so one shift cannot give
    different answers; each keeps its own)."""
    first: dict[str, int] = {}
    groups = []
    for index, request in enumerate(requests):
        alone = not shared or request.prompt.rstrip().endswith("{}")
        key = f"#{index}" if alone else request.subject.strip()
        groups.append(first.setdefault(key, len(first)))
    return groups


def _margin_stats(model, batch) -> tuple[SequenceStats, torch.Tensor]:
    """The target statistics and, per row, the smallest lead (nats) of a target token's
    log-probability over the best other token's (full logits: the runner-up needs them)."""
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).logits
    labels = batch["labels"]
    stats = sequence_stats(logits, labels)
    mask = labels[:, 1:] != IGNORE  # position t predicts token t + 1
    picked = logits[:, :-1][mask].detach().float()  # (targets, vocab)
    wanted = labels[:, 1:][mask].unsqueeze(1)
    lead = picked.gather(1, wanted).squeeze(1) - picked.scatter(1, wanted, -torch.inf).amax(1)
    rows = mask.nonzero(as_tuple=True)[0]
    least = torch.full((len(labels),), torch.inf, device=lead.device)
    return stats, least.scatter_reduce(0, rows, lead, "amin")


@torch.no_grad()
def target_margins(
    model, tokenizer, requests: Sequence[EditRequest], template: str = "raw"
) -> list[float]:
    """Per request: the smallest lead (nats) of its target tokens over the runner-up, plain
    prompt, teacher forced (> 0: the target is the argmax)."""
    device = next(model.parameters()).device
    rows = request_rows(tokenizer, requests, [""], template, target=True)
    was_training = model.training
    model.eval()
    try:
        _, lead = _margin_stats(model, batch_rows(rows, tokenizer.pad_token_id, device))
    finally:
        model.train(was_training)
    return lead.cpu().tolist()


def _last_logprobs(model, batch) -> torch.Tensor:
    out = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    )
    last = batch["attention_mask"].sum(1) - 1
    return torch.log_softmax(out.logits[torch.arange(len(last)), last].float(), dim=-1)


def optimise_deltas(
    model,
    tokenizer,
    requests: Sequence[EditRequest],
    layer: int,
    config: TargetConfig,
    *,
    template: str = "raw",
    prefixes: Sequence[str] = ("",),
) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Per request: the shift ``delta`` of what block ``layer``'s MLP writes (one per subject
    with ``shared_subject``: same-subject requests in a chunk get the same row), the original
    activation it shifts (plain prompt), and the final target NLL. Shapes (n, hidden) twice, n.

    The shift is added where the MLP's write can make it: at the block's output for families
    that add the MLP's output to the stream as it is; under a write norm (Gemma 2/3, OLMo 2:
    :func:`excise.arch.write_norm`) at the MLP's output before the norm. A stream shift there
    is not one any change of the MLP can write: on gemma-3-270m the shift found in the stream
    (|delta| ~200 of |h| ~4900) was met only by writes 3-5x its size in other directions, and a
    shift met to 6% of its size (a MEMIT solve) left every target 3-13 nats short."""
    deltas, bases, losses, order = [], [], [], []
    for index in _chunks(requests, config):
        chunk = [requests[i] for i in index]
        d, h, nll = _optimise_chunk(model, tokenizer, chunk, layer, config, template, prefixes)
        deltas.append(d)
        bases.append(h)
        losses.extend(nll)
        order.extend(index)
    back = torch.tensor(order).argsort()  # chunks may regroup requests: back to their order
    return torch.cat(deltas)[back], torch.cat(bases)[back], [losses[i] for i in back.tolist()]


def _chunks(requests: Sequence[EditRequest], config: TargetConfig) -> list[list[int]]:
    """Indexes of the requests optimised together: consecutive runs of ``config.chunk``; with
    ``shared_subject`` a subject's requests all join the chunk of its first one (so they share
    one shift; a subject with more than ``chunk`` requests gets a larger chunk)."""
    if not config.shared_subject:
        return [
            list(range(i, min(i + config.chunk, len(requests))))
            for i in range(0, len(requests), config.chunk)
        ]
    members: dict[int, list[int]] = {}
    for index, group in enumerate(subject_groups(requests)):
        members.setdefault(group, []).append(index)
    chunks: list[list[int]] = [[]]
    for group in sorted(members):
        if chunks[-1] and len(chunks[-1]) + len(members[group]) > config.chunk:
            chunks.append([])
        chunks[-1].extend(members[group])
    return chunks


def _optimise_chunk(model, tokenizer, requests, layer, config, template, prefixes):
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    group = torch.tensor(subject_groups(requests, config.shared_subject), device=device)
    shifts = int(group.max()) + 1
    first = [int((group == g).nonzero()[0]) for g in range(shifts)]  # a request of each shift
    rows = request_rows(tokenizer, requests, prefixes, template, target=True)
    kl_rows = [
        subject_row(tokenizer, "{} is a", requests[i].subject, template=template, owner=g)
        for g, i in enumerate(first)
    ]
    plain = request_rows(tokenizer, requests, [""], template, target=False)
    norm = write_norm(model, layer)
    if norm is None:  # the shift's module, and the activation it is added to
        where = decoder_layers(model)[layer]
        start = read_at(model, plain, [layer], pad, what="residual")[layer].to(device)
    else:  # shift the MLP's output under its norm: only such a shift is writable
        where = block_part(model, layer, "mlp_out")
        keys = read_at(model, plain, [layer], pad, what="key")[layer].to(device)
        with torch.no_grad():
            start = where(keys.to(next(where.parameters()).dtype)).float()
    batch = batch_rows(rows, pad, device)
    kl_batch = batch_rows(kl_rows, pad, device)
    owner = torch.tensor([r.owner for r in rows], device=device)
    n = len(requests)
    size = torch.zeros(shifts, device=device).index_add(0, group, torch.ones(n, device=device))
    # per shift: the mean squared norm of its requests' original activations
    scale = torch.zeros(shifts, device=device).index_add(0, group, start.pow(2).sum(1)) / size
    # Adam steps every coordinate by ~lr: v_lr is in the stream's units; under a write norm the
    # MLP output's coordinates are ~100x smaller (gemma-3-270m: rms 0.13), so the step is v_lr
    # times their rms (v_lr x |y| / |h| left the targets at NLL 3-15 after 25 steps)
    lr = config.v_lr * (1.0 if norm is None else float(start.pow(2).mean().sqrt()))
    margin = config.most_probable and config.stop_margin > 0
    was_training = model.training
    model.eval()
    grads = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with torch.no_grad():
            kl_reference = _last_logprobs(model, kl_batch)
        delta = torch.zeros(shifts, start.shape[1], device=device, requires_grad=True)
        optimiser = torch.optim.Adam([delta], lr=lr)
        limit = config.clamp_norm * scale.sqrt()
        per_request = torch.zeros(n)
        done = torch.zeros(shifts, dtype=torch.bool, device=device)  # MPES: frozen shifts
        for _step in range(config.v_steps):
            with shifted(where, batch["position"], delta[group[owner]]):
                if margin:
                    stats, lead = _margin_stats(model, batch)
                    ok = lead >= config.stop_margin
                else:  # unembeds the target tokens only
                    stats = forward_stats(model, batch)
                    ok = stats.correct
            row_nll = -stats.logprob / stats.tokens.clamp(min=1)
            counts = torch.bincount(owner, minlength=n).clamp(min=1)
            nll = torch.zeros(n, device=device).index_add(0, owner, row_nll) / counts
            per_request = nll.detach().cpu()
            if config.most_probable:
                wrong = torch.zeros(shifts, device=device).index_add(0, group[owner], (~ok).float())
                done = done | (wrong == 0)
                if bool(done.all()):
                    break
            elif bool((per_request < config.early_stop).all()):
                break
            kept = delta.detach()[done].clone()
            with shifted(where, kl_batch["position"], delta):
                edited = _last_logprobs(model, kl_batch)
            kl = F.kl_div(edited, kl_reference, log_target=True, reduction="none").sum(1)
            decay = config.v_weight_decay * delta.pow(2).sum(1) / scale
            loss = nll.sum() + (config.kl_factor * kl + decay).sum()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            with torch.no_grad():
                norms = delta.norm(dim=1).clamp(min=1e-12)
                delta.mul_((limit / norms).clamp(max=1.0).unsqueeze(1))
                delta[done] = kept  # Adam's momentum would move a finished request on
    finally:
        for p, g in zip(model.parameters(), grads, strict=True):
            p.requires_grad_(g)
        model.train(was_training)
    return delta.detach()[group].cpu(), start.cpu(), per_request.tolist()
