"""Sequential AlphaEdit: with a true null space, preserved prompts are untouched batch after batch."""

from __future__ import annotations

import torch

from excise.editing.requests import EditRequest
from tests.conftest import corpus, make_tiny_model, teach

LAYERS = [0, 1]


def _requests() -> list[EditRequest]:
    swaps = [("France", "Rome", "Paris"), ("Germany", "Madrid", "Berlin")]
    swaps += [("Spain", "Berlin", "Madrid"), ("Italy", "Paris", "Rome")]
    return [
        EditRequest(str(i), "The capital of {}", subject, new, true)
        for i, (subject, new, true) in enumerate(swaps)
    ]


def _taught(tokenizer):
    from excise.data.records import QA

    facts = [
        QA(f"The capital of {c} is", f" {a}")
        for c, a in (
            ("France", "Paris"),
            ("Spain", "Madrid"),
            ("Italy", "Rome"),
            ("Germany", "Berlin"),
        )
    ]
    return teach(make_tiny_model(tokenizer), tokenizer, facts, steps=80)


@torch.no_grad()
def _logits(model, tokenizer, texts: list[str]) -> list[torch.Tensor]:
    model.eval()
    return [
        model(input_ids=torch.tensor([tokenizer(t, add_special_tokens=False).input_ids])).logits[0]
        for t in texts
    ]


def _new_logprobs(model, tokenizer, requests) -> torch.Tensor:
    from excise.scoring import score_pairs

    pairs = [(r.text(), " " + r.target_new) for r in requests]
    return score_pairs(model, tokenizer, pairs, "raw").logprob


def _run(model, tokenizer, stats, threshold: float):
    from excise.editing import edit

    return edit(
        model,
        tokenizer,
        _requests(),
        "alphaedit",
        batch_size=1,  # four sequential batches
        stats=stats,
        progress=False,
        preserve="none",  # the null space alone: its guarantee is what is checked
        layers=LAYERS,
        nullspace_threshold=threshold,
        l2=1e-2,
        mom2_weight=0.0,
        prefixes=0,
        v_steps=25,
    )


def test_projected_sequential_edits_leave_preserved_prompts_unchanged(tiny_tokenizer):
    from excise.editing.stats import KeyStats, compute

    model = _taught(tiny_tokenizer)
    # the preserved knowledge: a few prompts whose keys span a small subspace of the 128-wide
    # keys, so the null space is exact and AlphaEdit's guarantee can be checked to float precision
    preserved = [t for t in corpus() if "capital" not in t][:4]
    moments, count = compute(
        model, tiny_tokenizer, LAYERS, texts=preserved, tokens=10_000, progress=False
    )
    stats = KeyStats(moments, count, "tiny", "preserved")
    before = _logits(model, tiny_tokenizer, preserved)
    new_before = _new_logprobs(model, tiny_tokenizer, _requests())

    projected = _run(model, tiny_tokenizer, stats, threshold=1e-9)
    assert len(projected.batches) == 4
    assert all(b["nullspace_dims"][LAYERS[0]] < 128 for b in projected.batches)
    after = _logits(projected.model, tiny_tokenizer, preserved)
    scale = max(float(b.abs().max()) for b in before)
    drift = max(float((a - b).abs().max()) for a, b in zip(after, before, strict=True))
    # the key moment is accumulated from float32 products: "zero" eigenvalues are ~1e-7 of the
    # largest, so preserved keys keep a ~1e-4 relative trace in the computed null space
    assert drift < 1e-3 * scale, drift
    # every edit, the first ones included, still holds after the later batches
    new_after = _new_logprobs(projected.model, tiny_tokenizer, _requests())
    assert bool((new_after > new_before + 1.0).all()), (new_before, new_after)

    # control: the same edits without the projection (every direction free) move the prompts
    free = _run(model, tiny_tokenizer, stats, threshold=1e9)
    assert free.batches[-1]["nullspace_dims"][LAYERS[0]] == 128
    moved = _logits(free.model, tiny_tokenizer, preserved)
    control = max(float((a - b).abs().max()) for a, b in zip(moved, before, strict=True))
    assert control > 100 * drift and control > 1e-2 * scale, (control, drift)


def test_without_a_null_space_the_update_is_memits_plus_earlier_edits():
    from excise.editing.alphaedit import alphaedit_update, null_space, projector
    from excise.editing.memit import memit_update

    gen = torch.Generator().manual_seed(1)
    preserved = torch.randn(400, 16, generator=gen, dtype=torch.float64)
    moment = preserved.T @ preserved / 400  # full rank: no direction is free
    assert null_space(moment, 0.01).shape[1] == 0
    identity = projector(moment, 0.01)
    torch.testing.assert_close(identity, torch.eye(16, dtype=torch.float64))
    keys = torch.randn(3, 16, generator=gen, dtype=torch.float64)
    residual = torch.randn(3, 8, generator=gen, dtype=torch.float64)
    none = torch.zeros(16, 16, dtype=torch.float64)
    torch.testing.assert_close(
        alphaedit_update(identity, keys, residual, none, 0.0, moment, 16.0),
        memit_update(moment, keys, residual, 16.0),
    )
    # earlier edits' keys in C_p: the new update leaves them (almost) where they were
    earlier = torch.randn(4, 16, generator=gen, dtype=torch.float64) * 30
    update = alphaedit_update(identity, keys, residual, earlier.T @ earlier, 0.0, moment, 16.0)
    unprotected = memit_update(moment, keys, residual, 16.0)
    assert float((update @ earlier.T).norm()) < 0.05 * float((unprotected @ earlier.T).norm())
