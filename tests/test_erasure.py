"""Erasure guarantees on synthetic data and tiny random models: each test has an adversary (a fresh
probe, a projection, a reload) and a control that shows the adversary would succeed without it."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from excise.activations.fold import fold_affine
from excise.activations.probe import probe_accuracy
from excise.activations.states import block_states
from excise.cli import main
from excise.erasure.adapter import attach
from excise.erasure.concept import held_out_probe, probe_predictions
from excise.erasure.core import erase
from excise.erasure.inlp import fit_inlp
from excise.erasure.leace import fit_leace
from excise.models import save_model
from tests.conftest import make_tiny_model

ELEMENTS = ["iron", "gold", "silver", "copper"]
COUNTRIES = ["France", "Spain", "Italy", "Germany"]
ENDINGS = ["", " and", " with", " in"]
POSITIVE = [f"The element {e} has the symbol{s}" for e in ELEMENTS for s in ENDINGS]
NEGATIVE = [f"The capital of {c} is{s}" for c in COUNTRIES for s in ENDINGS]
TEXTS = ["The capital of France is Paris. The element iron has the symbol Fe."]


def encode(tokenizer, prompts):
    ids = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    width = max(map(len, ids))
    input_ids = torch.full((len(ids), width), tokenizer.pad_token_id)
    mask = torch.zeros_like(input_ids)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def stream(model, batch, layers):
    with torch.no_grad():
        states = block_states(model, batch, layers)
    keep = batch["attention_mask"].bool()
    return {layer: states[layer][keep].double() for layer in layers}


def synthetic(n: int, seed: int):
    """Labels linearly present in 8 correlated Gaussian features (a probe scores > 90%)."""
    mixing = torch.randn(8, 8, generator=torch.Generator().manual_seed(99))  # one distribution
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=generator)
    x = torch.randn(n, 8, generator=generator) @ mixing
    x[:, :2] += 6.0 * labels[:, None]
    return x, labels


@pytest.mark.parametrize("method", ["leace", "orth"])
def test_fresh_probe_is_at_chance_on_held_out_data(method):
    x_fit, y_fit = synthetic(10000, 0)
    x_held, y_held = synthetic(10000, 1)
    train = torch.arange(10000) % 2 == 0  # the probe's own split of the held-out data
    before, chance = probe_accuracy(x_held, y_held, train)
    eraser = fit_leace(x_fit, y_fit, method=method)
    after, _ = probe_accuracy(eraser(x_held), y_held, train)
    assert before > 0.9
    assert abs(after - chance) <= 0.02, (after, chance)


def test_inlp_is_an_orthogonal_projection_that_equalises_class_means():
    x, labels = synthetic(4000, 2)
    protect = torch.linalg.qr(torch.randn(8, 2, generator=torch.Generator().manual_seed(3)))[0]
    eraser = fit_inlp(x, labels, rounds=3, protect=protect)
    matrix = eraser.matrix.double()
    assert 1 < eraser.rank <= 4
    assert torch.allclose(matrix @ matrix, matrix, atol=1e-10)
    assert torch.allclose(matrix @ protect.double(), protect.double(), atol=1e-10)
    plain = fit_inlp(x, labels, rounds=3).matrix.double()  # nothing protected: orthogonal
    assert torch.allclose(plain, plain.T, atol=1e-10)
    erased = eraser(x.double())
    gap = erased[labels == 1].mean(0) - erased[labels == 0].mean(0)
    assert gap.norm() < 1e-8 * erased.norm(dim=-1).mean()
    x_held, y_held = synthetic(4000, 4)
    train = torch.arange(4000) % 2 == 0
    before, chance = probe_accuracy(x_held, y_held, train)
    after, _ = probe_accuracy(eraser(x_held), y_held, train)
    assert before > 0.9 and abs(after - chance) <= 0.02, (before, after, chance)


def test_held_out_probe_counts_items_and_pools_both_folds():
    generator = torch.Generator().manual_seed(5)
    groups = torch.arange(40).repeat_interleave(5)  # 40 items of 5 rows each
    labels = (groups % 2 == 0).long()
    noise = torch.randn(200, 6, generator=generator)
    separable = noise.clone()
    separable[:, 0] += 8.0 * labels
    clear = held_out_probe(separable, labels, groups)
    assert (clear.rows, clear.items) == (200, 40)
    assert clear.accuracy == 1.0 and clear.ci95 == 0.0 and clear.chance == 0.5
    blind = held_out_probe(noise, labels, groups)
    assert blind.ci95 > 0.05 and abs(blind.accuracy - blind.chance) < 2 * blind.ci95


def test_leace_on_tiny_model_states_leaves_a_fresh_probe_constant(tiny_tokenizer):
    """The guarantee on a real (tiny, random) model's states: a probe trained on the erased
    fit-side rows predicts one class for every other row, while before it read the concept."""
    model = make_tiny_model(tiny_tokenizer)
    prompts = POSITIVE + NEGATIVE
    labels = torch.tensor([1] * len(POSITIVE) + [0] * len(NEGATIVE))
    batch = encode(tiny_tokenizer, prompts)
    states = stream(model, batch, [1])[1].float()
    rows = labels[:, None].expand_as(batch["attention_mask"])[batch["attention_mask"].bool()]
    item = torch.arange(len(prompts))[:, None].expand_as(batch["input_ids"])
    fit = (item[batch["attention_mask"].bool()] % 2) == 0
    before, chance = probe_accuracy(states, rows, fit)
    assert before > chance + 0.2
    for eraser in (fit_leace(states[fit], rows[fit]), fit_inlp(states[fit], rows[fit], rounds=4)):
        predicted = probe_predictions(eraser(states), rows, fit)
        assert predicted.unique().numel() == 1, eraser.rank


def test_leace_is_the_closed_form_and_keeps_protected_directions():
    x, labels = synthetic(3000, 2)
    eraser = fit_leace(x, labels, shrinkage=False)
    # by hand: P = I - W^+ U U^T W, U spanning W Cov(x, z), W = Cov(x)^(-1/2)
    x64 = x.double()
    centered = x64 - x64.mean(0)
    covariance = centered.T @ centered / (len(x) - 1)
    values, vectors = torch.linalg.eigh(covariance)
    whiten = vectors @ torch.diag(values.rsqrt()) @ vectors.T
    z = labels.double()[:, None]
    u = whiten @ (centered.T @ (z - z.mean()) / (len(x) - 1))
    u = u / u.norm()
    expected = torch.eye(8, dtype=torch.float64) - torch.linalg.inv(whiten) @ u @ u.T @ whiten
    assert torch.allclose(eraser.matrix, expected, atol=1e-8)
    assert torch.allclose(eraser.matrix @ eraser.matrix, eraser.matrix, atol=1e-10)
    erased = eraser(x64)
    gap = erased[labels == 1].mean(0) - erased[labels == 0].mean(0)
    assert gap.norm() < 1e-8 < (x64[labels == 1].mean(0) - x64[labels == 0].mean(0)).norm()
    protect = torch.linalg.qr(torch.randn(8, 2, dtype=torch.float64))[0]
    guarded = fit_leace(x, labels, protect=protect)
    assert torch.allclose(guarded.matrix @ protect, protect, atol=1e-8)
    assert not torch.allclose(eraser.matrix @ protect, protect, atol=1e-3)
    again = guarded(x64)
    assert (again[labels == 1].mean(0) - again[labels == 0].mean(0)).norm() < 1e-8


def _family(kind: str):
    from transformers import GPT2Config, GPTNeoXConfig

    if kind == "gpt2":
        return AutoModelForCausalLM.from_config(
            GPT2Config(vocab_size=50, n_embd=32, n_layer=3, n_head=2, n_positions=32)
        )
    return AutoModelForCausalLM.from_config(
        GPTNeoXConfig(
            vocab_size=50,
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=32,
        )
    )


@pytest.mark.parametrize("kind", ["llama", "gpt2", "gpt_neox"])
def test_folded_projection_clears_every_layer(kind, tiny_tokenizer):
    model = make_tiny_model(tiny_tokenizer) if kind == "llama" else _family(kind).eval()
    hidden, depth = model.config.hidden_size, model.config.num_hidden_layers
    unit = torch.nn.functional.normalize(torch.randn(hidden), dim=0)
    batch = {"input_ids": torch.randint(3, 40, (3, 9)), "attention_mask": torch.ones(3, 9).long()}
    layers = list(range(-1, depth))
    before = stream(model, batch, layers)
    fold_affine(model, torch.eye(hidden) - torch.outer(unit, unit))
    after = stream(model, batch, layers)
    for layer in layers:
        ratio = (after[layer] @ unit.double()).abs() / after[layer].norm(dim=-1)
        assert ratio.max() < 1e-5, (kind, layer)
        assert ((before[layer] @ unit.double()).abs() / before[layer].norm(dim=-1)).max() > 1e-3


def test_ablate_zeroes_the_direction_on_held_out_prompts_and_reloads(tmp_path, tiny_tokenizer):
    model = make_tiny_model(tiny_tokenizer)
    original_head = model.lm_head.weight.detach().clone()
    changed, result = erase(model, tiny_tokenizer, "ablate", POSITIVE, NEGATIVE, texts=TEXTS)
    assert result.folded and result.metrics["relative_projection_before"] > 0.01
    assert result.metrics["relative_projection_after"] < 1e-4
    unit = result.tensors["direction"].double()
    held = [p + " the" for p in POSITIVE[:4] + NEGATIVE[:4]]  # prompts never seen
    layers = list(range(-1, 4))
    for layer, states in stream(changed, encode(tiny_tokenizer, held), layers).items():
        assert ((states @ unit).abs() / states.norm(dim=-1)).max() < 1e-4, layer
    # the tied unembedding was untied first and kept its weights
    assert not changed.config.tie_word_embeddings
    assert torch.equal(changed.lm_head.weight, original_head)
    assert not torch.equal(changed.model.embed_tokens.weight, original_head)
    save_model(changed, tiny_tokenizer, tmp_path / "m")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    ids = encode(tiny_tokenizer, held)
    with torch.no_grad():
        assert torch.equal(reloaded(**ids).logits, changed(**ids).logits)


def test_leace_folded_and_runtime_forms(tmp_path, tiny_tokenizer):
    model = make_tiny_model(tiny_tokenizer)
    changed, result = erase(
        model, tiny_tokenizer, "leace", POSITIVE, NEGATIVE, texts=TEXTS, layer=1, refit=1, rounds=2
    )
    metrics = result.metrics
    assert result.details["rank"] == 3 and metrics["probe_after_ci95"] >= 0
    for name in ("before", "runtime", "after"):
        assert 0 <= metrics[f"probe_{name}"] <= 1 and metrics[f"perplexity_{name}"] > 0
    assert metrics["class_gap_runtime"] < metrics["class_gap_before"]
    save_model(changed, tiny_tokenizer, tmp_path / "folded")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "folded").eval()
    ids = encode(tiny_tokenizer, POSITIVE[:3])
    with torch.no_grad():
        assert torch.equal(reloaded(**ids).logits, changed(**ids).logits)
    # runtime form: unchanged weights + a hook file that reproduces the exact eraser
    model = make_tiny_model(tiny_tokenizer)
    same, runtime = erase(
        model, tiny_tokenizer, "leace", POSITIVE, NEGATIVE, texts=TEXTS, layer=1, form="runtime"
    )
    assert not runtime.folded and runtime.adapter["hooks"][0]["kind"] == "affine"
    from excise.erasure import adapter

    save_model(same, tiny_tokenizer, tmp_path / "runtime")
    adapter.save(tmp_path / "runtime", runtime.adapter["hooks"], runtime.tensors)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "runtime").eval()
    original = stream(plain, ids, [1])[1]
    handles = attach(plain, tmp_path / "runtime")
    hooked = stream(plain, ids, [1])[1]
    for handle in handles:
        handle.remove()
    left, right, mean = (runtime.tensors[f"eraser.{k}"].double() for k in ("left", "right", "mean"))
    assert torch.allclose(hooked, original - ((original - mean) @ right.T) @ left.T, atol=1e-4)
    assert not torch.allclose(hooked, original, atol=1e-3)


def test_clamp_bounds_the_projection(tmp_path, tiny_tokenizer):
    ids = encode(tiny_tokenizer, [p + " the" for p in POSITIVE[:4] + NEGATIVE[:4]])
    model = make_tiny_model(tiny_tokenizer)
    changed, point = erase(
        model, tiny_tokenizer, "clamp", POSITIVE, NEGATIVE, texts=TEXTS, layer=1, value=0.25
    )
    unit = point.tensors["direction"].double()
    states = stream(changed, ids, [0, 1, 2, 3])
    assert (states[0] @ unit).abs().max() < 1e-4  # below the clamp layer: ablated
    for layer in (1, 2, 3):
        assert ((states[layer] @ unit) - 0.25).abs().max() < 1e-4, layer
    save_model(changed, tiny_tokenizer, tmp_path / "point")  # MLP biases were added: still plain
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "point").eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(**ids).logits, changed(**ids).logits, atol=1e-5)
    model = make_tiny_model(tiny_tokenizer)
    same, ranged = erase(
        model, tiny_tokenizer, "clamp", POSITIVE, NEGATIVE, texts=TEXTS, layer=1, form="range"
    )
    low, high = ranged.metrics["low"], ranged.metrics["high"]
    assert ranged.metrics["inside_share_before"] < 1 and ranged.metrics["inside_share_after"] == 1
    from excise.erasure import adapter

    save_model(same, tiny_tokenizer, tmp_path / "range")
    adapter.save(tmp_path / "range", ranged.adapter["hooks"], ranged.tensors)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "range").eval()
    unit = ranged.tensors["direction"].double()
    free = torch.cat([s @ unit for s in stream(plain, ids, [1, 2, 3]).values()])
    assert ((free < low - 1e-4) | (free > high + 1e-4)).any()  # control: unclamped goes outside
    attach(plain, tmp_path / "range")
    for layer, states in stream(plain, ids, [1, 2, 3]).items():
        projection = states @ unit
        assert (projection >= low - 1e-4).all() and (projection <= high + 1e-4).all(), layer


def test_adding_the_direction_shifts_the_stream_by_the_difference(tiny_tokenizer):
    ids = encode(tiny_tokenizer, NEGATIVE[:4])
    model = make_tiny_model(tiny_tokenizer)
    before = stream(model, ids, [0, 1])
    changed, result = erase(
        model, tiny_tokenizer, "ablate", POSITIVE, NEGATIVE, texts=TEXTS, layer=1, scale=1.0
    )
    after = stream(changed, ids, [0, 1])
    difference = result.tensors["difference"].double()
    assert torch.allclose(after[0], before[0], atol=1e-5)
    assert torch.allclose(after[1] - before[1], difference.expand_as(after[1]), atol=1e-4)


def _files(tmp_path):
    pos = tmp_path / "pos.jsonl"
    neg = tmp_path / "neg.jsonl"
    pos.write_text("\n".join(json.dumps({"text": p}) for p in POSITIVE) + "\n")
    neg.write_text("\n".join(json.dumps({"text": p}) for p in NEGATIVE) + "\n")
    return str(pos), str(neg)


@pytest.fixture
def tiny_dir(tmp_path, tiny_tokenizer):
    return str(save_model(make_tiny_model(tiny_tokenizer), tiny_tokenizer, tmp_path / "tiny"))


def test_cli_writes_model_and_report(tmp_path, tiny_dir, capsys):
    pos, neg = _files(tmp_path)
    out = tmp_path / "out"
    argv = ["erase", "--model", tiny_dir, "--method", "ablate", "--positive", pos]
    argv += ["--negative", neg, "--out", str(out), "--layer", "1", "--template", "raw"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["layer"] == 1 and report["erasure"]["relative_projection_after"] < 1e-4
    for name in (
        "model/model.safetensors",
        "model/README.md",
        "erasure.safetensors",
        "manifest.json",
    ):
        assert (out / name).is_file(), name
    AutoModelForCausalLM.from_pretrained(out / "model")
    assert main(argv) == 2 and "exists" in capsys.readouterr().err


def test_cli_errors_exit_2(tmp_path, tiny_dir, capsys):
    import shutil

    from transformers import OPTConfig

    pos, neg = _files(tmp_path)
    short = tmp_path / "short.jsonl"
    short.write_text('{"text": "The element iron"}\n{"text": "The element gold"}\n')
    opt = AutoModelForCausalLM.from_config(
        OPTConfig(vocab_size=400, hidden_size=16, ffn_dim=32, num_hidden_layers=2,
                  num_attention_heads=2, max_position_embeddings=64, word_embed_proj_dim=16)
    )  # fmt: skip
    opt_dir = tmp_path / "opt"
    opt.save_pretrained(opt_dir)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(f"{tiny_dir}/{name}", opt_dir / name)
    out = str(tmp_path / "out")
    base = ["erase", "--method", "ablate", "--out", out, "--template", "raw"]
    cases = [
        (["--model", tiny_dir, "--positive", str(tmp_path / "nope.jsonl"), "--negative", neg], "not found"),
        (["--model", tiny_dir, "--positive", str(short), "--negative", neg], "at least 4"),
        (["--model", tiny_dir, "--positive", pos, "--negative", neg, "--layer", "9"], "outside"),
        (["--model", str(opt_dir), "--positive", pos, "--negative", neg], "cannot fold"),
        (["--model", tiny_dir, "--positive", pos], "--negative"),
        (["--model", tiny_dir, "--positive", pos, "--negative", neg, "--task", "chem-symbols"], "give --task"),
        (["--model", tiny_dir, "--positive", pos, "--negative", neg, "--set", "zeta=1"], "unknown option"),
    ]  # fmt: skip
    for extra, message in cases:
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (extra, err)
    assert not (tmp_path / "out").exists()


def test_runtime_ablate_equalises_class_means_at_every_block(tmp_path, tiny_tokenizer):
    """form=runtime: one direction per block, each fitted on the stream the earlier ones leave
    (one replayed pass). Attached as hooks to a reloaded model, every block's fit-side class means
    are equal; a single folded direction leaves them apart at the blocks it was not fitted on."""
    from excise.activations.contrast import contrast
    from excise.activations.states import residual_states
    from excise.arch import num_layers
    from excise.erasure import adapter

    model = make_tiny_model(tiny_tokenizer)
    depth = num_layers(model)
    data = contrast(POSITIVE, NEGATIVE)
    same, result = erase(
        model, tiny_tokenizer, "ablate", POSITIVE, NEGATIVE, texts=TEXTS, form="runtime",
        positions="last",
    )  # fmt: skip
    assert not result.folded and [h["layer"] for h in result.adapter["hooks"]] == list(range(depth))
    save_model(same, tiny_tokenizer, tmp_path / "runtime")
    adapter.save(tmp_path / "runtime", result.adapter["hooks"], result.tensors)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "runtime").eval()

    def gaps(current) -> list[float]:
        found = residual_states(
            current, tiny_tokenizer, data.prompts, list(range(depth)), positions="last"
        )
        labels, fit = data.label[found.prompt], data.fit[found.prompt]
        out = []
        for layer in range(depth):
            x = found.by_layer[layer][fit].double()
            gap = x[labels[fit] == 1].mean(0) - x[labels[fit] == 0].mean(0)
            out.append(float(gap.norm() / x.norm(dim=-1).mean()))
        return out

    before = gaps(plain)
    handles = attach(plain, tmp_path / "runtime")
    after = gaps(plain)
    for handle in handles:
        handle.remove()
    assert min(before) > 1e-2
    assert max(after) < 1e-4, after  # the replayed fit matches a real forward with the hooks
    metrics = result.metrics
    assert metrics["perplexity_after"] > 0 and 0 <= metrics["probe_after_max"] <= 1
    folded, _ = erase(
        make_tiny_model(tiny_tokenizer), tiny_tokenizer, "ablate", POSITIVE, NEGATIVE,
        texts=TEXTS, layer=1, positions="last",
    )  # fmt: skip
    assert max(gaps(folded)) > 1e-2  # one direction everywhere: means still apart somewhere
