import pytest
import torch
from transformers import AutoModelForCausalLM

from excise.errors import ModelError
from excise.models import clone_model, fingerprint, load_model, save_model


def test_save_then_plain_from_pretrained(tmp_path, tiny_model, tiny_tokenizer):
    save_model(tiny_model, tiny_tokenizer, tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").is_file()
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    ids = torch.tensor([[5, 6, 7]])
    assert torch.allclose(plain(ids).logits, tiny_model(ids).logits, atol=1e-5)


def test_load_local_folder_sets_pad_and_eval(tmp_path, tiny_model, tiny_tokenizer):
    save_model(tiny_model, tiny_tokenizer, tmp_path / "m")
    model, tokenizer = load_model(str(tmp_path / "m"))
    assert not model.training
    assert tokenizer.pad_token is not None
    assert fingerprint(model) == fingerprint(tiny_model)


def test_load_errors(tmp_path, tiny_model, tiny_tokenizer):
    with pytest.raises(ModelError, match="not found"):
        load_model(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="config.json"):
        load_model(str(tmp_path / "empty"))
    folder = tmp_path / "pickled"
    save_model(tiny_model, tiny_tokenizer, folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(ModelError, match="safetensors"):
        load_model(str(folder))
    with pytest.raises(ModelError, match="GGUF file not found"):
        load_model(str(tmp_path / "x.gguf"))
    with pytest.raises(ModelError, match="dtype"):
        load_model(str(tmp_path), dtype="int3")


def test_clone_is_independent(tiny_model):
    copy = clone_model(tiny_model)
    with torch.no_grad():
        next(copy.parameters()).add_(1.0)
    assert fingerprint(copy) != fingerprint(tiny_model)


def test_not_a_causal_lm(tmp_path):
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(vocab_size=32, d_model=8, d_ff=16, num_layers=1, num_heads=2, d_kv=4)
    T5ForConditionalGeneration(config).save_pretrained(tmp_path / "t5")
    with pytest.raises(ModelError, match="not a causal language model"):
        load_model(str(tmp_path / "t5"))
