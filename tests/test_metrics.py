import math

import numpy as np
import pytest
import torch

from excise.data.encode import IGNORE
from excise.data.records import Text
from excise.metrics import evaluate, mc_accuracy, perplexity
from excise.metrics.quality import forget_quality, harmonic_mean, truth_ratios, truth_score
from excise.metrics.rouge import lcs_length, rouge_l_recall
from excise.scoring import score_pairs, sequence_stats
from tests.conftest import make_tiny_model, teach, tiny_task


def test_sequence_stats_by_hand():
    # vocabulary of 3; one sequence [0, 1, 2] whose targets are tokens 1 and 2
    logits = torch.log(torch.tensor([[[0.1, 0.7, 0.2], [0.5, 0.1, 0.4], [1 / 3, 1 / 3, 1 / 3]]]))
    labels = torch.tensor([[IGNORE, 1, 2]])
    stats = sequence_stats(logits, labels)
    assert math.isclose(float(stats.logprob[0]), math.log(0.7) + math.log(0.4), rel_tol=1e-5)
    assert int(stats.tokens[0]) == 2
    assert not bool(stats.correct[0])  # 0.5 beats 0.4 at the second target
    labels = torch.tensor([[IGNORE, 1, 0]])
    assert bool(sequence_stats(logits, labels).correct[0])


def test_rouge_l():
    assert lcs_length(["a", "b", "c", "d"], ["a", "x", "c", "d"]) == 3
    assert rouge_l_recall("Paris", "Paris, of course.") == 1.0
    assert rouge_l_recall("New York City", "York is big") == pytest.approx(1 / 3)
    assert rouge_l_recall("Fe", "I don't know") == 0.0


def test_truth_ratio_and_quality():
    ratios = truth_ratios(
        torch.log(torch.tensor([0.5, 0.1])),
        [torch.log(torch.tensor([0.1, 0.3])), torch.log(torch.tensor([0.4]))],
    )
    assert np.allclose(ratios, [0.4, 4.0])
    assert truth_score(ratios) == pytest.approx(0.3)
    rng = np.random.default_rng(0)
    same = forget_quality(rng.normal(size=200), rng.normal(size=200))
    different = forget_quality(rng.normal(size=200), rng.normal(3, 1, size=200))
    assert same > 0.05 > different
    assert harmonic_mean([0.5, 0.5]) == pytest.approx(0.5)
    assert harmonic_mean([1.0, 0.0]) == 0.0
    assert harmonic_mean([1.0, float("nan"), 0.25]) == pytest.approx(0.4)


def test_metrics_see_taught_knowledge(tiny_tokenizer):
    task = tiny_task()
    fresh = make_tiny_model(tiny_tokenizer)
    taught = teach(
        make_tiny_model(tiny_tokenizer), tiny_tokenizer, task.forget + task.retain, steps=60
    )
    fresh_eval = evaluate(fresh, tiny_tokenizer, task, generate=4).metrics
    taught_eval = evaluate(taught, tiny_tokenizer, task, generate=4).metrics
    assert taught_eval["forget_accuracy"] == 1.0 and fresh_eval["forget_accuracy"] == 0.0
    assert taught_eval["retain_prob"] > 0.5 > fresh_eval["retain_prob"]
    assert taught_eval["retain_rouge"] == 1.0
    assert taught_eval["forget_truth"] > fresh_eval["forget_truth"]
    for key in ("paraphrase_accuracy", "mc_accuracy", "model_utility"):
        assert 0.0 <= taught_eval[key] <= 1.0


def test_batched_scoring_equals_one_by_one(tiny_tokenizer, tiny_model):
    pairs = [("The capital of France is", " Paris"), ("Iron", " has the symbol Fe"), ("a", " b")]
    batched = score_pairs(tiny_model, tiny_tokenizer, pairs, "raw", batch_size=8)
    for i, pair in enumerate(pairs):
        single = score_pairs(tiny_model, tiny_tokenizer, [pair], "raw")
        assert torch.allclose(batched.logprob[i], single.logprob[0], atol=1e-4)


def test_mc_and_perplexity(tiny_tokenizer):
    task = tiny_task()
    as_mc = [Text(f"Question: {q.question}\nAnswer: {q.choices[q.answer]}") for q in task.utility]
    taught = teach(make_tiny_model(tiny_tokenizer), tiny_tokenizer, as_mc + task.fluency, steps=60)
    assert mc_accuracy(taught, tiny_tokenizer, task.utility) == 1.0
    fresh = make_tiny_model(tiny_tokenizer)
    text = [t.text for t in task.fluency]
    assert perplexity(taught, tiny_tokenizer, text) < perplexity(fresh, tiny_tokenizer, text) / 5


def test_head_on_targets_only_equals_full_logits(tiny_tokenizer, tiny_model):
    from excise.data.encode import collate, encode_pair
    from excise.scoring import forward_stats

    examples = [
        encode_pair(tiny_tokenizer, "The capital of France is", " Paris", "raw", 0),
        encode_pair(tiny_tokenizer, "Iron", " has the symbol Fe", "raw", 1),
    ]
    batch = collate(examples, tiny_tokenizer.pad_token_id)
    fast = forward_stats(tiny_model, batch)
    logits = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    full = sequence_stats(logits, batch["labels"])
    assert torch.allclose(fast.logprob, full.logprob, atol=1e-5)
    assert torch.equal(fast.tokens, full.tokens) and torch.equal(fast.correct, full.correct)
