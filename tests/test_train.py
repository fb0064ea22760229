import pytest
import torch

from excise.models import fingerprint
from excise.train import batch_indices
from tests.conftest import make_tiny_model, train_tiny


def test_batches_are_a_function_of_seed_and_draw():
    assert batch_indices(10, 4, 3, seed=1) == batch_indices(10, 4, 3, seed=1)
    first_epoch = [i for d in range(5) for i in batch_indices(10, 2, d, seed=0)]
    assert sorted(first_epoch) == list(range(10))  # every item once per epoch
    assert batch_indices(3, 5, 0, seed=0)[:3] != [] and len(batch_indices(3, 5, 0, seed=0)) == 5


def run(tokenizer, steps, checkpoint_dir=None, resume=False, every=0, model=None, stop_after=None):
    model = model or make_tiny_model(tokenizer)
    log = train_tiny(
        model,
        tokenizer,
        "npo",
        steps=steps,
        lr=1e-3,
        batch_size=2,
        checkpoint_every=every,
        schedule="cosine",
        warmup_steps=1,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        on_step=interrupt_after(stop_after),
    )
    return model, log


def interrupt_after(step_count):
    def on_step(step, terms):
        if step_count is not None and step >= step_count:
            raise KeyboardInterrupt

    return on_step


def test_resume_gives_the_same_losses_and_weights(tmp_path, tiny_tokenizer):
    straight, straight_log = run(tiny_tokenizer, 6)
    ckpt = tmp_path / "ckpt"
    # an interrupted run: checkpoints every 3 steps, stopped after 3
    with pytest.raises(KeyboardInterrupt):
        run(tiny_tokenizer, 6, checkpoint_dir=ckpt, every=3, stop_after=4)
    assert not (ckpt / "step-6").exists()
    assert (ckpt / "step-3" / "trainable.safetensors").is_file()
    # NPO's reference must be the model before unlearning, so resume starts from a fresh copy
    resumed, resumed_log = run(tiny_tokenizer, 6, checkpoint_dir=ckpt, resume=True, every=3)
    assert [r["step"] for r in resumed_log] == [4, 5, 6]
    for a, b in zip(straight_log[3:], resumed_log, strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-5
        assert abs(a["lr"] - b["lr"]) < 1e-12
    assert fingerprint(straight) == fingerprint(resumed)


def test_all_parameters_trainable_again_after_rmu(tiny_tokenizer):
    model = make_tiny_model(tiny_tokenizer)
    before = {n: p.clone() for n, p in model.named_parameters()}
    options = {"layer": 2, "update_layers": 2}
    train_tiny(model, tiny_tokenizer, "rmu", steps=2, options=options, lr=1e-3, batch_size=2)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"model.layers.1.mlp.down_proj.weight", "model.layers.2.mlp.down_proj.weight"}
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(
    "name, options, accum",
    [
        ("graddiff", None, 1),
        ("npo", None, 2),
        ("simnpo", None, 1),
        ("idk", None, 1),
        ("rmu", {"layer": 2, "update_layers": 2}, 2),
        ("npo", {"retain_weight": 0.0}, 1),  # nothing left to backward after the release
    ],
)
def test_backward_in_parts_gives_the_same_training(
    tiny_tokenizer, monkeypatch, name, options, accum
):
    import excise.train.launch

    def run():
        model = make_tiny_model(tiny_tokenizer)
        settings = {"steps": 3, "options": options, "grad_accum": accum, "lr": 1e-3}
        return model, train_tiny(model, tiny_tokenizer, name, batch_size=2, **settings)

    parts, parts_log = run()
    monkeypatch.setattr(excise.train.launch, "EARLY_BACKWARD", False)
    whole, whole_log = run()
    for (n, a), b in zip(parts.named_parameters(), whole.parameters(), strict=True):
        # 1e-5, not 1e-6: without the early backward npo scores forget and retain as one padded
        # forward (scoring.forget_and_retain_stats), whose matrix shapes round differently
        # (3e-6 after 3 Adam steps at lr 1e-3, which move weights by ~3e-3)
        assert torch.allclose(a, b, atol=1e-5), (n, float((a - b).abs().max()))
    assert [e["loss"] for e in parts_log] == pytest.approx([e["loss"] for e in whole_log], rel=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(parts.parameters(), make_tiny_model(tiny_tokenizer).parameters(), strict=True))  # fmt: skip


def test_forget_part_is_backwarded_before_the_retain_forward(tiny_tokenizer):
    """The point of Context.release: when the retain batch runs forward, the forget batch's
    gradients are already in (its activations freed), in every micro-batch."""
    model = make_tiny_model(tiny_tokenizer)
    seen: list[bool] = []
    embed = model.get_input_embeddings()
    handle = embed.register_forward_pre_hook(
        lambda _m, _a: seen.append(embed.weight.grad is not None and bool(embed.weight.grad.any()))
    )
    train_tiny(model, tiny_tokenizer, "graddiff", steps=2, lr=1e-3, batch_size=2)
    handle.remove()
    # per step: forget forward (no gradient yet), retain forward (forget's gradient in)
    assert seen == [False, True, False, True]


def test_finetune_objective_is_the_registered_method(tiny_tokenizer):
    """excise.train.objectives.FINETUNE (what teaching and the relearn attack use) trains exactly
    as the registered ``finetune`` method."""
    from excise.data.encode import encode_records
    from excise.train import FINETUNE, TrainConfig, fine_tune
    from tests.conftest import tiny_task

    task = tiny_task()
    registered = make_tiny_model(tiny_tokenizer)
    log = train_tiny(registered, tiny_tokenizer, "finetune", steps=3, lr=1e-3, batch_size=2)
    direct = make_tiny_model(tiny_tokenizer)
    examples = encode_records(tiny_tokenizer, task.forget, "raw")
    config = TrainConfig(steps=3, lr=1e-3, batch_size=2, progress=False)
    assert fine_tune(direct, tiny_tokenizer, examples, task.forget, "raw", config) == log
    assert fingerprint(direct) == fingerprint(registered)
    assert not FINETUNE.uses_retain and FINETUNE.name == "finetune"


def test_one_process_gets_the_plain_launch():
    from excise.train import TrainConfig, choose_launch
    from excise.train.launch import Launch

    launch = choose_launch(TrainConfig(), object())
    assert type(launch) is Launch and launch.kind == "plain" and launch.written_as == "plain"
    assert not launch.shards and launch.accelerator.num_processes == 1


def test_default_learning_rates_follow_the_weights_scale_and_given_ones_stay(tiny_tokenizer):
    """Adam's step is ~lr per weight: a model with weights half as large gets half the default
    lr for a method on the outputs (npo); rmu's targets are scaled to activations, so its lr
    stays; an lr the user gives is never changed."""
    from excise.arch import TUNED_WEIGHT_RMS, weight_scale
    from excise.jobs.training import train_config

    model = make_tiny_model(tiny_tokenizer)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2 and "embed" not in name:
                param.copy_(torch.randn_like(param) * TUNED_WEIGHT_RMS / 2)
    assert abs(weight_scale(model) - 0.5) < 0.02
    scale = weight_scale(model)
    npo, rmu = train_config("npo", None), train_config("rmu", None)
    assert train_config("npo", None, model=model).lr == pytest.approx(npo.lr * scale)
    assert train_config("rmu", None, model=model).lr == rmu.lr
    assert train_config("npo", {"lr": 3e-5}, model=model).lr == 3e-5
    lora = train_config("npo", None, lora=True)
    assert train_config("npo", None, lora=True, model=model).lr == pytest.approx(lora.lr * scale)


def test_sgd_steps_are_linear_in_the_learning_rate(tiny_tokenizer):
    # optimizer: sgd (cir's): no moments, so a step is -lr x the gradient: twice the lr moves
    # every weight twice as far, and each weight as far as its gradient is large
    from excise.errors import ConfigError
    from excise.train import TrainConfig

    with pytest.raises(ConfigError, match="unknown optimizer"):
        TrainConfig(optimizer="lion")
    for states in ("bf16", "8bit"):  # AdamW's moment precision: SGD has none to set
        with pytest.raises(ConfigError, match="SGD keeps no states"):
            TrainConfig(optimizer="sgd", optimizer_states=states)
    start = make_tiny_model(tiny_tokenizer).state_dict()
    moved = {}
    for optimizer in ("sgd", "adamw"):
        for lr in (0.1, 0.2):
            model = make_tiny_model(tiny_tokenizer)
            model.load_state_dict(start)
            train_tiny(model, tiny_tokenizer, "ga", steps=1, optimizer=optimizer, lr=lr,
                       max_grad_norm=1e9)  # fmt: skip
            moved[optimizer, lr] = torch.cat(
                [(p.detach() - start[n]).flatten() for n, p in model.named_parameters()]
            )
    assert moved["sgd", 0.1].abs().max() > 1e-4
    torch.testing.assert_close(moved["sgd", 0.2], 2 * moved["sgd", 0.1], atol=1e-6, rtol=1e-4)

    def spread(move):  # largest over median of the weights that moved
        size = move.abs()[move.abs() > 1e-9]
        return float(size.max() / size.median())

    # AdamW's first step moves every weight with a gradient by about lr; SGD by lr x its gradient
    assert spread(moved["adamw", 0.1]) < 1.5 and spread(moved["sgd", 0.1]) > 10
