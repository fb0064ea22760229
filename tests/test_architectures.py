"""Every registered method, attack, editor and eraser runs on two tiny architectures.

``llama`` is SmolLM2's family; ``gemma3`` is Gemma 3's (QK-norm, sliding-window layers between
global ones, a norm after each residual writer, token embeddings scaled by sqrt(hidden), tied
embeddings). The tables come from the registries, so a new entry is covered when it registers.
The per-algorithm properties live in test_methods, test_attacks, test_editing and test_erasure;
here each case checks what a family difference would break: the run finishes, touches only what
it should, and leaves finite outputs.
"""

from __future__ import annotations

import math
import typing

import pytest
import torch

from excise.activations.states import hidden_at
from excise.arch import block_part, decoder_layers, layout, num_layers
from excise.attacks import ATTACKS, run_attack
from excise.data.records import QA
from excise.editing import EDITORS
from excise.editing.layers import default_layer, default_layers
from excise.editing.requests import EditRequest, Probe
from excise.erasure import ERASERS
from excise.erasure.core import erase, resolve_options
from excise.errors import ConfigError, ModelError
from excise.methods import all_methods, get_method
from excise.models import fingerprint
from excise.registry import defaults
from excise.scoring import score_pairs
from tests.conftest import make_tiny_model, teach, train_tiny
from tests.test_attacks import FAST, fact_task
from tests.test_editing import assert_written, edit_options, write_corpus
from tests.test_erasure import NEGATIVE, POSITIVE, TEXTS

ARCHS = ("llama", "gemma3")
# cir: a tiny task has a few dozen forget tokens, which 24 + 36 components would nearly span
OPTIONS = {
    "rmu": {"layer": 2, "update_layers": 2},
    "distill": {"alpha": 0.3},
    "cir": {"act_components": 2, "grad_components": 2},
}
BUDGETS = {**FAST, "relearn": {**FAST["relearn"], "steps": (0, 2)}}  # runs, not recovery curves
CAPITALS = [("France", "Paris"), ("Spain", "Madrid"), ("Italy", "Rome"), ("Germany", "Berlin")]


def make_gemma3(tokenizer, *, layers: int = 4, seed: int = 0):
    """A tiny random Gemma 3: sliding window 4 (shorter than the prompts) on layers 0-2, global 3."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=4,
        layer_types=["sliding_attention"] * (layers - 1) + ["full_attention"],
        max_position_embeddings=128,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    return Gemma3ForCausalLM(config).eval()


def make_model(arch: str, tokenizer, seed: int = 0):
    return make_gemma3(tokenizer, seed=seed) if arch == "gemma3" else make_tiny_model(tokenizer)


def finite_logits(model, tokenizer) -> bool:
    ids = tokenizer(["The element iron has the symbol Fe and the capital"], return_tensors="pt")
    with torch.no_grad():
        return bool(torch.isfinite(model(**ids).logits).all())


def test_tiny_gemma3_is_the_family_it_stands_for(tiny_tokenizer):
    model = make_gemma3(tiny_tokenizer)
    assert model.config.model_type == "gemma3_text" and layout(model).layers == "model.layers"
    assert set(model.config.layer_types) == {"sliding_attention", "full_attention"}
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    block = model.model.layers[0]
    assert hasattr(block.self_attn, "q_norm") and hasattr(block, "post_feedforward_layernorm")
    # the sliding window is shorter than the prompt: the last position's output depends on it
    ids = tiny_tokenizer(["The capital of France is Paris and the capital"], return_tensors="pt")
    assert ids.input_ids.shape[1] > model.config.sliding_window
    with torch.no_grad():
        windowed = model(**ids).logits[0, -1]
        model.config.sliding_window = 64
        wide = make_gemma3(tiny_tokenizer)
        wide.config.sliding_window = 64
        wide.load_state_dict(model.state_dict())
        model.config.sliding_window = 4
        assert not torch.allclose(windowed, wide(**ids).logits[0, -1], atol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_truncated_forward_equals_the_full_one(arch, tiny_tokenizer):
    model = make_model(arch, tiny_tokenizer)
    ids = tiny_tokenizer(["The element gold has the symbol Au and more"], return_tensors="pt")
    batch = {"input_ids": ids.input_ids, "attention_mask": ids.attention_mask}
    with torch.no_grad():
        full = model(**batch, output_hidden_states=True).hidden_states
        for layer in range(num_layers(model) - 1):  # the last hidden state is after the final norm
            assert torch.allclose(hidden_at(model, layer, batch), full[layer + 1], atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", sorted(all_methods()))
def test_method_trains_on_both_families(name, arch, tiny_tokenizer):
    model = make_model(arch, tiny_tokenizer)
    if name == "cir" and arch == "gemma3":  # refused, by name, before any work
        with pytest.raises(ConfigError, match="cir does not work yet"):
            train_tiny(model, tiny_tokenizer, name, steps=2, options=OPTIONS.get(name))
        return
    before = {k: v.clone() for k, v in model.state_dict().items()}
    log = train_tiny(model, tiny_tokenizer, name, steps=2, options=OPTIONS.get(name))
    assert len(log) == 2 and all(math.isfinite(v) for row in log for v in row.values())
    # a method that runs and changes nothing is as broken as one that crashes
    moved = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert moved, f"{name} on {arch} changed no weight"
    assert finite_logits(model, tiny_tokenizer)
    if name == "rmu":  # only the MLP output projections up to its layer
        assert all("mlp.down_proj" in k and k.split(".")[2] in ("1", "2") for k in moved), moved
    assert get_method(name).name == name


@pytest.fixture(scope="module")
def attack_task():
    return fact_task()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_runs_on_both_families(name, arch, tiny_tokenizer, attack_task):
    model = make_model(arch, tiny_tokenizer)
    before = fingerprint(model)
    result = run_attack(name, model, tiny_tokenizer, attack_task, budget=BUDGETS.get(name))
    assert fingerprint(model) == before, f"{name} changed the model it attacked ({arch})"
    assert result.name == name and result.metrics
    assert all(math.isfinite(v) for v in result.metrics.values() if isinstance(v, float))


def requests() -> list[EditRequest]:
    """One request whose subject ends the prompt (as test_editing's, for a 4-layer model)."""
    return [
        EditRequest(
            "0",
            "The capital of {}",
            "France",
            "Rome",
            "Paris",
            ("The capital of France",),
            (Probe("The capital of Spain is", "Madrid", "neighborhood"),),
        )
    ]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", EDITORS.names())
def test_editor_lands_an_edit_on_both_families(method, arch, tiny_tokenizer, tmp_path, monkeypatch):
    from excise.editing import edit

    monkeypatch.setenv("EXCISE_HOME", str(tmp_path / "home"))
    # taught first: a random model's keys and values are too small for the edit to land
    facts = [QA(f"The capital of {c} is", f" {a}") for c, a in CAPITALS]
    model = teach(make_model(arch, tiny_tokenizer), tiny_tokenizer, facts, steps=80)
    wanted = [(requests()[0].text(), " Rome")]
    before = score_pairs(model, tiny_tokenizer, wanted, "raw").logprob
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    result = edit(
        model,
        tiny_tokenizer,
        requests(),
        method,
        stats_corpus=str(corpus),
        progress=False,
        **edit_options(method),
    )
    after = score_pairs(result.model, tiny_tokenizer, wanted, "raw").logprob
    assert bool((after > before + 1.0).all()), (arch, method, before, after, result.refused)
    assert_written(result, method)


@pytest.mark.parametrize("arch", ARCHS)
def test_default_edit_layers_sit_early_in_the_stack(arch, tiny_tokenizer):
    # the real depths: Gemma 3 270M has 18 blocks, SmolLM2-135M 30
    if arch == "gemma3":
        model = make_gemma3(tiny_tokenizer, layers=18)
    else:
        model = make_tiny_model(tiny_tokenizer, layers=30)
    layers, single = default_layers(model), default_layer(model)
    assert layers == sorted(layers) and layers[0] > 0 and layers[-1] < num_layers(model) // 2
    assert layers[0] <= single <= layers[-1]


def runtime_form(config_cls) -> str | None:
    """The eraser's form that needs no folding (hooks beside unchanged weights), if it has one."""
    hint = typing.get_type_hints(config_cls).get("form")
    default = defaults(config_cls).get("form")
    choices = [c for c in typing.get_args(hint) if c != default]
    return choices[0] if choices else None


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", ERASERS.names())
def test_eraser_runs_on_both_families(name, arch, tiny_tokenizer):
    model = make_model(arch, tiny_tokenizer)
    options = {"layer": 1}
    folded = defaults(ERASERS.get(name).config_cls).get("form")
    if arch == "gemma3":
        # a norm after each writer: a projection of the writers is not one of the stream, so a
        # folded form asked for by name is refused in one line, before any statistics
        with pytest.raises(ModelError, match="cannot fold"):
            resolve_options(model, name, {**options, "form": folded})
        runtime = runtime_form(ERASERS.get(name).config_cls)
        assert runtime, f"{name} has no runtime form for unfoldable families"
        if name == "clamp":  # its runtime form (a range) means something else: asked by name
            with pytest.raises(ModelError, match="cannot fold"):
                resolve_options(model, name, options)
            options["form"] = runtime
        else:  # the default moves to the runtime form by itself
            assert resolve_options(model, name, options)["form"] == runtime
    changed, result = erase(model, tiny_tokenizer, name, POSITIVE, NEGATIVE, texts=TEXTS, **options)
    assert result.folded == (arch == "llama") and (result.adapter is None) == result.folded
    assert all(math.isfinite(v) for v in result.metrics.values() if isinstance(v, float))
    assert finite_logits(changed, tiny_tokenizer)


def test_erase_cli_refuses_a_folded_form_on_gemma3_before_reading_the_task(
    tiny_tokenizer, tmp_path, capsys, monkeypatch
):
    from excise.cli import main
    from excise.jobs import erase as erase_job
    from excise.models import save_model

    folder = save_model(make_gemma3(tiny_tokenizer), tiny_tokenizer, tmp_path / "gemma3")
    read = []
    monkeypatch.setattr(erase_job, "job_task", lambda *a, **k: read.append(1))
    argv = ["erase", "--model", str(folder), "--task", "bias", "--method", "leace"]
    argv += ["--set", "form=folded", "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot fold into 'gemma3_text'" in err and len(err.strip().splitlines()) == 1
    assert not read and not (tmp_path / "out").exists()


def test_rmu_shared_prefix_counts_the_tokens_every_sequence_starts_with():
    from excise.methods.rmu import shared_prefix

    special = {1, 2, 5}
    assert shared_prefix([[2, 5, 6], [2, 5, 7, 8], [2, 5, 6]], special) == 2
    assert shared_prefix([[2, 5], [2, 5, 9]], special) == 2  # the shorter one shares all of itself
    assert shared_prefix([[2, 6, 5], [2, 6, 7]], special) == 1  # a shared word is not skipped
    assert shared_prefix([[1, 5], [2, 5]], special) == 0 and shared_prefix([], special) == 0


@pytest.mark.parametrize("arch", ARCHS)
def test_rmu_does_not_steer_the_prefix_every_prompt_shares(arch, tiny_tokenizer):
    # Gemma's raw prompts all start with <bos>: its state is the same in every forget and retain
    # prompt (the attention sink); steering it moved every prompt (retain 0.56 on gemma3-270m)
    from copy import deepcopy

    from accelerate import Accelerator
    from tokenizers.processors import TemplateProcessing

    from excise.data.encode import collate, encode_records
    from excise.methods import make_config
    from excise.methods.rmu import masked_mse
    from excise.train import Context
    from tests.conftest import tiny_task

    tokenizer = deepcopy(tiny_tokenizer)
    bos = tokenizer.convert_tokens_to_ids("<eos>")  # stands in for <bos>
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="<eos> $A", special_tokens=[("<eos>", bos)]
    )
    task, model, spec = tiny_task(), make_model(arch, tokenizer), get_method("rmu")
    forget, retain = (encode_records(tokenizer, part, "raw") for part in (task.forget, task.retain))
    assert all(e.input_ids[0] == bos for e in forget + retain)
    # one scale on both (Gemma's default 16 makes the prefix's share of the loss smaller still)
    config = make_config(spec.config_cls, {**OPTIONS["rmu"], "steering_scale": 8.0})
    ctx = Context(
        model, tokenizer, config, forget, retain, task.forget, "raw", Accelerator(cpu=True)
    )
    spec.prepare(ctx)
    assert ctx.state["shared"] == 1
    batch = {"forget": collate(forget, ctx.pad_id), "retain": collate(retain, ctx.pad_id)}
    with torch.no_grad():
        _, terms = spec.loss(ctx, batch)
        hidden = hidden_at(model, ctx.state["layer"], batch["forget"])
    mask = batch["forget"]["attention_mask"].clone()
    target = ctx.state["target"].expand_as(hidden)
    steered = masked_mse(hidden[:, 1:], target[:, 1:], mask[:, 1:])
    assert terms["forget_mse"] == pytest.approx(float(steered), rel=1e-5)
    assert terms["forget_mse"] != pytest.approx(float(masked_mse(hidden, target, mask)), rel=1e-3)


def test_rmu_defaults_follow_whether_mlp_writes_are_normalised(tiny_tokenizer):
    from excise.methods.rmu import (
        RMUConfig,
        normalised_writes,
        resolve_layer,
        resolve_update_layers,
    )

    gemma = make_gemma3(tiny_tokenizer, layers=9)  # post_feedforward_layernorm in every block
    llama = make_tiny_model(tiny_tokenizer)
    assert normalised_writes(gemma) and not normalised_writes(llama)
    default = RMUConfig()
    assert (resolve_layer(gemma, default), resolve_update_layers(gemma, default)) == (2, 1)
    depth = len(llama.model.layers)
    assert resolve_layer(llama, default) == max(0, round(depth / 4) - 1)
    assert resolve_update_layers(llama, default) == 3
    given = RMUConfig(layer=1, update_layers=2)  # what the user sets is kept on both
    assert [resolve_update_layers(m, given) for m in (gemma, llama)] == [2, 2]
    assert [resolve_layer(m, given) for m in (gemma, llama)] == [1, 1]


def test_rmu_picks_the_layer_whose_normalised_write_moves_the_stream_most(tiny_tokenizer):
    # gemma3-270m: forgetting followed the write's share of the stream, not the depth (layer 3,
    # share 0.36: forget 0.061; layer 4, share 0.18: 0.217; measured 2026-12-07)
    from accelerate import Accelerator

    from excise.data.encode import collate, encode_records
    from excise.methods import make_config
    from excise.methods.rmu import leverage_window, write_shares
    from excise.train import Context
    from tests.conftest import tiny_task

    model = make_gemma3(tiny_tokenizer, layers=18)
    assert list(leverage_window(18)) == [3, 4, 5]
    with torch.no_grad():  # layer 4's write is the longest (Gemma's norms scale by 1 + weight)
        decoder_layers(model)[4].post_feedforward_layernorm.weight.fill_(7.0)
    task, spec = tiny_task(), get_method("rmu")
    forget, retain = (
        encode_records(tiny_tokenizer, part, "raw") for part in (task.forget, task.retain)
    )
    batches = [collate(forget, tiny_tokenizer.pad_token_id)]
    shares = write_shares(model, batches, [3, 4, 5])
    assert max(shares, key=shares.get) == 4 and shares[4] > 2 * max(shares[3], shares[5])
    ctx = Context(
        model,
        tiny_tokenizer,
        make_config(spec.config_cls, {}),
        forget,
        retain,
        task.forget,
        "raw",
        Accelerator(cpu=True),
    )
    spec.prepare(ctx)
    assert ctx.state["layer"] == 4 and ctx.state["write_shares"][4] == pytest.approx(shares[4])
    given = make_config(spec.config_cls, {"layer": 5})
    ctx = Context(
        model, tiny_tokenizer, given, forget, retain, task.forget, "raw", Accelerator(cpu=True)
    )
    spec.prepare(ctx)
    assert ctx.state["layer"] == 5 and "write_shares" not in ctx.state  # a given layer is kept


def gemma3_with_gains(tokenizer, seed: int = 0):
    """A tiny Gemma 3 whose norms after each MLP have gains 2-4, as trained ones do (unit gains
    at random init hide what the norm does to an edit)."""
    model = make_gemma3(tokenizer)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in decoder_layers(model):
            block.post_feedforward_layernorm.weight.copy_(
                torch.rand(64, generator=generator) * 2 + 1
            )
    return model


def test_under_a_write_norm_keys_are_weighed_and_the_target_shifts_the_mlp_output(
    tiny_tokenizer,
):
    """Gemma 3 adds g * y / rms(y) to the stream (y = W k, the MLP's output): the target an edit
    writes is a shift of y (a stream shift is not one any W can make), and the key statistics
    weigh each key by 1 / rms(y), since a change of y reaches the stream divided by rms(y).
    Plain families shift the block's output and weigh nothing."""
    from excise.editing.locate import read_at
    from excise.editing.requests import EditRequest
    from excise.editing.stats import compute
    from excise.editing.targets import TargetConfig, optimise_deltas, request_rows

    texts = ["The element iron has the symbol Fe and the capital of France is Paris."] * 4
    request = EditRequest("0", "The capital of {} is", "France", " Rome", " Paris")
    for model in (gemma3_with_gains(tiny_tokenizer), make_tiny_model(tiny_tokenizer)):
        normed = hasattr(decoder_layers(model)[1], "post_feedforward_layernorm")
        projection = block_part(model, 1, "mlp_out")
        seen: list[tuple[torch.Tensor, torch.Tensor]] = []

        def grab(_module, args, out, seen=seen):
            seen.append((args[0][0].double(), out[0].double()))

        handle = projection.register_forward_hook(grab)
        with torch.no_grad():
            model(**tiny_tokenizer(texts[:1], return_tensors="pt", add_special_tokens=False))
        handle.remove()
        keys, outputs = seen[0]
        weights = outputs.pow(2).mean(1, keepdim=True).sqrt() if normed else torch.ones(1)
        expected = (keys / weights).T @ (keys / weights) / len(keys)
        moments, count = compute(model, tiny_tokenizer, [1], texts=texts, tokens=len(keys))
        assert count == len(keys)
        assert float((moments[1] - expected).norm() / expected.norm()) < 1e-5  # float32 sums

        config = TargetConfig(v_steps=2, prefixes=0)
        deltas, base, _ = optimise_deltas(model, tiny_tokenizer, [request], 1, config)
        rows = request_rows(tiny_tokenizer, [request], [""], "raw", target=False)
        where = "key" if normed else "residual"
        read = read_at(model, rows, [1], tiny_tokenizer.pad_token_id, what=where)[1]
        shifted_at = projection(read) if normed else read
        assert torch.allclose(base, shifted_at.detach(), atol=1e-5)
        assert deltas.shape == base.shape and float(deltas.norm()) > 0


@pytest.mark.parametrize("method", ["memit", "alphaedit"])
def test_batched_edits_on_gemma3_land_and_leave_the_other_facts(
    method, tiny_tokenizer, tmp_path, monkeypatch
):
    """Two facts at once over two layers under write norms, each layer with its own target
    (a shift of its MLP's output). One layer alone cannot write enough here (measured: Spain's
    new capital at -4.2 with layer 1 only, both at -0.03 with layers 0 and 1). What the batch
    does to the other facts is not asserted: in this 64-wide model MEMIT moves them on both
    families (llama: Germany's Berlin -0.004 -> -8.7 once Spain's capital is Berlin; gemma3:
    -> -3.2); ROME's sequential edits leave them (test above)."""
    from excise.editing import edit

    monkeypatch.setenv("EXCISE_HOME", str(tmp_path / "home"))
    facts = [QA(f"The capital of {c} is", f" {a}") for c, a in CAPITALS]
    model = teach(gemma3_with_gains(tiny_tokenizer), tiny_tokenizer, facts, steps=80)
    wanted = [("The capital of France", " Rome"), ("The capital of Spain", " Berlin")]
    asked = [
        EditRequest(str(i), "The capital of {}", country, f" {new}", f" {old}")
        for i, (country, new, old) in enumerate([("France", "Rome", "Paris"), ("Spain", "Berlin", "Madrid")])
    ]  # fmt: skip
    before = score_pairs(model, tiny_tokenizer, wanted, "raw").logprob
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    result = edit(
        model, tiny_tokenizer, asked, method, stats_corpus=str(corpus), progress=False,
        **edit_options(method),
    )  # fmt: skip
    after = score_pairs(result.model, tiny_tokenizer, wanted, "raw").logprob
    assert bool((before < -5.0).all()) and bool((after > -0.5).all()), (before, after)


def test_rome_on_gemma3_lands_and_leaves_the_other_facts(tiny_tokenizer, tmp_path, monkeypatch):
    """Solved in the stream's space instead of the norm's, the same edit missed its target
    (log-prob -1.4) and moved the other capitals by up to 6 nats (measured before the fix)."""
    from excise.editing import edit

    monkeypatch.setenv("EXCISE_HOME", str(tmp_path / "home"))
    facts = [QA(f"The capital of {c} is", f" {a}") for c, a in CAPITALS]
    model = teach(gemma3_with_gains(tiny_tokenizer), tiny_tokenizer, facts, steps=80)
    others = [(f"The capital of {c} is", f" {a}") for c, a in CAPITALS[1:]]
    wanted = [(requests()[0].text(), " Rome")]
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    result = edit(
        model, tiny_tokenizer, requests()[:1], "rome", stats_corpus=str(corpus), progress=False,
        **edit_options("rome"),
    )  # fmt: skip
    after = score_pairs(result.model, tiny_tokenizer, wanted + others, "raw").logprob
    assert float(after[0]) > -1.0 and bool((after[1:] > -0.5).all()), after


def test_statistics_files_say_whether_their_keys_are_weighed(tiny_tokenizer, tmp_path, monkeypatch):
    """A file of Gemma 3 statistics (keys weighed by 1 / rms(W k)) is refused for a model that
    needs them unweighed, and a file that says nothing (written before the weighing) reads as
    unweighed, so it is refused for Gemma 3 instead of read as if it were weighed."""
    from safetensors.torch import save_file

    from excise.editing.stats import check_stats_model, export_stats, import_stats, key_stats
    from excise.errors import DataError

    monkeypatch.setenv("EXCISE_HOME", str(tmp_path / "home"))
    model = gemma3_with_gains(tiny_tokenizer)
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    stats = key_stats(model, tiny_tokenizer, [1], tokens=200, corpus=corpus, progress=False)
    assert stats.weighed
    export_stats(stats, tmp_path / "gemma.safetensors")
    read = import_stats(tmp_path / "gemma.safetensors")
    assert read.weighed and check_stats_model(read, "f", stats.model, True) is read
    with pytest.raises(DataError, match="recompute"):
        check_stats_model(read, "f", stats.model, False)
    save_file({"layer1": stats.moments[1].contiguous()}, str(tmp_path / "old.safetensors"))
    with pytest.raises(DataError, match="unweighed"):
        check_stats_model(import_stats(tmp_path / "old.safetensors"), "f", "", True)
