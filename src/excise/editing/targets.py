"""The value an edit should write: a residual-stream shift at the subject that makes the model
say the new target (Meng et al. 2022, 2023: the "v*" of ROME, the "z" of MEMIT).

For every request a vector ``delta`` is added to the output of one decoder block at the subject's
last token, in the plain prompt and under a few generated prefixes, and optimised with Adam to
minimise the new target's negative log-likelihood, plus a KL term keeping the model's view of the
subject ("{subject} is a") and a decay on ``|delta|``; its norm is clamped to a multiple of the
original activation's. Requests are independent, so all of them are optimised in one batch
(Adam is element-wise: this equals optimising each alone).

``most_probable`` (ENCORE's most-probable early stopping, Gupta et al. 2025): a request stops
being optimised (its shift is frozen) once every token of its target is the argmax in every
context, instead of pushing on to ``early_stop`` NLL; over-optimised shifts are what sequential
edits pile up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from excise.arch import decoder_layers
from excise.editing.locate import Row, batch_rows, read_at, shifted, subject_row
from excise.editing.requests import EditRequest, answer
from excise.errors import ConfigError
from excise.scoring import forward_stats


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

    def __post_init__(self) -> None:
        if self.v_steps < 1 or self.v_lr <= 0 or self.clamp_norm <= 0 or self.chunk < 1:
            raise ConfigError("v_steps and chunk must be >= 1, v_lr and clamp_norm > 0")
        if self.v_weight_decay < 0 or self.kl_factor < 0 or self.prefixes < 0:
            raise ConfigError("v_weight_decay, kl_factor and prefixes must be >= 0")


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
    """Per request: the shift ``delta`` at block ``layer``'s output, the original activation
    there (plain prompt), and the final target NLL. Shapes (n, hidden), (n, hidden), n."""
    deltas, bases, losses = [], [], []
    for start in range(0, len(requests), config.chunk):
        chunk = requests[start : start + config.chunk]
        d, h, nll = _optimise_chunk(model, tokenizer, chunk, layer, config, template, prefixes)
        deltas.append(d)
        bases.append(h)
        losses.extend(nll)
    return torch.cat(deltas), torch.cat(bases), losses


def _optimise_chunk(model, tokenizer, requests, layer, config, template, prefixes):
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    block = decoder_layers(model)[layer]
    rows = request_rows(tokenizer, requests, prefixes, template, target=True)
    kl_rows = [
        subject_row(tokenizer, "{} is a", r.subject, template=template, owner=i)
        for i, r in enumerate(requests)
    ]
    plain = request_rows(tokenizer, requests, [""], template, target=False)
    base = read_at(model, plain, [layer], pad, what="residual")[layer].to(device)
    batch = batch_rows(rows, pad, device)
    kl_batch = batch_rows(kl_rows, pad, device)
    owner = torch.tensor([r.owner for r in rows], device=device)
    n = len(requests)
    was_training = model.training
    model.eval()
    grads = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with torch.no_grad():
            kl_reference = _last_logprobs(model, kl_batch)
        delta = torch.zeros(n, base.shape[1], device=device, requires_grad=True)
        optimiser = torch.optim.Adam([delta], lr=config.v_lr)
        limit = config.clamp_norm * base.norm(dim=1)
        per_request = torch.zeros(n)
        done = torch.zeros(n, dtype=torch.bool, device=device)  # MPES: frozen requests
        for _step in range(config.v_steps):
            with shifted(block, batch["position"], delta[owner]):
                stats = forward_stats(model, batch)  # unembeds the target tokens only
            row_nll = -stats.logprob / stats.tokens.clamp(min=1)
            counts = torch.bincount(owner, minlength=n).clamp(min=1)
            nll = torch.zeros(n, device=device).index_add(0, owner, row_nll) / counts
            per_request = nll.detach().cpu()
            if config.most_probable:
                wrong = torch.zeros(n, device=device).index_add(0, owner, (~stats.correct).float())
                done = done | (wrong == 0)
                if bool(done.all()):
                    break
            elif bool((per_request < config.early_stop).all()):
                break
            kept = delta.detach()[done].clone()
            with shifted(block, kl_batch["position"], delta):
                edited = _last_logprobs(model, kl_batch)
            kl = F.kl_div(edited, kl_reference, log_target=True, reduction="none").sum(1)
            decay = config.v_weight_decay * delta.pow(2).sum(1) / base.pow(2).sum(1)
            loss = (nll + config.kl_factor * kl + decay).sum()
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
    return delta.detach().cpu(), base.cpu(), per_request.tolist()
