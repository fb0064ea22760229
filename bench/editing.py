"""Editing benchmarks on the bundled model (never part of `make test`).

    python bench/editing.py time      [--edits 10,100]      MEMIT wall time, cached vs uncached stats
    python bench/editing.py stats     [--sizes 1000,10000,100000] [--edits 30]
                                       edit quality vs the size of the key-statistics sample
    python bench/editing.py sequential [--edits 500] [--batch 10] [--methods alphaedit,memit]
                                       AlphaEdit vs MEMIT under the same sequential schedule
    python bench/editing.py nullspace  does the key moment have a null space? (no edit applied)
    python bench/editing.py damage    [--edits 10] [--variants JSON]
                                       one batch: unrelated facts lost to the edit vs to a random
                                       change of the same norm in the same weights
    python bench/editing.py ripple    [--edits 20] [--methods memit] [--options JSON]
                                       the same requests edited at once with and without
                                       --ripple: edit metrics (teacher forced and generation)
    python bench/editing.py sequential-report
                                       bench/results/editing-sequential.{json,md} from the traces

Every figure is measured in the same run on the same machine; ratios are what to compare.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
SEQUENTIAL_EDITS = 500  # the sequential schedule's length; `damage` measures the same facts


def _setup(threads: int, requests: str = "counterfact-mini"):
    torch.set_num_threads(threads)
    from excise.editing.requests import builtin_requests
    from excise.models import load_model

    model, tokenizer = load_model("smollm2-135m")
    return model, tokenizer, builtin_requests(requests)


def bench_time(args) -> None:
    import os

    from excise.editing import edit

    model, tokenizer, requests = _setup(args.threads)
    rows = []
    for n in [int(x) for x in args.edits.split(",")]:
        chosen = (requests * (n // len(requests) + 1))[:n]
        home = tempfile.mkdtemp()
        os.environ["EXCISE_HOME"] = home  # an empty cache: statistics computed in the run
        start = time.perf_counter()
        edit(model, tokenizer, chosen, "memit", progress=False, prefixes=args.prefixes)
        uncached = time.perf_counter() - start
        start = time.perf_counter()
        edit(model, tokenizer, chosen, "memit", progress=False, prefixes=args.prefixes)
        cached = time.perf_counter() - start
        shutil.rmtree(home, ignore_errors=True)
        rows.append(
            {"edits": n, "uncached_s": uncached, "cached_s": cached, "ratio": cached / uncached}
        )
        print(json.dumps(rows[-1]), flush=True)


def bench_stats(args) -> None:
    from excise.editing import edit
    from excise.editing.metrics import edit_metrics

    model, tokenizer, requests = _setup(args.threads)
    chosen = requests[: args.edits]
    for size in [int(x) for x in args.sizes.split(",")]:
        result = edit(
            model,
            tokenizer,
            chosen,
            "memit",
            progress=False,
            stats_tokens=size,
            prefixes=args.prefixes,
        )
        metrics = edit_metrics(result.model, tokenizer, chosen, generation=False)
        print(json.dumps({"stats_tokens": size, **metrics}), flush=True)


def _efficacy(model, tokenizer, requests) -> dict[str, float]:
    """Efficacy of ``requests`` on the edit prompt: P(new) > P(true) by mean token log-probability
    (CounterFact's efficacy score) and every new-target token the argmax (teacher forced)."""
    from excise.scoring import score_pairs

    new = score_pairs(model, tokenizer, [(r.text(), " " + r.target_new) for r in requests], "raw")
    old = score_pairs(model, tokenizer, [(r.text(), " " + r.target_true) for r in requests], "raw")
    mean_new = new.logprob / new.tokens.clamp(min=1)
    mean_old = old.logprob / old.tokens.clamp(min=1)
    return {
        "score": float((mean_new > mean_old).float().mean()),
        "tf": float(new.correct.float().mean()),
    }


def _sequential_file(name: str) -> Path:
    return RESULTS / f"editing-sequential-{name}.json"


def _drift(current, original, names: list[str]) -> float:
    """|W - W_0|_F / |W_0|_F over the edited weights together: how far the run has moved them."""
    now, start = dict(current.named_parameters()), dict(original.named_parameters())
    with torch.no_grad():
        moved = sum(float((now[n].double() - start[n].double()).pow(2).sum()) for n in names)
        return (moved / sum(float(start[n].double().pow(2).sum()) for n in names)) ** 0.5


def _sequential_variants(args) -> dict[str, dict]:
    """name -> options (with their ``method``): ``--variants`` when given, else one per method
    of ``--methods`` with ``--options``."""
    if args.variants:
        return json.loads(args.variants)
    options = json.loads(args.options)
    return {
        method + (f"-{args.label}" if args.label else ""): {"method": method, **options}
        for method in args.methods.split(",")
    }


def bench_sequential(args) -> None:
    """Each variant edits a fresh copy of the model, ``--batch`` requests at a time, in the same
    order. After every batch: efficacy of the batch just edited, retain accuracy and the drift of
    the edited weights from the original (``|W - W_0|_F / |W_0|_F``); every ``--full-every``
    batches (and after the last) also cumulative efficacy of all edits so far, multiple-choice
    accuracy and perplexity. ``--seconds``: a variant stops (after a full probe) once its run
    has taken that long. Traces are rewritten after every batch, so a stopped run keeps what it
    measured: one file per variant (``editing-sequential-NAME.json``; ``sequential-report``
    merges them), or all in ``--out NAME`` (``NAME.json`` and ``NAME.md``)."""
    from excise.editing import edit
    from excise.editing.layers import default_layers
    from excise.editing.utility import utility_probe

    model, tokenizer, requests = _setup(args.threads, args.requests)
    if args.edits > len(requests):
        raise SystemExit(f"{args.requests} has {len(requests)} requests, fewer than --edits")
    chosen = requests[: args.edits]
    variants = _sequential_variants(args)
    quick, full, retain_items = utility_probe(model, tokenizer, chosen)
    original = {**full(model), "efficacy_all": _efficacy(model, tokenizer, chosen)}
    print(json.dumps({"method": "original", **original}), flush=True)
    batches = (len(chosen) + args.batch - 1) // args.batch
    out = RESULTS / f"{args.out}.json" if args.out else None
    records: list[dict] = []  # with --out, earlier runs' variants of other names are kept
    if out is not None and out.is_file():
        records = [r for r in json.loads(out.read_text()) if r["method"] not in variants]
    for name, given in variants.items():
        options = dict(given)
        method = options.pop("method", "alphaedit")
        layers = options.get("layers") or default_layers(model)
        weights = [f"model.layers.{layer}.mlp.down_proj.weight" for layer in layers]
        trace: list[dict] = []
        record = {
            "method": name,
            "editor": method,
            "options": options,
            "requests": args.requests,
            "edits": len(chosen),
            "batch": args.batch,
            "prefixes": args.prefixes,
            "threads": args.threads,
            "retain_items": retain_items,
            "preserve": args.preserve,
            "original": original,
            "trace": trace,
            "finished": False,
            "date": time.strftime("%Y-%m-%d"),
        }
        records.append(record)
        started = time.perf_counter()

        def save(name=name, record=record) -> None:
            if out is not None:
                out.write_text(json.dumps(records, indent=1) + "\n")
            else:
                _sequential_file(name).write_text(json.dumps(record, indent=1) + "\n")

        def monitor(current, name=name, trace=trace, started=started, weights=weights) -> dict:
            index = len(trace)
            edited = chosen[: (index + 1) * args.batch]
            elapsed = time.perf_counter() - started
            over = args.seconds is not None and elapsed > args.seconds
            row = {
                "batch": index + 1,
                "edits": len(edited),
                "seconds": round(elapsed, 1),
                **quick(current),
                "drift": round(_drift(current, model, weights), 5),
                "efficacy_batch": _efficacy(current, tokenizer, edited[-args.batch :]),
            }
            if (index + 1) % args.full_every == 0 or index + 1 == batches or over:
                row.update(full(current))
                row["efficacy_all"] = _efficacy(current, tokenizer, edited)
            trace.append(row)
            print(json.dumps({"method": name, **row}), flush=True)
            save()
            return {"retain_accuracy": row.get("retain_accuracy", float("nan")), "go": -over}

        result = edit(
            model,
            tokenizer,
            chosen,
            method,
            batch_size=args.batch,
            monitor=monitor,
            monitor_key="go",
            min_monitor=0.0,
            progress=False,
            prefixes=args.prefixes,
            preserve=args.preserve,
            **options,
        )
        record.update(
            finished=result.stopped is None,
            stopped=result.stopped,
            config=result.config,
            preserved=result.preserved,
            batches=[{k: v for k, v in b.items() if k != "monitor"} for b in result.batches],
            seconds=time.perf_counter() - started,
        )
        save()
        del result
    if args.out:
        lines = _sequential_lines(records)
        (RESULTS / f"{args.out}.md").write_text("\n".join(lines))
        print("\n".join(lines))


def _nullspace_lines(rows: list[dict]) -> list[str]:
    lines = [
        "## Is there a null space? (`python bench/editing.py nullspace`)",
        "",
        "Per edited layer: eigenvalues of the key moment relative to their mean; for each "
        "threshold (fraction of the mean) the free directions and the share of key energy they "
        "hold for text keys, edit keys (subject token, 40 requests) and retain keys (150 "
        "chem-symbols prompts, every token).",
        "",
        "| layer | min/mean | max/mean | threshold | free | text | edit | retain |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for t in row["thresholds"]:
            lines.append(
                f"| {row['layer']} | {row['min/mean']:.3f} | {row['max/mean']:.1f} "
                f"| {t['threshold']} | {t['free']} | {t['text']:.3f} | {t['edit']:.3f} "
                f"| {t['retain']:.3f} |"
            )
    lines += [
        "",
        "Solvers on the same edit keys, 4 sequential batches of 10 with random residuals (no "
        "edit applied): capture = share of the residual written; damage/capture = output "
        "change on retain keys per unit written (lower is better); old = change on the earlier "
        "batches' keys (lower is better). Batch 1 / batch 4.",
        "",
        "| layer | solver | capture | damage/capture | old (batch 4) |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        for name, trace in row["solvers"].items():
            first, last = trace[0], trace[-1]
            lines.append(
                f"| {row['layer']} | {name} | {first['capture']:.2f} / {last['capture']:.2f} "
                f"| {first['damage/capture']:.3f} / {last['damage/capture']:.3f} "
                f"| {last['old']:.3f} |"
            )
    return lines + [""]


def _preserved(record: dict) -> str:
    from excise.editing.preserve import DEFAULTS

    if "preserve" not in record:
        return "none (run before preservation sets existed)"
    method = record.get("editor") or record["method"].split("-")[0]
    source = record["preserve"] or DEFAULTS.get(method, "none")
    count = f", {record['preserved']} texts" if "preserved" in record else ""
    return f"`{source}`{count}" + ("" if record["preserve"] else " (the method's default)")


def _cell(value) -> str:
    return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _sequential_lines(records: list[dict]) -> list[str]:
    """A markdown summary and per-batch tables of sequential traces."""
    cell = _cell
    original = records[0]["original"]
    lines = [
        "# Sequential editing under the same schedule",
        "",
        f"Model smollm2-135m, requests `{records[0]['requests']}` in file order, batches of "
        f"{records[0]['batch']}, {records[0]['threads']} CPU thread(s), prefixes "
        f"{records[0].get('prefixes', 2)}. Efficacy: new target more likely than the true one "
        "(score) / every new-target token the argmax (tf), teacher forced. `batch` = the batch "
        "just edited, `all` = every edit so far. Retain: the chem-symbols facts the original "
        "model answers that name no subject of the requests "
        f"({records[0].get('retain_items', '?')}); MC: general multiple choice (in brackets, where "
        "measured: on the questions that name no subject of the requests); ppl: perplexity "
        "of the fluency texts; drift: |W - W_0|_F / |W_0|_F over the edited weights.",
        "",
        f"Original model: retain {cell(original.get('retain_accuracy'))}, MC "
        f"{_mc(original)}, ppl {cell(original['perplexity'])}.",
        "",
        "| method | batches run | edits | eff. last batch score / tf | eff. all score / tf "
        "| retain | MC | ppl |",
        "|---|---|---|---|---|---|---|---|",
        f"| original | – | 0 | – | – | {cell(original.get('retain_accuracy'))} "
        f"| {_mc(original)} | {cell(original['perplexity'])} |",
    ]
    for record in records:
        last = record["trace"][-1] if record["trace"] else None
        full = next((r for r in reversed(record["trace"]) if "efficacy_all" in r), None)
        if last is None:
            continue
        lines.append(
            f"| {record['method']} | {len(record['trace'])} | {last['edits']} "
            f"| {cell(last['efficacy_batch']['score'])} / {cell(last['efficacy_batch']['tf'])} "
            + (
                f"| {cell(full['efficacy_all']['score'])} / {cell(full['efficacy_all']['tf'])} "
                f"(after {full['edits']}) | {cell(last.get('retain_accuracy'))} "
                f"| {_mc(full)} | {cell(full.get('perplexity'))} "
                f"(after {full['edits']}) |"
                if full
                else f"| – | {cell(last.get('retain_accuracy'))} | – | – |"
            )
        )
    lines.append("")
    for record in records:
        done = "finished" if record["finished"] else "stopped before the end (partial trace)"
        lines += [
            f"## {record['method']} ({len(record['trace'])} batches, {done})",
            "",
            f"options: `{json.dumps(record['options'])}`; preservation set: {_preserved(record)}",
            "",
            "| batch | edits | eff. batch score | eff. batch tf | eff. all score | retain | MC "
            "| ppl | drift | target NLL | s |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        nll = [b.get("target_nll") for b in record.get("batches", [])]
        for i, row in enumerate(record["trace"]):
            every = row.get("efficacy_all", {})
            lines.append(
                f"| {row['batch']} | {row['edits']} | {cell(row['efficacy_batch']['score'])} "
                f"| {cell(row['efficacy_batch']['tf'])} | {cell(every.get('score'))} "
                f"| {cell(row.get('retain_accuracy'))} | {_mc(row)} "
                f"| {cell(row.get('perplexity'))} | {row.get('drift', float('nan')):.4f} "
                f"| {cell(nll[i] if i < len(nll) else None)} | {row['seconds']:.0f} |"
            )
        lines.append("")
    return lines


def _mc(row: dict) -> str:
    """MC accuracy, and in brackets on the questions naming no edited subject (if measured)."""
    apart = row.get("mc_unrelated_accuracy")
    return _cell(row.get("mc_accuracy")) + (f" ({_cell(apart)})" if apart is not None else "")


def sequential_report(args) -> None:
    """Merge the per-method traces into ``editing-sequential.json`` and a markdown table."""
    records = [
        json.loads(path.read_text()) for path in sorted(RESULTS.glob("editing-sequential-*.json"))
    ]
    if not records:
        raise SystemExit("no traces: run `python bench/editing.py sequential` first")
    (RESULTS / "editing-sequential.json").write_text(json.dumps(records, indent=1) + "\n")
    lines = _sequential_lines(records)
    nullspace = RESULTS / "editing-nullspace.json"
    if nullspace.is_file():
        summary = lines.index("", lines.index("|---|---|---|---|---|---|---|---|"))
        lines[summary + 1 : summary + 1] = _nullspace_lines(json.loads(nullspace.read_text())) + [
            "(Measured with the earlier default statistics, the general text sample alone.)",
            "",
        ]
    (RESULTS / "editing-sequential.md").write_text("\n".join(lines))
    print("\n".join(lines))


def bench_nullspace(args) -> None:
    """Is there a null space to project onto? Per edited layer: the key moment's spectrum, how
    many directions each threshold frees and what share of the energy of text keys, edit keys
    (``--edits`` requests, subject token) and the chem-symbols retain prompts' keys (every token)
    they hold; then, for 4 sequential batches of 10 edit keys with random residuals, each solver's
    share of the residual written (capture) and the output change on retain keys per unit written
    (damage/capture) and on the earlier batches' keys (old). No edit is applied."""
    from excise.arch import block_part
    from excise.data.tasks import load_task
    from excise.editing.alphaedit import alphaedit_update, projector
    from excise.editing.layers import default_layers
    from excise.editing.locate import mean_by_owner, read_at
    from excise.editing.memit import memit_update
    from excise.editing.stats import key_stats
    from excise.editing.targets import context_prefixes, request_rows

    model, tokenizer, requests = _setup(args.threads, args.requests)
    layers = default_layers(model)
    stats = key_stats(model, tokenizer, layers, progress=False)
    chosen = requests[: args.edits]
    rows = request_rows(tokenizer, chosen, context_prefixes(2), "raw", target=False)
    edit_keys = read_at(model, rows, layers, tokenizer.pad_token_id, what="key")
    task = load_task("chem-symbols")
    captured: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    hooks = [
        block_part(model, layer, "mlp_out").register_forward_pre_hook(
            lambda _m, a, layer=layer: captured[layer].append(a[0][0].double())
        )
        for layer in layers
    ]
    with torch.no_grad():
        for fact in (task.forget_eval + task.retain_eval)[:150]:
            model(tokenizer(fact.prompt, return_tensors="pt").input_ids)
    for hook in hooks:
        hook.remove()
    generator = torch.Generator().manual_seed(0)
    solvers = {
        "memit": lambda c, k, r, past, d: memit_update(c, k, r, d),
        "alphaedit thr 0.5, no C (before)": lambda c, k, r, past, d: alphaedit_update(
            projector(c, 0.5), k, r, past, 10.0
        ),
        "alphaedit defaults (now)": lambda c, k, r, past, d: alphaedit_update(
            projector(c, 0.01), k, r, past, 10.0, c, d
        ),
    }
    out = []
    for layer in layers:
        moment = stats.covariance(layer).double()
        width = moment.shape[0]
        values, vectors = torch.linalg.eigh(moment)
        edit = mean_by_owner(edit_keys[layer], rows, len(chosen)).double()
        retain = torch.cat(captured[layer])
        row = {
            "layer": layer,
            "min/mean": float(values[0] / values.mean()),
            "max/mean": float(values[-1] / values.mean()),
            "thresholds": [],
            "solvers": {},
        }
        for threshold in (0.01, 0.1, 0.3, 0.5):
            free = values < threshold * values.mean()
            p = vectors[:, free] @ vectors[:, free].T

            def share(keys, p=p) -> float:
                return float(((keys @ p) * keys).sum() / (keys * keys).sum())

            row["thresholds"].append(
                {
                    "threshold": threshold,
                    "free": int(free.sum()),
                    "text": float(values[free].sum() / values.sum()),
                    "edit": share(edit),
                    "retain": share(retain),
                }
            )
        residual = torch.randn(len(chosen), 64, generator=generator, dtype=torch.float64)
        for name, solve in solvers.items():
            past = torch.zeros(width, width, dtype=torch.float64)
            trace = []
            for start in range(0, min(40, len(chosen)), 10):
                keys, target = edit[start : start + 10], residual[start : start + 10]
                update = solve(moment, keys, target, past, float(width))
                size = target.pow(2).sum(1).mean().sqrt()
                capture = float(((keys @ update.T) * target).sum() / target.pow(2).sum())
                damage = float((retain @ update.T).pow(2).sum(1).mean().sqrt() / size)
                old = edit[:start] @ update.T
                trace.append(
                    {
                        "capture": capture,
                        "damage/capture": damage / max(capture, 1e-12),
                        "old": float(old.pow(2).sum(1).mean().sqrt() / size) if start else 0.0,
                    }
                )
                past = past + keys.T @ keys
            row["solvers"][name] = trace
        out.append(row)
        print(json.dumps(row), flush=True)
    (RESULTS / "editing-nullspace.json").write_text(json.dumps(out, indent=1) + "\n")


def bench_damage(args) -> None:
    """One batch of ``--edits`` requests per variant (``--variants``: name -> options, each
    with its ``method``): the unrelated facts it costs (``utility_probe``'s set for the
    sequential schedule's requests, so the figures compare with its traces), efficacy, the
    norm of the change per weight, and the facts lost when the change in every edited weight
    is replaced by a random Gaussian one of the same Frobenius norm. Says whether damage
    follows how much an edit moves the weights or where it moves them."""
    from excise.editing import edit
    from excise.editing.utility import utility_probe

    model, tokenizer, requests = _setup(args.threads, args.requests)
    quick, _, count = utility_probe(model, tokenizer, requests[:SEQUENTIAL_EDITS])
    chosen = requests[: args.edits]
    rows = []
    for name, given in json.loads(args.variants).items():
        options = dict(given)
        method = options.pop("method", "alphaedit")
        result = edit(
            model, tokenizer, chosen, method, progress=False, prefixes=args.prefixes, **options
        )
        edited = result.model
        row = {
            "variant": name,
            "method": method,
            "options": options,
            "facts": count,
            "retain_edited": quick(edited)["retain_accuracy"],
            "efficacy": _efficacy(edited, tokenizer, chosen),
            "norms": {k: round(float(v.norm()), 3) for k, v in result.deltas.items()},
        }
        weights = dict(edited.named_parameters())
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for key, change in result.deltas.items():
                noise = torch.randn(change.shape, generator=generator, dtype=change.dtype)
                weights[key].add_((noise * change.norm() / noise.norm() - change).to(weights[key]))
        row["retain_random"] = quick(edited)["retain_accuracy"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    (RESULTS / "editing-damage.json").write_text(json.dumps(rows, indent=1) + "\n")


def bench_ripple(args) -> None:
    """The first ``--edits`` requests edited at once by each method, plain and with ripple (the
    implied facts the model knows, :mod:`excise.editing.ripple`); every edit metric teacher
    forced and by generation, on the requests only (the implied ones are not scored). Rows are
    appended to ``--out`` (default ``bench/results/editing-ripple.json``) as they finish;
    ``--ripple-modes on`` skips the plain edit."""
    from excise.editing import edit
    from excise.editing.metrics import edit_metrics

    model, tokenizer, requests = _setup(args.threads, args.requests)
    chosen = requests[: args.edits]
    options = json.loads(args.options)
    path = RESULTS / f"{args.out or 'editing-ripple'}.json"
    rows = json.loads(path.read_text()) if path.is_file() else []
    modes = [{"off": False, "on": True}[m] for m in args.ripple_modes.split(",")]
    for method in args.methods.split(","):
        for ripple in modes:
            started = time.perf_counter()
            result = edit(
                model,
                tokenizer,
                chosen,
                method,
                progress=False,
                prefixes=args.prefixes,
                preserve=args.preserve,
                ripple=(args.relations or True) if ripple else None,
                **options,
            )
            edited = time.perf_counter() - started
            metrics = edit_metrics(result.model, tokenizer, chosen, fluency_sample=0)
            row = {
                "method": method,
                "ripple": ripple,
                "edits": len(chosen),
                "implied": len(result.implied),
                "relations": args.relations or "shipped",
                "options": options,
                "prefixes": args.prefixes,
                "edit_s": round(edited, 1),
                "metrics": metrics,
                "implied_sample": result.implied,
                "date": time.strftime("%Y-%m-%d"),
            }
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "implied_sample"}), flush=True)
            path.write_text(json.dumps(rows, indent=1) + "\n")
            del result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "what",
        choices=(
            "time",
            "stats",
            "sequential",
            "sequential-report",
            "nullspace",
            "damage",
            "ripple",
        ),
    )
    parser.add_argument("--edits", default=None)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--methods", default="alphaedit,memit")
    parser.add_argument("--prefixes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--requests", default="counterfact-mini")
    parser.add_argument("--options", default="{}", help="JSON options given to every method")
    parser.add_argument("--full-every", type=int, default=5)
    parser.add_argument("--label", default="", help="suffix of the trace's name (other options)")
    parser.add_argument(
        "--variants",
        help="damage, sequential: JSON name -> options (with the method; default alphaedit)",
    )
    parser.add_argument("--seconds", type=float, help="sequential: stop a variant after this")
    parser.add_argument("--out", help="sequential: all variants in bench/results/OUT.{json,md}")
    parser.add_argument("--ripple-modes", default="off,on", help="ripple: off,on (either, both)")
    parser.add_argument("--relations", help="ripple: a relations file (default: the shipped one)")
    parser.add_argument(
        "--preserve", help="preservation set (facts, none, a file; default: the method's)"
    )
    args = parser.parse_args()
    if args.what == "time":
        args.edits = args.edits or "10,100"
        bench_time(args)
    elif args.what == "stats":
        args.edits = int(args.edits or 30)
        bench_stats(args)
    elif args.what == "nullspace":
        args.edits = int(args.edits or 40)
        bench_nullspace(args)
    elif args.what == "damage":
        args.edits = int(args.edits or 10)
        args.variants = args.variants or (
            '{"default": {}, "early_stop=0.5": {"early_stop": 0.5}, '
            '"mom2_weight=4d": {"mom2_weight": 6144}}'
        )
        bench_damage(args)
    elif args.what == "ripple":
        args.edits = int(args.edits or 20)
        bench_ripple(args)
    elif args.what == "sequential":
        args.edits = int(args.edits or SEQUENTIAL_EDITS)
        bench_sequential(args)
    else:
        sequential_report(args)


if __name__ == "__main__":
    main()
