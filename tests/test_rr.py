"""Representation rerouting (circuit breakers) through the one training loop, on a tiny model."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from excise.errors import ConfigError
from excise.jobs.training import unlearn
from excise.methods import UNLEARNING, get_method, make_config
from excise.methods.rr import RRConfig, coefficients
from excise.models import save_model
from tests.conftest import make_tiny_model, tiny_task


def test_schedule_is_the_papers():
    # c_rr = alpha (1 - t/2T), c_retain = alpha t/2T
    assert coefficients(0, 100, 10.0) == (10.0, 0.0)
    assert coefficients(50, 100, 10.0) == (7.5, 2.5)
    assert coefficients(100, 100, 10.0) == (5.0, 5.0)


def test_config_is_checked():
    assert "rr" in UNLEARNING
    with pytest.raises(ConfigError):
        RRConfig(alpha=0)
    with pytest.raises(ConfigError):
        make_config(RRConfig, {"lora_rank": -1})
    with pytest.raises(ConfigError, match="unknown option"):
        make_config(RRConfig, {"beta": 1})


@pytest.mark.parametrize("lora_rank", [4, 0])
def test_rr_reroutes_forget_and_leaves_a_plain_model(tmp_path, tiny_tokenizer, lora_rank):
    model = make_tiny_model(tiny_tokenizer)
    embeddings = model.model.embed_tokens.weight.detach().clone()
    above = model.model.layers[3].mlp.down_proj.weight.detach().clone()
    trained = model.model.layers[1].mlp.down_proj.weight.detach().clone()
    log = unlearn(
        model,
        tiny_tokenizer,
        tiny_task(),
        "rr",
        method_options={"layers": [1, 2], "lora_rank": lora_rank},
        train_options={"steps": 12, "lr": 3e-3, "progress": False},
    )
    # the rerouting term starts at cos = 1 (the frozen states) and is driven down
    assert log[0]["rr_cos"] > 0.99 and log[-1]["rr_cos"] < 0.3
    assert log[-1]["loss"] < log[0]["loss"]
    # LoRA merged away: plain Linear layers, no adapter weights, blocks above the top layer and
    # the embeddings untouched
    assert not any("lora" in name for name, _ in model.named_parameters())
    assert type(model.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert torch.equal(model.model.embed_tokens.weight, embeddings)
    assert torch.equal(model.model.layers[3].mlp.down_proj.weight, above)
    assert not torch.equal(model.model.layers[1].mlp.down_proj.weight, trained)
    save_model(model, tiny_tokenizer, tmp_path / "m")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits)


def test_rr_layers_outside_the_model_are_refused(tiny_tokenizer):
    model = make_tiny_model(tiny_tokenizer)
    with pytest.raises(ConfigError, match="within"):
        unlearn(
            model,
            tiny_tokenizer,
            tiny_task(),
            "rr",
            method_options={"layers": [7]},
            train_options={"steps": 1, "progress": False},
        )
    assert get_method("rr").finish is not None
