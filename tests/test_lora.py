"""LoRA through the one training loop: adapters only on the layers a method trains, references
cached without them, merged weights equal base + adapter, and the adapter reloads with peft."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from excise.cli import main
from excise.errors import ConfigError
from excise.methods import UNLEARNING, get_method
from excise.models import save_model
from excise.train.lora import LoraSettings, has_adapters, merge_adapters
from tests.conftest import make_tiny_model, tiny_task
from tests.conftest import train_tiny as run

pytest.importorskip("peft")


@pytest.mark.parametrize(
    ("method", "options", "term", "adapted", "drop"),
    [
        ("npo", {}, "npo", 4 * 7, 0.05),  # every linear layer of the 4 blocks
        # rmu trains block 0's MLP output only (layer 0 of 4)
        ("rmu", {"alpha": 1.0}, "forget_mse", 1, 0.1),
    ],
)
def test_lora_trains_only_adapters_on_the_method_layers(
    tiny_tokenizer, method, options, term, adapted, drop
):
    model = make_tiny_model(tiny_tokenizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    log = run(model, tiny_tokenizer, method, LoraSettings(rank=4), options=options)
    losses = [entry[term] for entry in log]
    assert losses[-1] < losses[0] * (1 - drop), losses
    assert has_adapters(model)
    adapter = merge_adapters(model, "tiny")
    assert not has_adapters(model) and not hasattr(model, "peft_config")
    assert len(adapter.layers) == adapted
    if method == "rmu":
        assert adapter.layers == ["model.layers.0.mlp.down_proj"]
    # the merged weights changed exactly where adapters were
    after = model.state_dict()
    assert set(after) == set(before)
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == {f"{name}.weight" for name in adapter.layers}
    # each adapter is rank r: B starts at zero and was trained away from it
    tensors = adapter.tensors
    lora_b = [v for k, v in tensors.items() if "lora_B" in k]
    assert len(lora_b) == adapted and all(v.shape[1] == 4 for v in lora_b)
    assert all(float(v.abs().max()) > 0 for v in lora_b)


# no warm start, and for distill no perturbation either (alpha 0): the base weights stay as given
WITHOUT_WARM_START = {"tar": {"init_method": None}, "distill": {"init_method": None, "alpha": 0.0}}


# task_vector and fisher_noise do all their work on the base weights in prepare, cir projects
# the change of the base weights: refused below
@pytest.mark.parametrize(
    "method", [m for m in UNLEARNING if m not in ("rr", "task_vector", "fisher_noise", "cir")]
)
def test_every_method_trains_adapters(tiny_tokenizer, method):
    """Any method with --lora: only adapters train, and merging reproduces the adapted model."""
    model = make_tiny_model(tiny_tokenizer)
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    options = WITHOUT_WARM_START.get(method, {})
    run(model, tiny_tokenizer, method, LoraSettings(rank=2), steps=2, options=options)
    assert has_adapters(model)
    base = {
        k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if "lora_" not in k
    }
    assert all(torch.equal(base[k], frozen[k]) for k in frozen)  # base weights untouched
    ids = torch.tensor([tiny_tokenizer("The element gold has the symbol").input_ids])
    with torch.no_grad():
        adapted = model(ids).logits
        adapter = merge_adapters(model)
        merged = model(ids).logits
    assert adapter.layers and not has_adapters(model)
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["tar", "distill", "task_vector", "fisher_noise"])
def test_lora_refuses_methods_that_change_the_base_first(tiny_tokenizer, method):
    """A warm start changes the base: OUT/adapter on the original model would be wrong."""
    with pytest.raises(ConfigError, match="changed the weights while preparing"):
        run(make_tiny_model(tiny_tokenizer), tiny_tokenizer, method, LoraSettings(rank=2))


def test_lora_refuses_cir(tiny_tokenizer):
    with pytest.raises(ConfigError, match="cir changes the base weights itself"):
        run(make_tiny_model(tiny_tokenizer), tiny_tokenizer, "cir", LoraSettings(rank=2))


def test_npo_reference_is_the_model_without_adapters(tiny_tokenizer):
    """The first NPO step compares the policy with the cached reference: with zero-initialised
    adapters they are equal, so the NPO term starts at exactly (2/beta) log 2."""
    model = make_tiny_model(tiny_tokenizer)
    log = run(model, tiny_tokenizer, "npo", LoraSettings(rank=2), steps=1)
    beta = get_method("npo").config_cls().beta
    assert log[0]["npo"] == pytest.approx(2 / beta * torch.log(torch.tensor(2.0)).item(), rel=1e-5)


def test_lora_resume_equals_uninterrupted(tiny_tokenizer, tmp_path):
    full = make_tiny_model(tiny_tokenizer)
    log = run(full, tiny_tokenizer, "npo", LoraSettings(rank=2), steps=6)

    def stop_after_four(step, _totals):
        if step == 4:
            raise RuntimeError("crash")

    folder = tmp_path / "ckpt"
    with pytest.raises(RuntimeError):
        run(
            make_tiny_model(tiny_tokenizer),
            tiny_tokenizer,
            "npo",
            LoraSettings(rank=2),
            steps=6,
            checkpoint_every=3,
            checkpoint_dir=folder,
            on_step=stop_after_four,
        )
    resumed = make_tiny_model(tiny_tokenizer)
    rest = run(
        resumed,
        tiny_tokenizer,
        "npo",
        LoraSettings(rank=2),
        steps=6,
        checkpoint_every=3,
        checkpoint_dir=folder,
        resume=True,
    )
    assert [entry["step"] for entry in rest] == [4, 5, 6]
    assert [entry["loss"] for entry in rest] == pytest.approx([e["loss"] for e in log[3:]])
    merged_full, merged_resumed = merge_adapters(full), merge_adapters(resumed)
    for key, value in merged_full.tensors.items():
        torch.testing.assert_close(merged_resumed.tensors[key], value)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture
def files(tmp_path, tiny_tokenizer):
    task = tiny_task()
    model_dir = save_model(make_tiny_model(tiny_tokenizer), tiny_tokenizer, tmp_path / "tiny")
    qa = [{"prompt": q.prompt, "completion": q.completion} for q in task.forget]
    keep = [{"prompt": q.prompt, "completion": q.completion} for q in task.retain]
    return {
        "model": str(model_dir),
        "forget": write_jsonl(tmp_path / "forget.jsonl", qa),
        "retain": write_jsonl(tmp_path / "retain.jsonl", keep),
    }


def cli_args(files, out, *extra):
    return [
        "unlearn",
        "--model",
        files["model"],
        "--forget",
        files["forget"],
        "--retain",
        files["retain"],
        "--template",
        "raw",
        "--method",
        "npo",
        "--steps",
        "4",
        "--batch-size",
        "4",
        "--lr",
        "0.01",
        "--quiet",
        "--out",
        str(out),
        *extra,
    ]


def test_cli_merge_equals_base_plus_adapter(files, tmp_path, tiny_tokenizer):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    assert main(cli_args(files, out, "--lora", "4", "--lora-alpha", "8", "--merge")) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["lora"]["rank"] == 4 and report["lora"]["merged"]
    assert report["method"]["train"]["lr"] == 0.01
    merged = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    assert not any("lora" in name for name in merged.state_dict())
    base = AutoModelForCausalLM.from_pretrained(files["model"]).eval()
    ids = torch.tensor([tiny_tokenizer("The element iron has the symbol Fe").input_ids])
    with torch.no_grad():
        base_logits = base(ids).logits
        adapted = PeftModel.from_pretrained(base, out / "adapter").eval()
        adapter_logits = adapted(ids).logits
        merged_logits = merged(ids).logits
    assert (adapter_logits - base_logits).abs().max() > 1e-3  # the adapter does something
    torch.testing.assert_close(merged_logits, adapter_logits, atol=1e-5, rtol=1e-5)
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8
    manifest = json.loads((out / "manifest.json").read_text())
    assert any(name.startswith("adapter/") for name in json.dumps(manifest).split('"'))


def test_cli_without_merge_writes_the_adapter_only(files, tmp_path):
    out = tmp_path / "out"
    assert main(cli_args(files, out, "--lora", "2", "--lora-targets", "q_proj,v_proj")) == 0
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert not (out / "model").exists()
    report = json.loads((out / "report.json").read_text())
    assert report["method"]["train"]["lr"] == 0.01  # given: not scaled
    layers = report["lora"]["layers"]
    assert len(layers) == 8 and all(name.endswith(("q_proj", "v_proj")) for name in layers)


def test_cli_lora_errors(files, tmp_path, capsys):
    out = tmp_path / "out"
    cases = [
        (["--merge"], "needs --lora"),
        (["--lora-alpha", "4"], "needs --lora"),
        (["--lora", "0"], "rank >= 1"),
        (["--lora", "2", "--lora-targets", "nope"], "no such layer"),
    ]
    for extra, message in cases:
        assert main(cli_args(files, out, *extra)) == 2, extra
        assert message in capsys.readouterr().err, extra
    rr = cli_args(files, out, "--lora", "2")
    rr[rr.index("npo")] = "rr"
    assert main(rr) == 2
    assert "own LoRA option" in capsys.readouterr().err
    assert main([*rr, "--set", "lora_rank=0"]) == 2  # rr merges every adapter when it finishes
    assert "own LoRA option" in capsys.readouterr().err
    assert not out.exists()


def test_lora_default_lr_is_scaled():
    from excise.jobs.training import train_config
    from excise.train.lora import LR_FACTOR

    plain = train_config("npo", {})
    assert train_config("npo", {}, lora=True).lr == pytest.approx(plain.lr * LR_FACTOR)
    assert train_config("npo", {"lr": 0.5}, lora=True).lr == 0.5
    with pytest.raises(ConfigError):
        LoraSettings(rank=2, targets=())


def test_recipe_with_lora_runs_and_repeats(files, tmp_path):
    import yaml

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "model": files["model"],
                "data": {"forget": files["forget"], "retain": files["retain"]},
                "template": "raw",
                "method": {"name": "npo"},
                "train": {"steps": 2, "batch_size": 4, "progress": False},
                "lora": {"rank": 2, "targets": ["down_proj"], "merge": False},
                "out": str(tmp_path / "out"),
            }
        )
    )
    assert main(["run", str(recipe)]) == 0
    out = tmp_path / "out"
    assert (out / "adapter" / "adapter_config.json").is_file() and not (out / "model").exists()
    report = json.loads((out / "report.json").read_text())
    from excise.arch import weight_scale
    from excise.models import load_model

    scale = weight_scale(load_model(files["model"])[0])  # a tiny random model's: ~0.1
    # npo's 2e-5, x10 for LoRA, x the weights' scale; spelled out, so a rerun keeps it
    assert report["method"]["train"]["lr"] == pytest.approx(2e-4 * scale)
    repeated = yaml.safe_load((out / "recipe.yaml").read_text())
    assert repeated["lora"] == {
        "rank": 2,
        "alpha": None,
        "targets": ["down_proj"],
        "dropout": 0.0,
        "merge": False,
    }
    assert main(["run", str(out / "recipe.yaml"), "--out", str(tmp_path / "again")]) == 0
    first = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    again = load_file(str(tmp_path / "again" / "adapter" / "adapter_model.safetensors"))
    assert set(first) == set(again) and all(torch.equal(first[k], again[k]) for k in first)
