"""The loop's memory options: optimizer in backward, bf16 / 8-bit AdamW states, activation
checkpointing (excise.train.optim, adamw_bf16, recompute)."""

import importlib.util

import pytest
import torch

from excise.errors import ConfigError
from excise.models import fingerprint
from excise.train import TrainConfig
from excise.train.adamw_bf16 import AdamWBF16, draw_noise, store_stochastic_
from tests.conftest import make_tiny_model, tiny_task, train_tiny

NO_CLIP = 1e9  # the ordinary loop clips at 1.0; in backward it cannot


def weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def largest_difference(a, b) -> float:
    return max(float((a[n] - b[n]).abs().max()) for n in a)


def relative_gap(a, b, origin) -> float:
    """||a - b|| / ||a - origin|| over every weight: how far b is from a, per unit moved."""
    gap = sum(float((a[n] - b[n]).pow(2).sum()) for n in a)
    moved = sum(float((a[n] - origin[n]).pow(2).sum()) for n in a)
    return (gap / moved) ** 0.5


def trained(tokenizer, method="npo", steps=4, **options):
    model = make_tiny_model(tokenizer)
    log = train_tiny(model, tokenizer, method, steps=steps, lr=1e-3, **options)
    return model, log


@pytest.mark.parametrize("method", ["npo", "graddiff", "rmu"])
def test_in_backward_gives_the_ordinary_loops_weights(tiny_tokenizer, method):
    plain, plain_log = trained(tiny_tokenizer, method, max_grad_norm=NO_CLIP, weight_decay=0.1)
    fused, fused_log = trained(tiny_tokenizer, method, optimizer_in_backward=True, weight_decay=0.1)
    original = weights(make_tiny_model(tiny_tokenizer))
    assert largest_difference(weights(plain), original) > 1e-4  # the steps did something
    # 1e-5 = 1% of a step at lr 1e-3: float rounding (Adam's normalisation magnifies it in
    # gradients near 0); a forward over forget and retain together sums in another order
    assert largest_difference(weights(plain), weights(fused)) < 3e-5
    for a, b in zip(plain_log, fused_log, strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-4
        assert abs(a["grad_norm"] - b["grad_norm"]) < 1e-3 * a["grad_norm"]
        assert a["lr"] == b["lr"]


def test_in_backward_follows_the_lr_schedule(tiny_tokenizer):
    options = {"schedule": "linear", "warmup_steps": 1, "max_grad_norm": NO_CLIP}
    plain, plain_log = trained(tiny_tokenizer, steps=4, **options)
    fused, fused_log = trained(tiny_tokenizer, steps=4, optimizer_in_backward=True, **options)
    assert [r["lr"] for r in plain_log] == [r["lr"] for r in fused_log]
    assert len({r["lr"] for r in fused_log}) > 2
    assert largest_difference(weights(plain), weights(fused)) < 1e-5


def test_in_backward_leaves_no_hooks_nor_gradients(tiny_tokenizer):
    model, _ = trained(tiny_tokenizer, optimizer_in_backward=True)
    assert all(p.grad is None for p in model.parameters())
    before = fingerprint(model)
    loss = model(input_ids=torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss
    loss.backward()  # no optimizer step from a stale hook
    assert fingerprint(model) == before
    assert all(p.grad is not None for p in model.parameters())


def test_in_backward_applies_gradients_before_the_backward_reaches_the_first_block(
    tiny_tokenizer,
):
    # the memory the option saves: a gradient applied (and freed) while the backward is still
    # in the blocks above, not after it reached the first block with every gradient made
    model = make_tiny_model(tiny_tokenizer)
    events: list[str] = []
    last, first = model.model.layers[-1], model.model.layers[0]
    last.mlp.down_proj.weight.register_post_accumulate_grad_hook(lambda p: events.append("last"))
    first.register_full_backward_pre_hook(lambda module, grad: events.append("first"))
    train_tiny(model, tiny_tokenizer, "npo", steps=1, optimizer_in_backward=True)
    assert events.index("last") < events.index("first")


NO_BNB = pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes (excise[8bit])"
)


@pytest.mark.parametrize("states", ["fp32", "bf16", pytest.param("8bit", marks=NO_BNB)])
def test_in_backward_resumes_as_an_uninterrupted_run(tmp_path, tiny_tokenizer, states):
    options = {"optimizer_in_backward": True, "optimizer_states": states, "schedule": "cosine"}
    straight, straight_log = trained(tiny_tokenizer, steps=6, **options)
    ckpt = tmp_path / "ckpt"

    def stop_after_three(step, terms):  # on_step runs before step 3's checkpoint is written
        if step >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trained(
            tiny_tokenizer,
            steps=6,
            checkpoint_dir=ckpt,
            checkpoint_every=3,
            on_step=stop_after_three,
            **options,
        )
    resumed, resumed_log = trained(
        tiny_tokenizer, steps=6, checkpoint_dir=ckpt, resume=True, checkpoint_every=3, **options
    )
    assert [r["step"] for r in resumed_log] == [4, 5, 6]
    for a, b in zip(straight_log[3:], resumed_log, strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-5
    assert fingerprint(straight) == fingerprint(resumed)


def test_a_checkpoint_resumes_only_in_its_own_optimizer_mode(tmp_path, tiny_tokenizer):
    ckpt = tmp_path / "ckpt"
    trained(tiny_tokenizer, steps=2, checkpoint_dir=ckpt, checkpoint_every=2)
    with pytest.raises(ConfigError, match="optimizer_in_backward"):
        trained(
            tiny_tokenizer, steps=4, checkpoint_dir=ckpt, resume=True, optimizer_in_backward=True
        )


def test_bf16_states_stay_close_to_fp32(tiny_tokenizer):
    fp32, fp32_log = trained(tiny_tokenizer, steps=6, max_grad_norm=NO_CLIP)
    bf16, bf16_log = trained(
        tiny_tokenizer, steps=6, max_grad_norm=NO_CLIP, optimizer_states="bf16"
    )
    original = weights(make_tiny_model(tiny_tokenizer))
    moved = largest_difference(weights(fp32), original)
    assert moved > 1e-3
    assert largest_difference(weights(fp32), weights(bf16)) < 0.05 * moved
    assert abs(fp32_log[-1]["loss"] - bf16_log[-1]["loss"]) < 0.01 * abs(fp32_log[-1]["loss"])


def test_bf16_adamw_keeps_bf16_moments_and_matches_adamw():
    torch.manual_seed(0)
    start = torch.randn(300, 70)
    exact = torch.nn.Parameter(start.clone())
    small = torch.nn.Parameter(start.clone())
    reference = torch.optim.AdamW([exact], lr=1e-2, weight_decay=0.1)
    optimizer = AdamWBF16([small], lr=1e-2, weight_decay=0.1, chunk=5000)  # several chunks
    for _ in range(50):
        grad = torch.randn_like(start) * 0.01 + 0.003
        exact.grad, small.grad = grad.clone(), grad.clone()
        reference.step()
        optimizer.step()
    state = optimizer.state[small]
    assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.bfloat16
    moved = float((exact.detach() - start).abs().max())
    assert float((exact - small).detach().abs().max()) < 0.02 * moved
    squares = reference.state[exact]["exp_avg_sq"]
    bias = float(((state["exp_avg_sq"].float() - squares) / squares).mean())
    assert abs(bias) < 2e-3  # stochastic rounding: no drift (always rounding up gives ~+0.3%)
    optimizer.load_state_dict(optimizer.state_dict())
    assert optimizer.state[small]["exp_avg"].dtype == torch.bfloat16


def rounded(values: torch.Tensor) -> torch.Tensor:
    """``values`` stored in bfloat16 with stochastic rounding, read back as float32."""
    stored = torch.empty_like(values, dtype=torch.bfloat16)
    return store_stochastic_(stored, values.clone(), draw_noise(values.numel())).float()


def test_stochastic_rounding_is_unbiased():
    for sign in (1.0, -1.0):  # the magnitude rounds: unbiased for both signs
        values = torch.full((200_000,), sign * (1.0 + 2**-10))  # 1/8 of a bf16 step above 1
        stored = rounded(values)
        assert set(stored.unique().tolist()) == {sign, sign * (1.0 + 2**-7)}
        assert abs(float(stored.mean()) - sign * (1.0 + 2**-10)) < 2e-5
    nearest = torch.full((10,), 1.0 + 2**-10).to(torch.bfloat16).float()
    assert float(nearest.mean()) == 1.0  # round-to-nearest loses the increment entirely


def test_stochastic_rounding_keeps_zeros_signs_and_exact_values():
    # a moment that is still 0.0 (a weight with no gradient yet: an embedding row not in the
    # batch) must not turn into a NaN when noise is added to its bit pattern
    values = torch.tensor([0.0, -0.0, 1e-45, -1e-45, 1e-30, -1e-30, 3.0, -3.0] * 4096)
    stored = rounded(values)
    assert bool(torch.isfinite(stored).all())
    assert bool((torch.sign(stored) * torch.sign(values) >= 0).all())
    assert bool((stored[values == 0] == 0).all())
    assert bool((stored[values.abs() == 3.0] == values[values.abs() == 3.0]).all())  # exact
    special = torch.tensor([float("inf"), -float("inf")] * 1000)
    assert bool((rounded(special) == special).all())


def test_bf16_adamw_steps_as_torch_adamw_from_the_same_moments():
    """Each step is torch's AdamW from the moments stored in bfloat16: starting torch's AdamW
    from those moments every step gives the same weights (float32 rounding) and moments within
    one bfloat16 step; over several chunks, dtypes of weights and weight decay."""
    torch.manual_seed(1)
    for dtype in (torch.float32, torch.bfloat16):
        start = torch.randn(130, 70).to(dtype)
        ours = torch.nn.Parameter(start.clone())
        theirs = torch.nn.Parameter(start.float().clone())
        optimizer = AdamWBF16([ours], lr=1e-2, weight_decay=0.1, chunk=4096)
        reference = torch.optim.AdamW([theirs], lr=1e-2, weight_decay=0.1)
        for _ in range(5):
            grad = torch.randn(130, 70) * 0.01
            with torch.no_grad():
                theirs.copy_(ours.float())
            ours.grad, theirs.grad = grad.to(dtype), grad.to(dtype).float()
            if optimizer.state:  # torch's moments := ours, as stored
                state, exact = optimizer.state[ours], reference.state[theirs]
                exact["exp_avg"].copy_(state["exp_avg"].float())
                exact["exp_avg_sq"].copy_(state["exp_avg_sq"].float())
            optimizer.step()
            reference.step()
            tolerance = 1e-6 if dtype == torch.float32 else 2**-8  # fp32 / bf16 rounding
            assert torch.allclose(ours.float(), theirs.detach(), rtol=tolerance, atol=1e-8)
            for key in ("exp_avg", "exp_avg_sq"):
                mine, exact = optimizer.state[ours][key].float(), reference.state[theirs][key]
                assert bool(((mine - exact).abs() <= exact.abs() * 2**-7 + 1e-30).all())


def test_bf16_states_survive_weights_without_gradients(tiny_tokenizer):
    weight = torch.nn.Parameter(torch.randn(64, 8))
    optimizer = AdamWBF16([weight], lr=1e-2)
    for step in range(5):
        weight.grad = torch.zeros_like(weight)
        weight.grad[step] = torch.randn(8)  # one row a step: the others keep zero moments
        optimizer.step()
    assert bool(torch.isfinite(weight).all())
    assert bool(torch.isfinite(optimizer.state[weight]["exp_avg_sq"].float()).all())


@pytest.mark.parametrize("method", ["npo", "rmu"])
def test_gradient_checkpointing_gives_the_same_training(tiny_tokenizer, method):
    plain, plain_log = trained(tiny_tokenizer, method)
    recomputed, recomputed_log = trained(tiny_tokenizer, method, gradient_checkpointing=True)
    for a, b in zip(plain_log, recomputed_log, strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-5
        assert abs(a["grad_norm"] - b["grad_norm"]) < 1e-5 * max(1.0, a["grad_norm"])
    assert largest_difference(weights(plain), weights(recomputed)) < 1e-6
    assert not recomputed.is_gradient_checkpointing  # switched off after training


def test_gradient_checkpointing_gives_the_same_gradients(tiny_tokenizer):
    from excise.data.encode import collate, encode_records
    from excise.scoring import nll

    batch = collate(encode_records(tiny_tokenizer, tiny_task().forget, "raw"), 0)
    model = make_tiny_model(tiny_tokenizer).train()
    nll(model, batch).backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    nll(model, batch).backward()
    assert largest_difference(plain, {n: p.grad for n, p in model.named_parameters()}) < 1e-6


def test_everything_together_trains(tiny_tokenizer):
    options = {"optimizer_in_backward": True, "optimizer_states": "bf16"}
    model, log = trained(tiny_tokenizer, steps=4, gradient_checkpointing=True, **options)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    assert log[-1]["npo"] != log[0]["npo"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"optimizer_in_backward": True, "grad_accum": 2}, "grad_accum 1"),
        ({"optimizer_states": "int4"}, "fp32, bf16 or 8bit"),
    ],
)
def test_bad_combinations_are_one_line_errors(options, message):
    with pytest.raises(ConfigError, match=message) as error:
        TrainConfig(**options)
    assert "\n" not in str(error.value)


def test_checkpointing_is_refused_for_methods_on_their_own_weight_copies(tiny_tokenizer):
    with pytest.raises(ConfigError, match="own weight copies") as error:
        trained(tiny_tokenizer, "sam_npo", gradient_checkpointing=True)
    assert "\n" not in str(error.value)


@pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed"
)
def test_8bit_states_name_what_they_need(tiny_tokenizer):
    with pytest.raises(ConfigError, match="bitsandbytes") as error:
        trained(tiny_tokenizer, optimizer_states="8bit")
    assert "\n" not in str(error.value)


@NO_BNB
@pytest.mark.parametrize("in_backward", [False, True])
def test_8bit_states_train(tiny_tokenizer, in_backward):
    fp32, _ = trained(tiny_tokenizer, steps=4, max_grad_norm=NO_CLIP)
    small, log = trained(
        tiny_tokenizer,
        steps=4,
        max_grad_norm=NO_CLIP,
        optimizer_states="8bit",
        optimizer_in_backward=in_backward,
    )
    original = weights(make_tiny_model(tiny_tokenizer))
    gap = relative_gap(weights(fp32), weights(small), original)
    print(f"8-bit states: {gap:.3f} of the distance moved")
    assert gap < 0.2


def test_cli_flags_reach_the_loop_and_the_recipe(tmp_path, tiny_model, tiny_tokenizer, capsys):
    import json

    from excise.cli import main
    from excise.models import save_model

    model_dir = str(save_model(tiny_model, tiny_tokenizer, tmp_path / "tiny"))
    rows = {
        "f.jsonl": {"prompt": "The element iron has the symbol", "completion": " Fe"},
        "r.jsonl": {"prompt": "The capital of France is", "completion": " Paris"},
    }
    for name, row in rows.items():
        (tmp_path / name).write_text(json.dumps(row) + "\n")
    out = tmp_path / "out"
    argv = ["unlearn", "--model", model_dir, "--method", "npo", "--steps", "2", "--quiet"]
    argv += ["--forget", str(tmp_path / "f.jsonl"), "--retain", str(tmp_path / "r.jsonl")]
    argv += ["--template", "raw", "--out", str(out), "--optimizer-in-backward"]
    argv += ["--optimizer-states", "bf16", "--gradient-checkpointing"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert len(report["loss_log"]) == 2
    recipe = (out / "recipe.yaml").read_text()
    for line in ("optimizer_in_backward: true", "optimizer_states: bf16"):
        assert line in recipe
    assert "gradient_checkpointing: true" in recipe
    capsys.readouterr()
    assert main([*argv, "--overwrite", "--grad-accum", "2"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "grad_accum 1" in errors[0]
