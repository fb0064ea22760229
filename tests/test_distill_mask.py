"""The perturbation mask of ``distill`` ranked against text: entries ordinary text relies on stay."""

import pytest
import torch

from excise.errors import ConfigError
from excise.methods.distill import DistillConfig, fisher, forget_specific, text_examples
from tests.conftest import make_tiny_model, teach, tiny_task
from tests.test_tamper import context


def _context(tokenizer, options):
    task = tiny_task()
    model = make_tiny_model(tokenizer)
    teach(model, tokenizer, task.forget + task.retain, steps=20)
    return context(model, tokenizer, "distill", task, options)


def _share(masks, weights) -> float:
    """The share of the total ``weights`` that the masked entries hold."""
    chosen = sum(float(weights[n][m].sum()) for n, m in masks.items())
    return chosen / sum(float(w.sum()) for w in weights.values())


def test_ranking_against_text_moves_the_mask_off_text_entries(tiny_tokenizer):
    ctx = _context(tiny_tokenizer, {"init_method": None})
    texts = text_examples(tiny_tokenizer, 32, 16)
    plain = forget_specific(ctx, 0.02)
    ranked = forget_specific(ctx, 0.02, texts)
    size = sum(int(m.sum()) for m in ranked.values())
    assert size == pytest.approx(sum(int(m.sum()) for m in plain.values()), rel=0.1)
    assert any(not torch.equal(plain[n], ranked[n]) for n in plain)
    text = fisher(ctx, texts)
    assert _share(ranked, text) < 0.5 * _share(plain, text)


def test_prepare_ranks_against_text_only_when_asked(tiny_tokenizer, monkeypatch):
    import excise.methods.distill as distill

    seen = []
    original = distill.forget_specific

    def spy(ctx, fraction, texts=()):
        seen.append(len(texts))
        return original(ctx, fraction, texts)

    monkeypatch.setattr(distill, "forget_specific", spy)
    for passages in (0, 5):
        options = {"init_method": None, "perturb_fraction": 0.05, "mask_text_passages": passages}
        distill.prepare(_context(tiny_tokenizer, options))
    assert seen == [0, 5]
    with pytest.raises(ConfigError):
        DistillConfig(mask_text_passages=-1)
