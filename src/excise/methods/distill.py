"""Unlearn, noise, distill (``distill``): UNDO, Lee et al. 2025, "Distillation robustifies unlearning".

1. Unlearn with ``init_method`` (through the one training loop); the result is the teacher.
2. Cache the teacher's next-token distributions on the distillation data (retain set; with
   ``include_forget`` the forget prompts too): the top ``top_k`` log-probabilities at every
   position plus the mass of the rest, so no second model is held through training.
3. Perturb the weights towards a fresh initialisation: W <- (1 - alpha) W + alpha * beta * N, N a
   newly initialised copy of the architecture (seeded). ``alpha`` is the compute/robustness knob:
   0 starts from the teacher itself; 1 is distillation into a fresh model.
4. Train the perturbed student to match the teacher: KL(teacher || student) per position over the
   partition {teacher's top-k tokens, everything else} (exact for the kept tokens, a lower bound
   of the full KL).

Hyper-parameters: ``init_method`` ("npo"; None distills the model as given), ``init_options``,
``init_train`` (overrides of the init method's tuned training defaults), ``alpha`` (0.3),
``noise_scale`` beta (1.0), ``top_k`` (64), ``include_forget`` (False), ``seed`` (0).
Training defaults: 200 steps, lr 1e-4.

A second ``prepare`` on the same model before ``finish`` (a resume in the same process) keeps the
teacher it cached and does not unlearn or perturb again; see :func:`remember` and :func:`recall`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from excise.data.encode import collate
from excise.errors import ConfigError
from excise.methods import MethodSpec, register

MARK = "_excise_prepared"  # attribute on the model: (method, cached state) until finish


@dataclass
class DistillConfig:
    init_method: str | None = "npo"
    init_options: dict[str, Any] = field(default_factory=dict)
    init_train: dict[str, Any] = field(default_factory=dict)
    alpha: float = 0.3
    noise_scale: float = 1.0
    top_k: int = 64
    include_forget: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"distill alpha must be within [0, 1], got {self.alpha}")
        if self.noise_scale < 0 or self.top_k < 1:
            raise ConfigError("distill noise_scale must be >= 0 and top_k >= 1")
        check_init_method(self.init_method)


def check_init_method(name: str | None) -> None:
    if name in ("tar", "distill", "finetune"):
        raise ConfigError(f"init_method {name!r} cannot start a removal; use ga, npo, rmu, ...")


def remember(model: torch.nn.Module, method: str, state: dict[str, Any]) -> None:
    setattr(model, MARK, (method, state))


def recall(model: torch.nn.Module, method: str) -> dict[str, Any] | None:
    """The state an earlier ``prepare`` of ``method`` left on this model, if training has not finished."""
    mark = getattr(model, MARK, None)
    return mark[1] if mark is not None and mark[0] == method else None


def forget_mark(ctx) -> None:
    if hasattr(ctx.unwrapped, MARK):
        delattr(ctx.unwrapped, MARK)


def unlearn_first(ctx, method: str, options: dict[str, Any], train_options: dict[str, Any]):
    """Run ``method`` on ``ctx``'s model in place through the training loop (a warm start)."""
    from excise.methods import get_method, make_config
    from excise.train import TrainConfig, train

    spec = get_method(method)
    settings = make_config(TrainConfig, {**spec.train_defaults, "progress": False, **train_options})
    log = train(
        ctx.unwrapped,
        ctx.tokenizer,
        spec,
        make_config(spec.config_cls, options),
        forget=ctx.forget,
        retain=ctx.retain,
        forget_records=ctx.forget_records,
        template=ctx.template,
        config=settings,
        uses_retain=spec.uses_retain,
    )
    ctx.unwrapped.train()  # train() leaves the model in eval mode
    return log


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


@torch.no_grad()
def perturb(model: torch.nn.Module, alpha: float, noise_scale: float, seed: int) -> None:
    """W <- (1 - alpha) W + alpha * noise_scale * N, N a freshly initialised copy (seeded)."""
    from transformers import AutoModelForCausalLM

    if alpha == 0:
        return
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    dtype = next(model.parameters()).dtype
    fresh = AutoModelForCausalLM.from_config(model.config, dtype=dtype).state_dict()
    torch.random.set_rng_state(state)
    for name, param in model.named_parameters():
        noise = fresh[name].to(param.device)
        param.mul_(1 - alpha).add_(noise, alpha=alpha * noise_scale)


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
    for param in model.parameters():
        param.requires_grad_(True)
    if (earlier := recall(model, "distill")) is not None:
        ctx.state.update(earlier)
        return
    if config.init_method:
        unlearn_first(ctx, config.init_method, config.init_options, config.init_train)
    ctx.state["retain_teacher"] = teacher_table(ctx, ctx.retain, config.top_k)
    if config.include_forget:
        ctx.state["forget_teacher"] = teacher_table(ctx, ctx.forget, config.top_k)
    perturb(model, config.alpha, config.noise_scale, config.seed)
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
    return total, terms


SPEC = register(
    MethodSpec(
        "distill",
        "UNDO: unlearn, perturb towards a fresh init by alpha, distill the unlearned outputs back",
        DistillConfig,
        prepare,
        loss,
        train_defaults={"steps": 200, "lr": 1e-4},
        finish=forget_mark,
    )
)
