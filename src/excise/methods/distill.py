"""Unlearn, noise, distill (``distill``): UNDO, Lee et al. 2025, "Distillation robustifies unlearning".

1. Unlearn with ``init_method`` (through the one training loop); the result is the teacher.
2. Cache the teacher's next-token distributions on the distillation data (retain set; with
   ``include_forget`` the forget prompts too): the top ``top_k`` log-probabilities at every
   position plus the mass of the rest, so no second model is held through training. With
   ``text_passages`` > 0 the first passages of the shipped text sample (ordinary text sampled
   from the bundled model, cut to ``text_tokens``) are distilled too, one batch per step: the
   retain set alone is too narrow to bring back general abilities after a strong perturbation.
3. Perturb the weights towards a fresh initialisation: W <- (1 - alpha) W + alpha * beta * N, N a
   newly initialised copy of the architecture (seeded). ``alpha`` is the compute/robustness knob:
   0 starts from the teacher itself; 1 is distillation into a fresh model. With
   ``perturb_fraction`` < 1 only that share of the weight entries is perturbed: those most
   specific to the forget set, by the ratio of their diagonal Fisher information (summed squared
   NLL gradients) on the forget and the retain set of the model before unlearning, as selective
   synaptic dampening ranks them (Foster et al. 2024). With ``mask_text_passages`` > 0 the Fisher
   of that many text passages joins the retain Fisher in the denominator (each averaged per
   batch), so entries that ordinary text relies on are not chosen: on chem-symbols the 0.03% mask
   is almost all input-embedding entries of chemistry words, and ranked against text it keeps
   perturbation-only retain at 0.97 instead of 0.92 (bench/README.md).
4. Train the perturbed student to match the teacher: KL(teacher || student) per position over the
   partition {teacher's top-k tokens, everything else} (exact for the kept tokens, a lower bound
   of the full KL).

``steps`` must be >= 1: with none nothing is distilled, and the perturbation alone (with a
``perturb_fraction`` mask, token surgery on chem-symbols) is the ``fisher_noise`` method.

Hyper-parameters: ``init_method`` ("npo"; None distills the model as given), ``init_options``,
``init_train`` (overrides of the init method's tuned training defaults), ``alpha`` (0.1),
``noise_scale`` beta (1.0), ``top_k`` (64), ``include_forget`` (False), ``text_passages`` (0),
``text_tokens`` (64), ``perturb_fraction`` (1.0), ``mask_text_passages`` (0), ``seed`` (0).
Training defaults: 100 steps, lr 1e-4 (measured on the bundled model: bench/README.md).

A second ``prepare`` on the same model before ``finish`` (a resume in the same process) keeps the
teacher it cached and does not unlearn or perturb again (:mod:`excise.methods.warmstart`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from excise.data.encode import Example, collate, encode_text
from excise.errors import ConfigError
from excise.methods import MethodSpec, register
from excise.methods.warmstart import check_init_method, forget_mark, recall, remember, unlearn_first
from excise.scoring import nll
from excise.train import batch_indices


@dataclass
class DistillConfig:
    init_method: str | None = "npo"
    init_options: dict[str, Any] = field(default_factory=dict)
    init_train: dict[str, Any] = field(default_factory=dict)
    alpha: float = 0.1
    noise_scale: float = 1.0
    top_k: int = 64
    include_forget: bool = False
    text_passages: int = 0
    text_tokens: int = 64
    perturb_fraction: float = 1.0
    mask_text_passages: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"distill alpha must be within [0, 1], got {self.alpha}")
        if min(self.noise_scale, self.text_passages, self.mask_text_passages) < 0 or self.top_k < 1:
            raise ConfigError(
                "distill noise_scale, text_passages, mask_text_passages must be >= 0 and top_k >= 1"
            )
        if not 0 < self.perturb_fraction <= 1:
            raise ConfigError("distill perturb_fraction must be within (0, 1]")
        if self.text_tokens < 2:
            raise ConfigError("distill text_tokens must be >= 2")
        check_init_method(self.init_method)


def text_examples(tokenizer, count: int, max_tokens: int) -> list[Example]:
    """The first ``count`` passages of the shipped text sample, cut to ``max_tokens`` tokens."""
    import excise.data

    path = Path(excise.data.__file__).parent / "builtin" / "text_sample" / "sample.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()[:count]
    texts = [json.loads(line)["text"] for line in lines]
    return [encode_text(tokenizer, text, i, max_length=max_tokens) for i, text in enumerate(texts)]


@torch.no_grad()
def teacher_table(ctx, examples, top_k: int) -> dict[int, tuple[torch.Tensor, ...]]:
    """{index: (top-k log-probs (pos, k), their token ids (pos, k), log mass of the rest (pos,))}."""
    model, table = ctx.unwrapped, {}
    model.eval()
    for start in range(0, len(examples), 32):
        chunk = examples[start : start + 32]
        batch = ctx.to_device(collate(chunk, ctx.pad_id))
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)  # (batch, seq, vocab)
        values, ids = logprobs.topk(min(top_k, logprobs.shape[-1]), dim=-1)
        rest = torch.log1p(-values.exp().sum(-1).clamp(max=1 - 1e-6))
        for row, example in enumerate(chunk):
            n = len(example.input_ids)
            table[example.index] = (values[row, :n].cpu(), ids[row, :n].cpu(), rest[row, :n].cpu())
    model.train()
    return table


def fisher(ctx, examples, cap: int = 256) -> dict[str, torch.Tensor]:
    """Squared NLL gradients per weight entry, averaged over batches of 16 of ``examples``."""
    model, total = ctx.unwrapped, {}
    starts = range(0, min(len(examples), cap), 16)
    for start in starts:
        batch = ctx.to_device(collate(examples[start : start + 16], ctx.pad_id))
        model.zero_grad(set_to_none=True)
        nll(model, batch).backward()
        for name, param in model.named_parameters():
            if param.grad is not None:
                square = param.grad.detach().float() ** 2
                total[name] = total[name] + square if name in total else square
    model.zero_grad(set_to_none=True)
    return {name: square / len(starts) for name, square in total.items()}


def forget_specific(ctx, fraction: float, texts: list[Example] = ()) -> dict[str, torch.Tensor]:
    """Boolean masks of the ``fraction`` of weight entries with the highest ratio of forget Fisher
    to retain Fisher (plus the Fisher of ``texts``, when given)."""
    forget, retain = fisher(ctx, ctx.forget), fisher(ctx, ctx.retain)
    if texts:
        text = fisher(ctx, texts)
        retain = {n: r + text[n] if n in text else r for n, r in retain.items()}
    floor = 1e-6 * float(torch.stack([r.mean() for r in retain.values()]).mean())
    ratio = {n: f / (retain[n] + floor) for n, f in forget.items()}
    flat = torch.cat([r.flatten() for r in ratio.values()])
    sample = flat[:: max(1, flat.numel() // 4_000_000)]
    cut = torch.quantile(sample, 1 - fraction)
    return {n: r >= cut for n, r in ratio.items()}


@torch.no_grad()
def perturb(
    model: torch.nn.Module,
    alpha: float,
    noise_scale: float,
    seed: int,
    masks: dict[str, torch.Tensor] | None = None,
) -> None:
    """W <- (1 - alpha) W + alpha * noise_scale * N, N a freshly initialised copy (seeded);
    with ``masks``, only the entries they select."""
    from transformers import AutoModelForCausalLM

    if alpha == 0:
        return
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    dtype = next(model.parameters()).dtype
    fresh = AutoModelForCausalLM.from_config(model.config, dtype=dtype).state_dict()
    torch.random.set_rng_state(state)
    for name, param in model.named_parameters():
        moved = (1 - alpha) * param + alpha * noise_scale * fresh[name].to(param.device)
        if masks is None:
            param.copy_(moved)
        elif name in masks:
            param.copy_(torch.where(masks[name], moved, param))


def kl_to_teacher(logits: torch.Tensor, batch, table, rows: list[int]) -> torch.Tensor:
    """Mean over attended positions of KL(teacher || student) on {top-k tokens, the rest}."""
    width = logits.shape[1]
    k = next(iter(table.values()))[0].shape[-1]
    values = logits.new_full((len(rows), width, k), -30.0)
    ids = torch.zeros((len(rows), width, k), dtype=torch.long, device=logits.device)
    rest = logits.new_full((len(rows), width), -30.0)
    for row, index in enumerate(rows):
        top, token, tail = table[index]
        values[row, : len(top)] = top.to(logits.device)
        ids[row, : len(top)] = token.to(logits.device)
        rest[row, : len(top)] = tail.to(logits.device)
    student = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids)  # (batch, seq, k)
    student_rest = torch.log1p(-student.exp().sum(-1).clamp(max=1 - 1e-6))
    kl = (values.exp() * (values - student)).sum(-1) + rest.exp() * (rest - student_rest)
    mask = batch["attention_mask"].to(kl.dtype)
    return (kl * mask).sum() / mask.sum().clamp(min=1)


def prepare(ctx) -> None:
    model, config = ctx.unwrapped, ctx.config
    if ctx.state.get("steps", 1) < 1:
        raise ConfigError(
            "distill needs steps >= 1: with 0 steps nothing is distilled and only the noise "
            "is left; that is the fisher_noise method (--method fisher_noise)"
        )
    for param in model.parameters():
        param.requires_grad_(True)
    if (earlier := recall(model, "distill")) is not None:
        ctx.state.update(earlier)
        return
    masks = None
    if config.perturb_fraction < 1:  # ranked on the model that still knows the forget set
        count = config.mask_text_passages
        texts = text_examples(ctx.tokenizer, count, config.text_tokens) if count else []
        masks = forget_specific(ctx, config.perturb_fraction, texts)
    if config.init_method:
        unlearn_first(ctx, config.init_method, config.init_options, config.init_train)
    ctx.state["retain_teacher"] = teacher_table(ctx, ctx.retain, config.top_k)
    if config.include_forget:
        ctx.state["forget_teacher"] = teacher_table(ctx, ctx.forget, config.top_k)
    if config.text_passages:
        texts = text_examples(ctx.tokenizer, config.text_passages, config.text_tokens)
        ctx.state["texts"] = texts
        ctx.state["text_teacher"] = teacher_table(ctx, texts, config.top_k)
    perturb(model, config.alpha, config.noise_scale, config.seed, masks)
    remember(model, "distill", dict(ctx.state))


def _student_kl(ctx, batch, table) -> torch.Tensor:
    logits = ctx.model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).logits
    return kl_to_teacher(logits, batch, table, batch["index"].tolist())


def loss(ctx, batch):
    total = _student_kl(ctx, batch["retain"], ctx.state["retain_teacher"])
    terms = {"kl_retain": float(total.detach())}
    if ctx.config.include_forget:
        forget_kl = _student_kl(ctx, batch["forget"], ctx.state["forget_teacher"])
        terms["kl_forget"] = float(forget_kl.detach())
        total = total + forget_kl
    if ctx.config.text_passages:
        texts = ctx.state["texts"]
        size = len(batch["retain"]["index"])
        rows = batch_indices(len(texts), size, ctx.state.get("step", 0), ctx.config.seed + 3)
        text_batch = ctx.to_device(collate([texts[i] for i in rows], ctx.pad_id))
        text_kl = _student_kl(ctx, text_batch, ctx.state["text_teacher"])
        terms["kl_text"] = float(text_kl.detach())
        total = total + text_kl
    return total, terms


SPEC = register(
    MethodSpec(
        "distill",
        "UNDO: unlearn, perturb towards a fresh init by alpha, distill the unlearned outputs back",
        DistillConfig,
        prepare,
        loss,
        train_defaults={"steps": 100, "lr": 1e-4},
        finish=forget_mark,
    )
)
