"""Fisher-masked noise (``fisher_noise``): damage the weight entries most specific to the forget set.

What ``distill`` with 0 distillation steps did, under a name that says what it does:
1. Rank every weight entry by the ratio of its diagonal Fisher information (squared NLL gradients)
   on the forget set to that on the retain set (plus ``mask_text_passages`` passages of ordinary
   text), as selective synaptic dampening ranks them (Foster et al. 2024), on the model before
   any change; keep the top ``perturb_fraction``.
2. Unlearn with ``init_method`` (rmu by default) through the one training loop.
3. Move the kept entries towards a fresh initialisation: W <- (1 - alpha) W + alpha * beta * N.

Read the result as token surgery, not knowledge removal. Where the answers are a few rare tokens
the mask is almost all input-embedding entries of those tokens: on chem-symbols 40,138 of its
40,175 entries, ~274 embedding rows (tied to the head) of words such as " oxygen", " copper",
" calcium" moved by 65-81%, and the model can no longer say those words anywhere ("Red blood cells
carry" -> " oxygen" went from log-prob -0.9 to -17.0; issue #23). A retain set that never uses
those words does not see the damage, and a half-split relearning attack never trains the damaged
rows of the other half. Report it beside a near-domain retain set and the embedding attack.

The training steps (default 10 at lr 1e-5) are retain NLL, a light repair (the unlearn job asks
for at least one step; ``jobs.training.unlearn`` with ``steps=0`` gives the bare perturbation).
Hyper-parameters: ``init_method`` ("rmu"; None: perturb the model as given), ``init_options``,
``init_train``, ``alpha`` (0.8), ``noise_scale`` beta (1.0), ``perturb_fraction`` (0.0003),
``mask_text_passages`` (256), ``text_tokens`` (32), ``seed`` (0): the settings of the former
``distill@ssd03rank`` bench row (chem-symbols: retain 0.95 of the original, perplexity 24.7 vs
24.1, worst forget 0.15 under 50 steps of half-A relearning at lr 1e-4; bench/results).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from excise.errors import ConfigError
from excise.methods import MethodSpec, register
from excise.methods.distill import forget_specific, perturb, text_examples
from excise.methods.warmstart import (
    check_init_method,
    forget_mark,
    recall,
    remember,
    retain_repair,
    unlearn_first,
)


@dataclass
class FisherNoiseConfig:
    init_method: str | None = "rmu"
    init_options: dict[str, Any] = field(default_factory=dict)
    init_train: dict[str, Any] = field(default_factory=dict)
    alpha: float = 0.8
    noise_scale: float = 1.0
    perturb_fraction: float = 0.0003
    mask_text_passages: int = 256
    text_tokens: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha <= 1.0:
            raise ConfigError(f"fisher_noise alpha must be within (0, 1], got {self.alpha}")
        if not 0 < self.perturb_fraction <= 1:
            raise ConfigError("fisher_noise perturb_fraction must be within (0, 1]")
        if min(self.noise_scale, self.mask_text_passages) < 0 or self.text_tokens < 2:
            raise ConfigError(
                "fisher_noise noise_scale and mask_text_passages must be >= 0, text_tokens >= 2"
            )
        check_init_method(self.init_method)


def prepare(ctx) -> None:
    model, config = ctx.unwrapped, ctx.config
    for param in model.parameters():
        param.requires_grad_(True)
    if (earlier := recall(model, "fisher_noise")) is not None:
        ctx.state.update(earlier)
        return
    count = config.mask_text_passages
    texts = text_examples(ctx.tokenizer, count, config.text_tokens) if count else []
    masks = forget_specific(ctx, config.perturb_fraction, texts)  # before any change
    if config.init_method:
        unlearn_first(ctx, config.init_method, config.init_options, config.init_train)
    perturb(model, config.alpha, config.noise_scale, config.seed, masks)
    ctx.state["perturbed_entries"] = sum(int(m.sum()) for m in masks.values())
    remember(model, "fisher_noise", dict(ctx.state))


SPEC = register(
    MethodSpec(
        "fisher_noise",
        "token surgery: noise the entries most forget-specific by Fisher ratio (after rmu)",
        FisherNoiseConfig,
        prepare,
        retain_repair,
        train_defaults={"steps": 10, "lr": 1e-5},
        finish=forget_mark,
    )
)
