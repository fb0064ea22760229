"""Length-sorted dynamic batching (excise.train.batch_indices with ``lengths``): a pure function of
(seed, draw), every item once per epoch, and less padding than random batches."""

from __future__ import annotations

import random

import pytest

from excise.data.encode import Example, collate
from excise.train import batch_indices, epoch_order


def mixed_lengths(n: int, seed: int = 0) -> list[int]:
    """Lengths spread from 3 to 60 tokens, like a set mixing short facts and long passages."""
    rng = random.Random(seed)
    return [rng.choice((3, 4, 5, 8, 12, 20, 33, 47, 60)) + rng.randrange(3) for _ in range(n)]


def padding_waste(lengths: list[int], batch_size: int, draws: int, sorted_batches: bool) -> float:
    """Share of the padded (batch, width) positions that are padding, over ``draws`` batches."""
    padded = real = 0
    for draw in range(draws):
        rows = batch_indices(
            len(lengths), batch_size, draw, seed=3, lengths=lengths if sorted_batches else None
        )
        padded += max(lengths[i] for i in rows) * len(rows)
        real += sum(lengths[i] for i in rows)
    return 1 - real / padded


@pytest.mark.parametrize("n, batch_size", [(100, 8), (37, 5), (8, 8), (3, 5)])
def test_same_seed_same_batches_and_other_seed_other_batches(n, batch_size):
    lengths = mixed_lengths(n)
    first = [batch_indices(n, batch_size, d, seed=1, lengths=lengths) for d in range(12)]
    again = [batch_indices(n, batch_size, d, seed=1, lengths=lengths) for d in range(12)]
    assert first == again
    assert all(len(rows) == batch_size for rows in first)
    if n > batch_size:
        other = [batch_indices(n, batch_size, d, seed=2, lengths=lengths) for d in range(12)]
        assert other != first


@pytest.mark.parametrize("n, batch_size", [(100, 8), (37, 5), (64, 8), (9, 4)])
def test_every_item_once_per_epoch(n, batch_size):
    lengths = mixed_lengths(n)
    # the stream is cut into draws; read three epochs' worth and split it at epoch boundaries
    draws = -(-3 * n // batch_size)
    stream = [i for d in range(draws) for i in batch_indices(n, batch_size, d, 0, lengths)]
    for epoch in range(3):
        assert sorted(stream[epoch * n : (epoch + 1) * n]) == list(range(n))
        assert sorted(epoch_order(n, batch_size, epoch, 0, lengths)) == list(range(n))


def test_sorted_batches_pad_less_than_random_ones():
    lengths = mixed_lengths(400)
    random_waste = padding_waste(lengths, 8, 100, sorted_batches=False)
    sorted_waste = padding_waste(lengths, 8, 100, sorted_batches=True)
    assert random_waste > 0.4  # the set really is mixed
    assert sorted_waste < random_waste / 2


def test_batches_within_a_window_hold_similar_lengths_but_vary_across_epochs():
    lengths = mixed_lengths(160)
    draws_per_epoch = 160 // 8
    epochs = [
        [frozenset(batch_indices(160, 8, e * draws_per_epoch + d, 0, lengths)) for d in range(20)]
        for e in range(2)
    ]
    # different epochs group items differently (the shuffle before sorting changes the windows)
    assert set(epochs[0]) != set(epochs[1])
    spreads = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in epochs[0]]
    assert sum(spreads) / len(spreads) < 20  # lengths span 3..62


def test_collate_pads_only_to_the_longest_item_of_the_batch():
    examples = [
        Example(tuple(range(1, n + 1)), tuple(range(1, n + 1)), i) for i, n in enumerate((3, 7, 5))
    ]
    batch = collate(examples, pad_id=0)
    assert batch["input_ids"].shape == (3, 7)
    assert batch["attention_mask"].sum(-1).tolist() == [3, 7, 5]


def test_without_lengths_the_shuffle_is_unchanged():
    # tar and distill draw batches without lengths: their streams stay what they were
    import torch

    order = torch.randperm(10, generator=torch.Generator().manual_seed(1 * 1_000_003 + 0)).tolist()
    assert batch_indices(10, 4, 0, seed=1) == order[:4]


def test_lengths_must_match_the_items():
    with pytest.raises(ValueError, match="lengths"):
        batch_indices(10, 4, 0, seed=0, lengths=[3] * 9)


def test_single_item_batches_keep_the_plain_shuffle():
    lengths = mixed_lengths(20)
    plain = [batch_indices(20, 1, d, seed=4) for d in range(40)]
    assert [batch_indices(20, 1, d, seed=4, lengths=lengths) for d in range(40)] == plain


def test_sorting_groups_make_the_stream_independent_of_the_micro_batch_size():
    # one process with batch 4 and 2 accumulation steps must draw what 2 processes with batch 8
    # share (the training loop passes group = batch_size * grad_accum)
    lengths = mixed_lengths(50)
    small = [i for d in range(30) for i in batch_indices(50, 4, d, 0, lengths, group=8)]
    large = [i for d in range(15) for i in batch_indices(50, 8, d, 0, lengths, group=8)]
    assert small == large
    # and every micro-batch of 4 inside a sorted group of 8 is itself length-homogeneous
    assert padding_waste(lengths, 8, 50, sorted_batches=True) < padding_waste(
        lengths, 8, 50, sorted_batches=False
    )
