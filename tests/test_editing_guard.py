"""The drift guard: 50 sequential edits keep an unrelated probe where plain MEMIT drifts."""

from __future__ import annotations

import pytest

from excise.data.records import QA
from excise.editing.requests import EditRequest
from excise.errors import ConfigError
from tests.conftest import corpus, make_tiny_model, teach

LAYERS = [0, 1]
CAPITALS = {"France": "Paris", "Spain": "Madrid", "Italy": "Rome", "Germany": "Berlin"}
UNRELATED = [
    ("The element iron has the symbol", " Fe"),
    ("The element gold has the symbol", " Au"),
    ("The element silver has the symbol", " Ag"),
    ("The element copper has the symbol", " Cu"),
]


def _requests(count: int = 50) -> list[EditRequest]:
    """``count`` edits in sequence, each moving a country's capital to another one."""
    countries, cities = list(CAPITALS), list(CAPITALS.values())
    requests = []
    for i in range(count):
        country = countries[i % 4]
        new = cities[(i // 4 + 1 + i % 4) % 4]
        if new == CAPITALS[country]:
            new = cities[(i // 4 + 2 + i % 4) % 4]
        requests.append(EditRequest(str(i), "The capital of {}", country, new, CAPITALS[country]))
    return requests


@pytest.fixture(scope="module")
def taught(tiny_tokenizer):
    facts = [QA(p, a) for p, a in UNRELATED]
    facts += [QA(f"The capital of {c} is", " " + a) for c, a in CAPITALS.items()]
    return teach(make_tiny_model(tiny_tokenizer), tiny_tokenizer, facts, steps=80)


def _logprobs(model, tokenizer, pairs):
    from excise.scoring import score_pairs

    stats = score_pairs(model, tokenizer, pairs, "raw")
    return stats.logprob / stats.tokens.clamp(min=1)


def _sequence(model, tokenizer, **options):
    """Mean |change| of the unrelated answers' log-probabilities after 50 sequential edits, and
    the share of edits that held right after their own batch (new answer above the old)."""
    from excise.editing import edit
    from excise.editing.stats import KeyStats, compute

    texts = [t for t in corpus() if "capital" not in t]
    moments, count = compute(model, tokenizer, LAYERS, texts=texts, tokens=10_000, progress=False)
    requests = _requests()
    held: list[bool] = []

    def monitor(current) -> dict[str, float]:
        request = requests[len(held)]
        pairs = [
            (request.text(), " " + request.target_new),
            (request.text(), " " + request.target_true),
        ]
        new, old = _logprobs(current, tokenizer, pairs)
        held.append(bool(new > old))
        return {}

    before = _logprobs(model, tokenizer, UNRELATED)
    result = edit(
        model,
        tokenizer,
        requests,
        "memit",
        stats=KeyStats(moments, count, "tiny", "text"),
        batch_size=1,
        monitor=monitor,
        progress=False,
        preserve="none",
        layers=LAYERS,
        prefixes=0,
        v_steps=25,
        **options,
    )
    after = _logprobs(result.model, tokenizer, UNRELATED)
    assert len(held) == 50
    return float((after - before).abs().mean()), sum(held) / len(held)


def test_guard_keeps_unrelated_facts_over_50_sequential_edits(taught, tiny_tokenizer):
    baseline_drift, baseline_held = _sequence(taught, tiny_tokenizer)
    guarded_drift, guarded_held = _sequence(taught, tiny_tokenizer, guard=True)
    assert guarded_held >= 0.9, guarded_held  # the guard still makes every edit
    assert guarded_drift < 0.05, guarded_drift  # unrelated answers: within 0.05 nats
    assert baseline_drift > 0.5 and baseline_drift > 20 * guarded_drift, (
        baseline_drift,
        guarded_drift,
        baseline_held,
    )


def test_hold_rounds_write_again_the_edits_that_most_probable_left_short(taught, tiny_tokenizer):
    """Most-probable early stopping stops each shift as soon as its target is the argmax at the
    last edited layer; the spread write captures only part of it, so some edits do not hold.
    The guard's hold rounds write those again until they do (on the bundled model the plain
    early stop left 7 of 10 edits of a batch short)."""
    from excise.editing import edit
    from excise.editing.stats import KeyStats, compute
    from excise.scoring import score_pairs

    # statistics that include the edited prompts' keys and a heavy weight on them: a low capture
    moments, count = compute(
        taught, tiny_tokenizer, LAYERS, texts=corpus(), tokens=10_000, progress=False
    )
    requests = _requests(4)
    held = []
    for rounds in (0, 2):
        result = edit(
            taught,
            tiny_tokenizer,
            requests,
            "memit",
            stats=KeyStats(moments, count, "tiny", "text"),
            progress=False,
            preserve="none",
            layers=LAYERS,
            prefixes=0,
            most_probable=True,
            hold_rounds=rounds,
            mom2_weight=3000.0,
        )
        pairs = [(r.text(), " " + r.target_new) for r in requests]
        held.append(score_pairs(result.model, tiny_tokenizer, pairs, "raw").correct.tolist())
    assert sum(held[0]) < len(requests), held  # the early stop alone leaves edits short
    assert all(held[1]), held  # the hold rounds make every edit


def test_norm_anchor_pulls_drift_back_in_closed_form():
    """With no edit to make (zero residual), the anchored update undoes part of the drift."""
    import torch

    from excise.editing.memit import memit_update

    gen = torch.Generator().manual_seed(0)
    moment = torch.eye(6, dtype=torch.float64)
    keys = torch.randn(2, 6, generator=gen, dtype=torch.float64)
    residual = torch.zeros(2, 3, dtype=torch.float64)
    drift = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    assert float(memit_update(moment, keys, residual, 1.0).abs().max()) == 0.0
    pulled = memit_update(moment, keys, residual, 1.0, None, 10.0, drift)
    assert float((drift + pulled).norm()) < 0.5 * float(drift.norm())


@pytest.mark.parametrize(
    ("method", "options", "message"),
    [
        ("rome", {}, "works with memit and alphaedit"),
        ("memit", {"norm_anchor": -1.0}, "norm_anchor"),
        ("memit", {"max_update": 0.0}, "max_update"),
        ("alphaedit", {"hold_rounds": -1}, "hold_rounds"),
        ("alphaedit", {"stop_margin": -1.0}, "stop_margin"),
    ],
)
def test_guard_options_are_checked(method, options, message):
    from excise.editing import make_config
    from excise.editing.guard import guard_options

    with pytest.raises(ConfigError, match=message):
        make_config(method, guard_options(method, options))


SYMBOLS = ["Fe", "Au", "Ag", "Cu"]
ELEMENTS = ["iron", "gold", "silver", "copper", "Paris", "Rome", "Madrid", "Berlin"]
ELEMENTS += ["France", "Spain", "Italy", "Germany"]


def test_stop_margin_leaves_guarded_edits_a_lead_that_later_batches_erode_less(tiny_tokenizer):
    """12 edits of distinct subjects, one a batch (alphaedit under the guard). Stopped at a
    bare argmax, an edit holds right after its batch by a hair and later batches flip some;
    with the guard's margin (2 nats while optimising, half of it checked after the write)
    every edit starts with a lead of >= 1 nat and more of it is left at the end."""
    from excise.editing import edit
    from excise.editing.guard import GUARD, HOLD_SHARE
    from excise.editing.stats import KeyStats, compute
    from excise.editing.targets import target_margins

    facts = [QA(f"The symbol of {s}", " " + SYMBOLS[i % 4]) for i, s in enumerate(ELEMENTS)]
    model = teach(make_tiny_model(tiny_tokenizer), tiny_tokenizer, facts, steps=100)
    moments, count = compute(
        model, tiny_tokenizer, LAYERS, texts=corpus(), tokens=10_000, progress=False
    )
    requests = [
        EditRequest(str(i), "The symbol of {}", s, SYMBOLS[(i + 1 + i // 4) % 4], SYMBOLS[i % 4])
        for i, s in enumerate(ELEMENTS)
    ]
    runs = {}
    for margin in (0.0, GUARD["stop_margin"]):
        fresh: list[float] = []  # each edit's lead right after its own batch

        def monitor(current, fresh=fresh) -> dict[str, float]:
            done = requests[len(fresh) : len(fresh) + 1]
            fresh.extend(target_margins(current, tiny_tokenizer, done))
            return {}

        result = edit(
            model,
            tiny_tokenizer,
            requests,
            "alphaedit",
            stats=KeyStats(moments, count, "tiny", "text"),
            batch_size=1,
            monitor=monitor,
            progress=False,
            preserve="none",
            layers=LAYERS,
            prefixes=0,
            guard=True,
            stop_margin=margin,
            l2=0.01,  # the paper's 10 swamps a 128-wide tiny model's keys
            norm_anchor=0.0,  # scaled by C's mean eigenvalue, it swamps the tiny null space
        )
        final = target_margins(result.model, tiny_tokenizer, requests)
        runs[margin] = (fresh, final)
    (bare_fresh, bare_final), (kept_fresh, kept_final) = runs.values()
    need = HOLD_SHARE * GUARD["stop_margin"]
    assert min(kept_fresh) >= need > min(bare_fresh), (kept_fresh, bare_fresh)
    assert sum(x > 0 for x in kept_final) >= sum(x > 0 for x in bare_final), (
        kept_final,
        bare_final,
    )
    mean = sum(kept_final) / len(kept_final), sum(bare_final) / len(bare_final)
    assert mean[0] > mean[1] + 0.3, (mean, kept_final, bare_final)
