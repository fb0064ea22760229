"""task_vector, fisher_noise, sam_npo, and distill's refusal of 0 steps, on tiny models."""

import pytest
import torch

from excise.attacks.base import accuracy
from excise.data.encode import collate
from excise.errors import ConfigError
from excise.jobs.training import unlearn
from excise.methods import UNLEARNING, get_method, make_config
from excise.methods.npo import npo_loss
from excise.methods.sam_npo import ascent_direction, forget_loss
from excise.methods.task_vector import negate
from excise.scoring import forward_stats
from tests.test_tamper import context, fixed_batch, snapshot, taught_model

QUICK = {"steps": 0, "batch_size": 4, "progress": False}


def test_the_new_methods_are_removal_methods_with_checked_configs():
    assert {"task_vector", "fisher_noise", "sam_npo"} <= set(UNLEARNING)
    for name, bad in (
        ("task_vector", {"alpha": 0}),
        ("task_vector", {"ft_steps": 0}),
        ("fisher_noise", {"perturb_fraction": 0}),
        ("fisher_noise", {"init_method": "distill"}),
        ("sam_npo", {"rho": -1}),
    ):
        with pytest.raises(ConfigError):
            make_config(get_method(name).config_cls, bad)


def test_negate_subtracts_alpha_times_the_task_vector(tiny_tokenizer):
    model, _ = taught_model(tiny_tokenizer)
    start = snapshot(model)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.01 * torch.randn_like(param))  # theta_ft
    tuned = snapshot(model)
    negate(model, {n: t for n, t in start.items() if n in dict(model.named_parameters())}, 1.5)
    for name, param in model.named_parameters():
        expected = start[name] - 1.5 * (tuned[name] - start[name])
        torch.testing.assert_close(param.detach(), expected)


def test_task_vector_lowers_forget_accuracy_on_taught_facts_and_keeps_retain(tiny_tokenizer):
    model, task = taught_model(tiny_tokenizer)
    forget_before = accuracy(model, tiny_tokenizer, task.forget_eval, "raw")
    retain_before = accuracy(model, tiny_tokenizer, task.retain_eval, "raw")
    assert forget_before == 1.0 and retain_before == 1.0
    options = {"alpha": 2.0, "ft_steps": 10, "ft_lr": 1e-3, "ft_batch_size": 4}
    unlearn(model, tiny_tokenizer, task, "task_vector", method_options=options, train_options=QUICK)
    assert accuracy(model, tiny_tokenizer, task.forget_eval, "raw") <= 0.25
    assert accuracy(model, tiny_tokenizer, task.retain_eval, "raw") >= 0.75


def test_task_vector_negation_is_what_lowers_forget(tiny_tokenizer):
    """Control: the fine-tuning alone (alpha taken to ~0) leaves the facts known."""
    model, task = taught_model(tiny_tokenizer)
    options = {"alpha": 1e-6, "ft_steps": 10, "ft_lr": 1e-3, "ft_batch_size": 4}
    unlearn(model, tiny_tokenizer, task, "task_vector", method_options=options, train_options=QUICK)
    assert accuracy(model, tiny_tokenizer, task.forget_eval, "raw") == 1.0


def test_distill_refuses_zero_steps_and_names_fisher_noise(tiny_tokenizer):
    model, task = taught_model(tiny_tokenizer)
    with pytest.raises(ConfigError, match="fisher_noise"):
        unlearn(
            model,
            tiny_tokenizer,
            task,
            "distill",
            method_options={"init_method": None},
            train_options=QUICK,
        )


def test_fisher_noise_moves_only_a_small_share_of_entries(tiny_tokenizer):
    model, task = taught_model(tiny_tokenizer)
    start = snapshot(model)
    options = {"init_method": None, "perturb_fraction": 0.02, "mask_text_passages": 8}
    unlearn(
        model, tiny_tokenizer, task, "fisher_noise", method_options=options, train_options=QUICK
    )
    changed = sum(int((p != start[n]).sum()) for n, p in model.named_parameters())
    total = sum(p.numel() for p in model.parameters())
    assert 0.005 < changed / total < 0.03


def test_sam_npo_without_radius_is_npo(tiny_tokenizer):
    model, task = taught_model(tiny_tokenizer)
    ctx = context(model, tiny_tokenizer, "sam_npo", task, {"rho": 0.0, "retain_weight": 0.0})
    get_method("sam_npo").prepare(ctx)
    with torch.no_grad():
        next(model.parameters()).add_(0.01)  # away from the reference, so the loss is not log 2
    batch = fixed_batch(ctx)
    loss, _ = get_method("sam_npo").loss(ctx, batch)
    policy = forward_stats(model, batch["forget"]).logprob
    expected = npo_loss(policy, ctx.state["reference_logprob"][batch["forget"]["index"]], 0.1)
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)


def test_sam_npo_gradient_is_the_npo_gradient_at_the_perturbed_weights(tiny_tokenizer):
    model, task = taught_model(tiny_tokenizer)
    ctx = context(model, tiny_tokenizer, "sam_npo", task, {"rho": 0.05, "retain_weight": 0.0})
    get_method("sam_npo").prepare(ctx)
    forget = collate(ctx.forget, ctx.pad_id)
    params = dict(model.named_parameters())
    loss, terms = get_method("sam_npo").loss(ctx, {"forget": forget, "retain": None})
    sam_grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    # by hand: move the real weights by rho * g / ||g||, take NPO's gradient there
    delta = ascent_direction(forget_loss(ctx, params, forget), params, 0.05)
    assert float(torch.sqrt(sum((d**2).sum() for d in delta.values()))) == pytest.approx(0.05)
    with torch.no_grad():
        for name, param in params.items():
            param.add_(delta[name])
    moved = forget_loss(ctx, params, forget)
    hand = torch.autograd.grad(moved, list(params.values()), allow_unused=True)
    assert terms["npo_sam"] == pytest.approx(float(moved.detach()), rel=1e-4)
    assert terms["npo_sam"] > terms["npo"]  # the ascent direction raises the forget loss
    for mine, theirs in zip(sam_grads, hand, strict=True):
        if theirs is not None:
            torch.testing.assert_close(mine, theirs, rtol=1e-3, atol=1e-6)


@pytest.fixture
def model_dir(tmp_path, tiny_model, tiny_tokenizer):
    from excise.models import save_model

    return str(save_model(tiny_model, tiny_tokenizer, tmp_path / "tiny"))


def _cli_argv(tmp_path, model_dir, method, steps):
    from tests.test_cli import data

    forget = data(
        tmp_path, "f.jsonl", [{"prompt": "The element iron has the symbol", "completion": " Fe"}]
    )
    retain = data(
        tmp_path, "r.jsonl", [{"prompt": "The capital of France is", "completion": " Paris"}]
    )
    return ["unlearn", "--model", model_dir, "--forget", forget, "--retain", retain,
            "--method", method, "--steps", str(steps), "--out", str(tmp_path / "out"),
            "--quiet", "--template", "raw", "--set", "ft_steps=2"]  # fmt: skip


def test_cli_task_vector_writes_a_model(tmp_path, model_dir):
    from excise.cli import main

    assert main(_cli_argv(tmp_path, model_dir, "task_vector", 2)) == 0
    assert (tmp_path / "out" / "model").is_dir() and (tmp_path / "out" / "report.json").is_file()
