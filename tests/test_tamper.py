"""Tamper resistance (tar) and unlearn-noise-distill (distill) on tiny models."""

import pytest
import torch
from accelerate import Accelerator

from excise.data.encode import collate, encode_records
from excise.errors import ConfigError
from excise.jobs.training import unlearn
from excise.methods import UNLEARNING, get_method, make_config
from excise.methods.distill import DistillConfig, forget_specific, perturb
from excise.methods.tar import TARConfig, attack, tr_loss
from excise.methods.warmstart import MARK
from excise.train import Context, TrainConfig, batch_indices, train
from tests.conftest import make_tiny_model, teach, tiny_task


def taught_model(tokenizer):
    task = tiny_task()
    model = make_tiny_model(tokenizer)
    teach(model, tokenizer, task.forget + task.retain, steps=40)
    return model, task


def context(model, tokenizer, name, task, options):
    spec = get_method(name)
    return Context(
        model,
        tokenizer,
        make_config(spec.config_cls, options),
        encode_records(tokenizer, task.forget, "raw"),
        encode_records(tokenizer, task.retain, "raw"),
        task.forget,
        "raw",
        Accelerator(cpu=True),
    )


def fixed_batch(ctx, forget_rows=None):
    forget = [ctx.forget[i] for i in (forget_rows or range(len(ctx.forget)))]
    return {"forget": collate(forget, ctx.pad_id), "retain": collate(ctx.retain, ctx.pad_id)}


def snapshot(model):
    return {n: t.detach().clone() for n, t in model.state_dict().items()}


def test_both_are_removal_methods_with_checked_configs():
    assert {"tar", "distill"} <= set(UNLEARNING)
    with pytest.raises(ConfigError):
        DistillConfig(alpha=1.5)
    with pytest.raises(ConfigError):
        TARConfig(inner_steps=0)
    with pytest.raises(ConfigError):
        TARConfig(init_method="tar")
    with pytest.raises(ConfigError, match="unknown option"):
        make_config(TARConfig, {"inner_step": 2})


def test_inner_attack_is_adam_fine_tuning_on_a_copy_and_leaves_the_weights(tiny_tokenizer):
    model, task = taught_model(tiny_tokenizer)
    options = {"init_method": None, "inner_steps": 3, "inner_lr": 1e-2}
    ctx = context(model, tiny_tokenizer, "tar", task, options)
    get_method("tar").prepare(ctx)
    before = snapshot(model)
    params = {n: p for n, p in model.named_parameters()}
    attacked = attack(ctx, params, avoid={0})
    for name, weight in model.named_parameters():  # the real weights are untouched
        assert torch.equal(weight, before[name]) and weight.grad is None
    # the same attack done for real: Adam on a copy, gradients clipped to norm 1
    copy = make_tiny_model(tiny_tokenizer)
    copy.load_state_dict(model.state_dict())
    optimizer = torch.optim.Adam(copy.parameters(), lr=1e-2)
    pool = [e for e in ctx.forget if e.index != 0]
    for k in range(3):
        rows = batch_indices(len(pool), 1, k, ctx.config.seed + 7)
        batch = collate([pool[i] for i in rows], ctx.pad_id)
        out = copy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        logits = out.logits[:, :-1].reshape(-1, out.logits.shape[-1])
        nll = torch.nn.functional.cross_entropy(logits, batch["labels"][:, 1:].reshape(-1))
        nll.backward()
        torch.nn.utils.clip_grad_norm_(copy.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
    moved = 0.0
    for name, weight in copy.named_parameters():
        assert torch.allclose(attacked[name], weight, atol=1e-5), name
        moved = max(moved, float((weight.detach() - before[name]).abs().max()))
    assert moved > 1e-3  # the attack did change the copy


def test_tar_gradient_is_the_first_order_meta_gradient(tiny_tokenizer):
    model, task = taught_model(tiny_tokenizer)
    options = {"init_method": None, "inner_steps": 2, "clean_weight": 0, "retain_weight": 0}
    ctx = context(model, tiny_tokenizer, "tar", task, options)
    get_method("tar").prepare(ctx)
    batch = fixed_batch(ctx, [0, 1])
    loss, terms = get_method("tar").loss(ctx, batch)
    loss.backward()
    params = {n: p for n, p in model.named_parameters()}
    attacked = attack(ctx, params, avoid={0, 1})
    from excise.methods.tar import _logits

    value = tr_loss(ctx, _logits(model, attacked, batch["forget"]), batch["forget"])
    expected = torch.autograd.grad(value, list(attacked.values()))
    assert (
        float(loss.detach())
        == pytest.approx(float(value.detach()), abs=1e-6)
        == terms["tr_attacked"]
    )
    for (name, param), grad in zip(params.items(), expected, strict=True):
        assert torch.allclose(param.grad, grad, atol=1e-6), name


def test_tar_lowers_its_losses_and_resists_the_simulated_attack(tiny_tokenizer):
    model, task = taught_model(tiny_tokenizer)
    options = {"init_method": "ga", "init_train": {"steps": 3, "lr": 1e-3}, "inner_lr": 1e-3}
    spec = get_method("tar")
    ctx = context(model, tiny_tokenizer, "tar", task, options)
    spec.prepare(ctx)
    assert getattr(model, MARK)[0] == "tar"
    batch = fixed_batch(ctx)
    with torch.no_grad():
        _, before = spec.loss(ctx, batch)
    log = train(
        model,
        tiny_tokenizer,
        spec,
        ctx.config,
        forget=ctx.forget,
        retain=ctx.retain,
        forget_records=task.forget,
        template="raw",
        config=TrainConfig(steps=15, lr=2e-3, batch_size=2, progress=False),
    )
    assert not hasattr(model, MARK)  # finish cleans up
    with torch.no_grad():
        _, after = spec.loss(ctx, batch)
    # higher answer entropy after the simulated attack and on the clean model, retain kept
    assert after["tr_attacked"] < before["tr_attacked"] - 0.05, (before, after)
    assert after["tr_clean"] < before["tr_clean"] - 0.05
    assert after["retain_nll"] < before["retain_nll"] + 0.5
    assert {"tr_attacked", "tr_clean", "retain_nll"} <= set(log[-1])


def test_perturbation_interpolates_towards_a_fresh_model(tiny_tokenizer):
    model = make_tiny_model(tiny_tokenizer)
    start = snapshot(model)
    fresh = make_tiny_model(tiny_tokenizer, seed=5)
    # alpha = 1: a freshly initialised model (same seed, same draw), whatever the weights were
    perturb(model, 1.0, 1.0, seed=3)
    noise = snapshot(model)
    model.load_state_dict(fresh.state_dict())
    perturb(model, 1.0, 1.0, seed=3)
    assert all(torch.equal(noise[n], p) for n, p in model.named_parameters())
    model.load_state_dict(start)
    perturb(model, 0.25, 1.0, seed=3)
    for name, param in model.named_parameters():
        assert torch.allclose(param, 0.75 * start[name] + 0.25 * noise[name], atol=1e-6)
    assert not torch.equal(
        noise["model.layers.0.mlp.up_proj.weight"], start["model.layers.0.mlp.up_proj.weight"]
    )


def test_distill_with_alpha_zero_starts_from_the_teacher(tiny_tokenizer):
    model, task = taught_model(tiny_tokenizer)
    teacher = snapshot(model)
    ctx = context(model, tiny_tokenizer, "distill", task, {"init_method": None, "alpha": 0.0})
    get_method("distill").prepare(ctx)
    assert all(torch.equal(teacher[n], p) for n, p in model.named_parameters())
    with torch.no_grad():
        loss, _ = get_method("distill").loss(ctx, fixed_batch(ctx))
    assert abs(float(loss)) < 1e-5
    # a perturbed student starts away from the teacher
    model.load_state_dict(teacher)
    delattr(model, MARK)
    ctx = context(model, tiny_tokenizer, "distill", task, {"init_method": None, "alpha": 0.5})
    get_method("distill").prepare(ctx)
    with torch.no_grad():
        loss, _ = get_method("distill").loss(ctx, fixed_batch(ctx))
    assert float(loss) > 0.05


def test_distill_unlearns_perturbs_and_lowers_its_loss(tiny_tokenizer):
    model, task = taught_model(tiny_tokenizer)
    options = {"init_method": "ga", "init_train": {"steps": 3, "lr": 1e-3}, "alpha": 0.5}
    spec = get_method("distill")
    ctx = context(model, tiny_tokenizer, "distill", task, options)
    spec.prepare(ctx)
    batch = fixed_batch(ctx)
    with torch.no_grad():
        before, _ = spec.loss(ctx, batch)
    log = train(
        model,
        tiny_tokenizer,
        spec,
        ctx.config,
        forget=ctx.forget,
        retain=ctx.retain,
        forget_records=task.forget,
        template="raw",
        config=TrainConfig(steps=20, lr=3e-3, batch_size=4, progress=False),
    )
    with torch.no_grad():
        after, _ = spec.loss(ctx, batch)
    assert float(after) < 0.5 * float(before), (float(before), float(after))
    assert log[-1]["kl_retain"] < log[0]["kl_retain"]


@pytest.mark.parametrize(
    "method, options",
    [
        ("tar", {"init_method": "ga", "init_train": {"steps": 2, "lr": 1e-3}, "inner_steps": 2}),
        ("distill", {"init_method": "ga", "init_train": {"steps": 2, "lr": 1e-3}, "alpha": 0.2}),
    ],
)
def test_relearn_ratio_pipeline_accepts_the_new_methods(tiny_tokenizer, method, options):
    from excise.attacks.scorecard import audit

    model, task = taught_model(tiny_tokenizer)
    original = make_tiny_model(tiny_tokenizer)
    original.load_state_dict(model.state_dict())
    gold = make_tiny_model(tiny_tokenizer)
    teach(gold, tiny_tokenizer, task.retain, steps=40)
    unlearn(
        model,
        tiny_tokenizer,
        task,
        method,
        method_options=options,
        train_options={"steps": 3, "lr": 1e-3, "batch_size": 2, "progress": False},
    )
    report = audit(
        model,
        tiny_tokenizer,
        task,
        original=original,
        gold=gold,
        attacks=["relearn", "quantize"],
        budgets={"relearn": {"steps": [0, 2, 4], "variants": ["forget_full"]}},
    )
    ratio = report["relearn"]["ratio"]["forget_full"]
    assert ratio["bound"] in ("exact", "lower", "upper", "neither_reached", "gold_at_start")
    assert set(report["relearn"]["curves"]) == {"unlearned", "original", "gold"}
    assert "quantize" in report["scorecard"]["forget_accuracy"]["attacked"]


def test_selective_perturbation_moves_only_the_most_forget_specific_entries(tiny_tokenizer):
    model, task = taught_model(tiny_tokenizer)
    ctx = context(model, tiny_tokenizer, "distill", task, {"init_method": None})
    masks = forget_specific(ctx, 0.02)
    chosen = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert 0.01 < chosen / total < 0.03
    start = snapshot(model)
    perturb(model, 1.0, 1.0, seed=1, masks=masks)
    for name, param in model.named_parameters():
        changed = param != start[name]
        assert not (changed & ~masks[name]).any(), name  # nothing outside the mask moved
    assert sum(int((p != start[n]).sum()) for n, p in model.named_parameters()) > 0.9 * chosen


def test_distill_on_general_text_adds_a_term(tiny_tokenizer):
    model, task = taught_model(tiny_tokenizer)
    options = {"init_method": None, "alpha": 0.3, "text_passages": 6, "text_tokens": 16}
    ctx = context(model, tiny_tokenizer, "distill", task, options)
    get_method("distill").prepare(ctx)
    assert len(ctx.state["texts"]) == 6 and max(len(e.input_ids) for e in ctx.state["texts"]) <= 16
    with torch.no_grad():
        loss, terms = get_method("distill").loss(ctx, fixed_batch(ctx))
    assert terms["kl_text"] > 0
    assert float(loss) == pytest.approx(terms["kl_retain"] + terms["kl_text"], rel=1e-5)
