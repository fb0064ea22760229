"""The GPU paths: every command and method with the model on CUDA (`make test-gpu`).

The rest of the suite hides the GPU (conftest.py); these tests run only with EXCISE_TEST_GPU=1 on
a machine with one, and check that nothing mixes devices: training, scoring, editing, erasure and
the audit's attacks, through the Python API and the command line.
"""

from __future__ import annotations

import json

import pytest
import torch

from excise.editing import EDITORS
from excise.methods import all_methods
from tests.conftest import make_tiny_model, tiny_task, train_tiny

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no GPU visible (make test-gpu on a machine with one)"
)
WITHOUT_WARM_START = {"tar": {"init_method": None}, "distill": {"init_method": None}}


def on_cuda(model) -> bool:
    return all(p.device.type == "cuda" for p in model.parameters())


@pytest.mark.parametrize("name", sorted(all_methods()))
def test_every_method_trains_a_model_on_the_gpu(name, tiny_tokenizer):
    model = make_tiny_model(tiny_tokenizer).cuda()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    options = WITHOUT_WARM_START.get(name)
    log = train_tiny(model, tiny_tokenizer, name, steps=3, options=options, lr=1e-3)
    assert on_cuda(model)
    assert all(torch.isfinite(torch.tensor(entry["loss"])) for entry in log)
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_scoring_on_the_gpu_matches_the_cpu(tiny_tokenizer):
    from excise.scoring import score_pairs

    model = make_tiny_model(tiny_tokenizer)
    pairs = [(q.prompt, q.completion) for q in tiny_task().forget + tiny_task().retain]
    cpu = score_pairs(model, tiny_tokenizer, pairs, "raw")
    gpu = score_pairs(model.cuda(), tiny_tokenizer, pairs, "raw")
    assert torch.allclose(cpu.logprob, gpu.logprob, atol=1e-3)


@pytest.mark.parametrize("method", EDITORS.names())
def test_editing_a_model_on_the_gpu(method, tiny_tokenizer, tmp_path, monkeypatch):
    from excise.editing import edit
    from excise.scoring import score_pairs
    from tests.test_editing import _requests, edit_options, teach_capitals, write_corpus

    monkeypatch.setenv("EXCISE_HOME", str(tmp_path / "home"))
    model = teach_capitals(tiny_tokenizer).cuda()
    path = write_corpus(tmp_path / "corpus.jsonl")
    requests = _requests()
    pairs = [(r.text(), " " + r.target_new) for r in requests]
    before = score_pairs(model, tiny_tokenizer, pairs, "raw").logprob
    options = edit_options(method)
    result = edit(
        model, tiny_tokenizer, requests, method, stats_corpus=str(path), progress=False, **options
    )
    after = score_pairs(result.model, tiny_tokenizer, pairs, "raw").logprob
    assert on_cuda(result.model)
    assert (after > before).all()


def _cli_files(tmp_path):
    def write(name, rows):
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(path)

    forget = write("f.jsonl", [{"prompt": q.prompt, "completion": q.completion,
                                "paraphrases": list(q.paraphrases)} for q in tiny_task().forget])  # fmt: skip
    retain = write("r.jsonl", [{"prompt": q.prompt, "completion": q.completion}
                               for q in tiny_task().retain])  # fmt: skip
    return forget, retain


def test_commands_run_end_to_end_on_the_gpu(tiny_tokenizer, tmp_path, monkeypatch, capsys):
    from transformers import AutoModelForCausalLM

    from excise.cli import main
    from excise.models import default_device, save_model
    from tests.test_editing import write_corpus

    assert default_device().startswith("cuda")
    monkeypatch.setenv("EXCISE_HOME", str(tmp_path / "home"))
    base = str(save_model(make_tiny_model(tiny_tokenizer), tiny_tokenizer, tmp_path / "base"))
    forget, retain = _cli_files(tmp_path)
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps({
        "prompt": "The capital of {}", "subject": "France", "target_new": "Rome",
        "target_true": "Paris", "paraphrases": ["The capital of France"],
        "neighborhood": [{"prompt": "The capital of Spain is", "target": "Madrid"}],
    }) + "\n")  # fmt: skip
    requests, stats = str(requests), str(write_corpus(tmp_path / "corpus.jsonl"))
    common = ["--forget", forget, "--retain", retain, "--template", "raw"]
    runs = {
        "unlearn": ["unlearn", "--model", base, *common, "--method", "npo", "--steps", "3"],
        "audit": ["audit", "--model", base, "--original", base, *common, "--attacks",
                  "relearn,quantize,probe,logit_lens,paraphrase,in_context,orthogonalize,prune,mia"],
        "edit": ["edit", "--model", base, "--requests", requests, "--method", "memit",
                 "--stats-corpus", stats, "--set", "layers=[1,2]", "--set", "stats_tokens=4000",
                 "--set", "prefixes=0", "--preserve", retain, "--quiet"],
        "erase": ["erase", "--model", base, "--method", "leace", "--positive", forget,
                  "--negative", retain, "--layer", "1", "--template", "raw"],
    }  # fmt: skip
    for name, argv in runs.items():
        out = tmp_path / name
        code = main([*argv, "--out", str(out)])
        assert code == 0, (name, capsys.readouterr().err[-3000:])
        assert (out / "report.json").is_file(), name
        if (out / "model").is_dir():
            AutoModelForCausalLM.from_pretrained(out / "model")
