"""One suite over every method: each runs on a tiny model and moves its own loss the right way."""

import pytest
import torch
from accelerate import Accelerator

from excise.activations.states import hidden_at
from excise.data.encode import collate, encode_records
from excise.errors import ConfigError, ExciseError
from excise.methods import METHODS, all_methods, get_method, make_config, register
from excise.methods.npo import npo_loss
from excise.scoring import forward_stats
from excise.train import Context, TrainConfig, train
from tests.conftest import make_tiny_model, teach, tiny_task, train_tiny

# cir: a tiny task has a few dozen forget tokens, which 24 + 36 components would nearly span
OPTIONS = {
    "rmu": {"layer": 2, "update_layers": 2},
    "distill": {"alpha": 0.3},
    "cir": {"act_components": 2, "grad_components": 2},
}
ALL = sorted(all_methods())


def context(model, tokenizer, name, task):
    spec = get_method(name)
    return Context(
        model,
        tokenizer,
        make_config(spec.config_cls, OPTIONS.get(name)),
        encode_records(tokenizer, task.forget, "raw"),
        encode_records(tokenizer, task.retain, "raw"),
        task.forget,
        "raw",
        Accelerator(cpu=True),
    )


def fixed_batch(ctx):
    return {
        "forget": collate(ctx.forget, ctx.pad_id),
        "retain": collate(ctx.retain, ctx.pad_id),
    }


@pytest.mark.parametrize("name", ALL)
def test_method_lowers_its_own_loss(name, tiny_tokenizer):
    task = tiny_task()
    model = make_tiny_model(tiny_tokenizer)
    if name not in ("finetune", "idk"):
        teach(model, tiny_tokenizer, task.forget + task.retain, steps=40)
    spec = get_method(name)
    ctx = context(model, tiny_tokenizer, name, task)
    spec.prepare(ctx)
    with torch.no_grad():
        before, _ = spec.loss(ctx, fixed_batch(ctx))
    train(
        model,
        tiny_tokenizer,
        spec,
        ctx.config,
        forget=ctx.forget,
        retain=ctx.retain,
        forget_records=task.forget,
        template="raw",
        config=TrainConfig(steps=8, lr=1e-3, batch_size=4, progress=False),
        uses_retain=spec.uses_retain,
    )
    ctx.model = model
    with torch.no_grad():
        after, _ = spec.loss(ctx, fixed_batch(ctx))
    assert float(after) < float(before) - 1e-4, (name, float(before), float(after))


def test_npo_reference_cache_equals_a_frozen_reference_model(tiny_tokenizer):
    task = tiny_task()
    model = make_tiny_model(tiny_tokenizer)
    reference = make_tiny_model(tiny_tokenizer)  # same seed: the model before unlearning
    ctx = context(model, tiny_tokenizer, "npo", task)
    get_method("npo").prepare(ctx)
    with torch.no_grad():
        next(model.parameters()).add_(0.01)  # the policy drifts away from the reference
    batch = fixed_batch(ctx)
    cached, _ = get_method("npo").loss(ctx, batch)
    policy = forward_stats(model, batch["forget"]).logprob
    naive_reference = forward_stats(reference, batch["forget"]).logprob
    naive = (
        npo_loss(policy, naive_reference, 0.1)
        + forward_stats(model, batch["retain"]).logprob.sum() * 0
    )
    retain = batch["retain"]
    stats = forward_stats(model, retain)
    naive = naive + (-stats.logprob.sum() / stats.tokens.sum())
    assert torch.allclose(cached, naive, atol=1e-5)
    assert not torch.allclose(policy, naive_reference)  # the check is not vacuous


def test_npo_loss_by_hand():
    # r = 0 gives -(2/beta) log(1/2)
    value = npo_loss(torch.tensor([-3.0]), torch.tensor([-3.0]), 0.5)
    assert abs(float(value) - (2 / 0.5) * torch.log(torch.tensor(2.0))) < 1e-6


def test_rmu_truncated_forward_and_cache_equal_the_naive_form(tiny_tokenizer):
    task = tiny_task()
    model = make_tiny_model(tiny_tokenizer)
    frozen = make_tiny_model(tiny_tokenizer)
    ctx = context(model, tiny_tokenizer, "rmu", task)
    get_method("rmu").prepare(ctx)
    batch = fixed_batch(ctx)
    full = model(
        **{k: batch["forget"][k] for k in ("input_ids", "attention_mask")},
        output_hidden_states=True,
    )
    truncated = hidden_at(model, 2, batch["forget"])
    assert torch.allclose(truncated, full.hidden_states[3], atol=1e-5)
    with torch.no_grad():
        model.model.layers[2].mlp.down_proj.weight.add_(0.05)
    cached, terms = get_method("rmu").loss(ctx, batch)
    # naive: full forwards of the trained model and of a whole frozen copy
    mask_f, mask_r = batch["forget"]["attention_mask"], batch["retain"]["attention_mask"]
    h_forget = model(
        input_ids=batch["forget"]["input_ids"], attention_mask=mask_f, output_hidden_states=True
    ).hidden_states[3]
    h_retain = model(
        input_ids=batch["retain"]["input_ids"], attention_mask=mask_r, output_hidden_states=True
    ).hidden_states[3]
    h_frozen = frozen(
        input_ids=batch["retain"]["input_ids"], attention_mask=mask_r, output_hidden_states=True
    ).hidden_states[3]
    target = ctx.state["target"]

    def mse(a, b, m):
        m = m.bool()
        return ((a - b) ** 2)[m].mean()

    naive = mse(h_forget, target.expand_as(h_forget), mask_f) + ctx.config.alpha * mse(
        h_retain, h_frozen, mask_r
    )
    assert torch.allclose(cached, naive, rtol=1e-4)
    assert terms["retain_mse"] > 0  # the edit moved retain activations, so the check is not vacuous


def test_registry_rejects_duplicates_and_bad_options():
    spec = get_method("ga")
    with pytest.raises(ValueError, match="twice"):
        register(spec)
    with pytest.raises(ExciseError, match="unknown method"):
        get_method("nope")
    with pytest.raises(ConfigError, match="unknown option"):
        make_config(get_method("npo").config_cls, {"betta": 1})
    with pytest.raises(ConfigError):
        make_config(get_method("npo").config_cls, {"beta": -1})
    assert set(METHODS.names()) >= {"ga", "graddiff", "npo", "simnpo", "idk", "rmu"}


def test_npo_short_run_scores_only_the_forget_items_it_draws(tiny_tokenizer, monkeypatch):
    """A run of a few steps caches the reference of the items its batches hold, not of the whole
    forget set, and trains exactly as with the whole table."""
    import excise.methods.npo as npo
    import excise.train.loop as loop

    scored = []
    real = npo.stats_for_examples
    monkeypatch.setattr(
        npo, "stats_for_examples", lambda m, ex, *a: scored.append(len(ex)) or real(m, ex, *a)
    )
    short = train_tiny(
        make_tiny_model(tiny_tokenizer), tiny_tokenizer, "npo", steps=1, batch_size=2
    )
    forget_size = len(tiny_task().forget)
    assert scored == [2] and forget_size > 2
    monkeypatch.setattr(loop, "forget_drawn", lambda ctx, config: ctx.forget)
    whole = train_tiny(
        make_tiny_model(tiny_tokenizer), tiny_tokenizer, "npo", steps=1, batch_size=2
    )
    assert scored == [2, forget_size]
    assert short == whole
