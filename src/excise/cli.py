"""The ``excise`` command. User errors end in one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from excise import helptext, progress
from excise.errors import ConfigError, ExciseError

DEMO_METHOD = "rmu"
# command modules that bring their own sub-command: each has ``add_parser(commands, add_common)``,
# which registers a parser with ``set_defaults(handler=...)``; imports stay light (no torch)
EXTENSIONS: tuple[str, ...] = (
    "excise.verify",
    "excise.editing.command",
    "excise.erasure.command",
    "excise.bypass_command",
)
TABLE = (
    "forget_accuracy",
    "paraphrase_accuracy",
    "retain_accuracy",
    "mc_accuracy",
    "model_utility",
    "perplexity",
)


def _echo(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _options(pairs: list[str] | None) -> dict[str, Any]:
    """``--set key=value`` pairs; values are read as YAML scalars (numbers, true/false, lists)."""
    options: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--set takes key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        try:
            options[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            raise ConfigError(f"--set {key}: cannot read value {raw!r}") from error
    return options


def _train_options(args: argparse.Namespace) -> dict[str, Any]:
    names = ("steps", "lr", "batch_size", "grad_accum", "seed", "checkpoint_every")
    options = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    if getattr(args, "quiet", False):
        options["progress"] = False
    return options


def _lora(args: argparse.Namespace):
    """LoRA settings from ``--lora R`` (with ``--lora-alpha``, ``--lora-targets``), or None."""
    if getattr(args, "lora", None) is None:
        for flag in ("lora_alpha", "lora_targets"):
            if getattr(args, flag, None) is not None:
                raise ConfigError(f"--{flag.replace('_', '-')} needs --lora R")
        return None
    from excise.lora import LoraSettings

    targets = args.lora_targets.split(",") if args.lora_targets else None
    return LoraSettings(args.lora, args.lora_alpha, targets)


def print_table(before: dict[str, float], after: dict[str, float]) -> None:
    print(f"{'metric':<22}{'before':>10}{'after':>10}")
    for key in TABLE:
        if key in after:
            print(f"{key:<22}{before.get(key, float('nan')):>10.3f}{after[key]:>10.3f}")


def _options_line(cls: type) -> str:
    from excise.registry import defaults

    return ", ".join(f"{k}={v!r}" for k, v in defaults(cls).items()) or "-"


def cmd_methods(args: argparse.Namespace) -> int:
    """Every removal method, editor and eraser with its options' real defaults."""
    from excise.editing import EDITORS
    from excise.erasure import ERASERS
    from excise.methods import METHODS, UNLEARNING

    for name, spec in METHODS.all().items():
        role = "remove" if name in UNLEARNING else "helper"
        print(f"{name:<10} [{role}] {spec.summary}")
        print(f"{'':<10} options: {_options_line(spec.config_cls)}")
        print(f"{'':<10} training defaults: {spec.train_defaults or '-'}")
    for kind, registry, command in (("edit", EDITORS, "edit"), ("erase", ERASERS, "erase")):
        for name, spec in registry.all().items():
            print(f"{name:<10} [{kind}] {spec.summary} (excise {command} --method {name})")
            print(f"{'':<10} options: {_options_line(spec.config_cls)}")
    return 0


def cmd_attacks(args: argparse.Namespace) -> int:
    from excise.attacks import all_attacks

    for name, spec in all_attacks().items():
        print(f"{name:<14} {spec.summary}")
        print(f"{'':<14} budget: {_options_line(spec.config_cls)}")
    return 0


def cmd_unlearn(args: argparse.Namespace, *, demo: bool = False) -> int:
    from excise.pipeline import run_unlearn
    from excise.train import is_main_process

    started = time.perf_counter()
    main_process = is_main_process()  # under `accelerate launch`, only rank 0 talks
    report = run_unlearn(
        model_spec=args.model,
        method=args.method,
        out=Path(args.out),
        task=args.task,
        forget=getattr(args, "forget", None),
        retain=getattr(args, "retain", None),
        template=getattr(args, "template", "auto"),
        filter_items=True if getattr(args, "filter_known", False) else None,
        method_options=_options(getattr(args, "set", None)),
        train_options=_train_options(args),
        overwrite=args.overwrite,
        resume=getattr(args, "resume", False),
        dtype=getattr(args, "dtype", "float32"),
        audit_attacks=_attacks(args.audit) if getattr(args, "audit", None) else None,
        allow_pickle=getattr(args, "allow_pickle", False),
        trust_remote_code=getattr(args, "trust_remote_code", False),
        echo=_echo if main_process else None,
        lora=_lora(args),
        merge=getattr(args, "merge", False),
        data_dir=getattr(args, "data_dir", None),
        gold_spec=getattr(args, "gold", None),
        utility=getattr(args, "utility", None),
        bypass=getattr(args, "bypass_check", False),
        report_to=getattr(args, "report_to", None),
        logging_dir=getattr(args, "logging_dir", None),
    )
    if main_process:
        print_unlearn(report, args.out, started)
    return 0


def print_unlearn(report: dict[str, Any], out: str | Path, started: float) -> None:
    print_table(report["before"], report["after"])
    if report.get("audit"):
        print_scorecard(report["audit"])
    if check := report.get("bypass"):
        print(f"bypass check: {check['verdict']} (layer {check['layer']}; see report.html)")
    lora = report.get("lora")
    written = ["model"] if not lora or lora["merged"] else []
    written += ["adapter"] if lora else []
    print(
        f"wrote {', '.join(f'{out}/{name}' for name in written)}, {out}/report.json, {out}/report.html"
    )
    if tracked := report.get("tracking"):  # --report-to
        print(f"logged to {', '.join(tracked['report_to'])}: {tracked['logging_dir']}")
    print(
        f"total {time.perf_counter() - started:.0f} s; stages: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in report["timings_s"].items())
    )


def cmd_run(args: argparse.Namespace) -> int:
    """``excise run recipe.yaml``: validate the recipe, print the plan, and (unless --dry-run) run it."""
    from excise.fsutil import check_output
    from excise.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    if args.out:
        recipe.out = args.out
    if args.overwrite:
        recipe.overwrite = True
    print(recipe.plan())
    out = Path(recipe.out)
    if args.dry_run and out.exists() and not recipe.overwrite:
        _echo(f"excise: warning: {out} exists; the run will refuse it unless you pass --overwrite")
    else:  # everything else about out (ownership, inputs, writability) fails now
        check_output(out, overwrite=recipe.overwrite, inputs={"the recipe": args.recipe})
    if args.dry_run:
        return 0
    if recipe.erasure:
        return run_erase_recipe(recipe, args)
    from excise.pipeline import run_unlearn

    started = time.perf_counter()
    arguments = recipe.pipeline_arguments()
    for key in ("report_to", "logging_dir"):  # the command line's choice over the recipe's
        if getattr(args, key, None) is not None:
            arguments[key] = getattr(args, key)
    report = run_unlearn(
        **arguments,
        resume=args.resume,
        allow_pickle=args.allow_pickle,
        trust_remote_code=args.trust_remote_code,
        echo=_echo,
    )
    print_unlearn(report, recipe.out, started)
    return 0


def run_erase_recipe(recipe, args: argparse.Namespace) -> int:
    """An erasure recipe (leace, ablate, clamp) runs as ``excise erase`` with its settings."""
    from excise.erasure.command import run

    erase_args = argparse.Namespace(
        model=recipe.model,
        task=recipe.task,
        forget=recipe.data.forget if recipe.data else None,
        retain=recipe.data.retain if recipe.data else None,
        template=recipe.template,
        dtype=recipe.dtype,
        filter_known=bool(recipe.filter_known),
        data_dir=recipe.data_dir,
        method=recipe.method.name,
        positive=None,
        negative=None,
        layer=None,
        set=[f"{key}={json.dumps(value)}" for key, value in recipe.method.options.items()],
        out=recipe.out,
        overwrite=recipe.overwrite,
        allow_pickle=getattr(args, "allow_pickle", False),
        trust_remote_code=getattr(args, "trust_remote_code", False),
    )
    return run(erase_args)


def _attacks(value: str) -> str | list[str]:
    return "all" if value == "all" else [a.strip() for a in value.split(",") if a.strip()]


def print_scorecard(audit: dict[str, Any]) -> None:
    card = audit["scorecard"]["forget_accuracy"]
    recovery = audit.get("recovery") or {}
    print(f"{'attack':<16}{'forget acc':>12}{'recovery':>10}")
    print(f"{'(clean)':<16}{card['clean']:>12.3f}")
    for name, value in card["attacked"].items():
        rec = recovery.get(name)
        print(f"{name:<16}{value:>12.3f}{'' if rec is None else f'{rec:>10.2f}'}")
    print(f"worst case: {card['worst']:.3f} ({card['worst_attack']})")
    relearn = audit.get("relearn") or {}
    for variant, ratio in (relearn.get("ratio") or {}).items():
        value = "n/a" if ratio.get("ratio") is None else f"{ratio['ratio']:.2f}"
        print(
            f"relearn ratio vs gold ({variant}): {value} [{ratio.get('bound')}] (1.0 = never learned)"
        )


def cmd_audit(args: argparse.Namespace) -> int:
    from excise.pipeline import run_audit

    report = run_audit(
        model_spec=args.model,
        original_spec=args.original,
        out=Path(args.out),
        task=args.task,
        forget=args.forget,
        retain=args.retain,
        template=args.template,
        attacks=_attacks(args.attacks),
        overwrite=args.overwrite,
        dtype=args.dtype,
        expect_hash=args.expect_hash,
        allow_pickle=args.allow_pickle,
        trust_remote_code=args.trust_remote_code,
        echo=_echo,
        data_dir=args.data_dir,
    )
    print_scorecard(report["audit"])
    print(f"audited weights sha256 {report['model_sha256']}")
    print(f"wrote {args.out}/report.json, {args.out}/report.html")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from excise.data.benchmarks import benchmark_reference
    from excise.models import load_model
    from excise.pipeline import evaluate_task, resolve_task

    options = {"allow_pickle": args.allow_pickle, "trust_remote_code": args.trust_remote_code}
    model, tokenizer = load_model(args.model, dtype=args.dtype, **options)
    reference = model
    if args.original:  # filter items by what the original model knew, not the evaluated one
        reference, _ = load_model(args.original, dtype=args.dtype, **options)
    task = resolve_task(
        reference,
        tokenizer,
        task=args.task,
        forget=args.forget,
        retain=args.retain,
        template=args.template,
        data_dir=args.data_dir,
    )
    reference = None
    if args.gold:  # a model never trained on the forget set (benchmarks' forget quality)
        reference = benchmark_reference(
            load_model(args.gold, dtype=args.dtype, **options)[0], tokenizer, task
        )
    utility = None
    if args.utility:
        from excise.lmeval import parse_utility

        utility = parse_utility(args.utility)
    result = evaluate_task(model, tokenizer, task, reference=reference, utility=utility)
    if args.json:
        print(json.dumps(result.metrics, indent=2))
    else:
        for key, value in result.metrics.items():
            print(f"{key:<22}{value:>10.3f}")
    return 0


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="smollm2-135m",
        help="the model: smollm2-135m (bundled), a local HF folder, a .gguf file or a hub id",
    )
    parser.add_argument(
        "--task",
        help="a built-in task (chem-symbols, fictitious, toxicity, bias) or a benchmark "
        "(tofu:forget10, muse:news, wmdp:bio, ...); `excise tasks` lists them with their sizes",
    )
    parser.add_argument(
        "--forget",
        help="instead of --task: what to remove, a records file (.jsonl/.json/.csv/.parquet), "
        "a datasets folder or a hub dataset id",
    )
    parser.add_argument("--retain", help="with --forget: what to keep, in the same formats")
    parser.add_argument(
        "--template", default="auto", choices=("auto", "raw", "chat"), help=helptext.TEMPLATE
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16", "float16"),
        help=helptext.DTYPE,
    )
    parser.add_argument(
        "--filter-known",
        action="store_true",
        help="keep only items the model answers correctly (built-in tasks always do)",
    )
    _add_loading(parser)


def _add_loading(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="load .bin (pickle) weights when a folder has no safetensors, with the restricted "
        "unpickler torch.load(weights_only=True)",
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the model's own Python code (auto_map) if it needs it; only for authors you trust",
    )


def _add_tracking(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--report-to",
        metavar="TRACKERS",
        help="log the training losses per step, the metrics before and after and the audit's "
        "curves to experiment trackers (accelerate's): tensorboard, wandb, mlflow, comet_ml, "
        "aim, clearml, dvclive, swanlab, trackio, all (every one installed); a comma list for "
        "several (default: none)",
    )
    parser.add_argument(
        "--logging-dir",
        metavar="DIR",
        help="where trackers write local logs (TensorBoard's event files) "
        "(default: OUT.runs, beside --out)",
    )


def _add_benchmark(parser: argparse.ArgumentParser, *, gold: bool = True) -> None:
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="for a benchmark --task: a folder with its files (TOFU, MUSE, WMDP as their authors "
        "publish them); without it they are read from the hub",
    )
    if gold:
        parser.add_argument(
            "--utility",
            metavar="lm-eval:TASKS",
            help="also score lm-evaluation-harness tasks (names, task .yaml files or folders; "
            "needs excise[lmeval])",
        )
        parser.add_argument(
            "--gold",
            metavar="MODEL",
            help="benchmarks: a model never trained on the forget set (TOFU retain model, MUSE "
            "retrain model) for TOFU forget quality and MUSE PrivLeak",
        )


def _version() -> str:
    """The installed distribution's version, else the package's ``__version__``."""
    import importlib.metadata

    try:
        return importlib.metadata.version("excise")
    except importlib.metadata.PackageNotFoundError:
        import excise

        return str(getattr(excise, "__version__", "unknown"))


def cmd_tasks(args: argparse.Namespace) -> int:
    """``excise tasks``: every task ``--task`` takes, its sizes and what it measures."""
    import textwrap

    from excise.data.catalog import catalog

    entries = catalog()
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    headings = {
        "built-in task": "built-in tasks (sizes as shipped, before the knowledge filter)",
        "benchmark": "benchmarks (sizes as their authors publish them)",
        "edit requests": "edit requests, for `excise edit --task`",
    }
    wrap = textwrap.TextWrapper(96, subsequent_indent=" " * 20, break_on_hyphens=False)
    kind = None
    for entry in entries:
        if entry["kind"] != kind:
            kind = entry["kind"]
            print(("" if entry is entries[0] else "\n") + headings.get(kind, kind) + ":")
        sizes = ", ".join(f"{key} {value}" for key, value in entry["sizes"].items())
        print(wrap.fill(f"  {entry['name']:<18}{entry['measures']}"))
        print(wrap.fill(f"{' ' * 20}{sizes}; {entry['source']}"))
    return 0


def _describe(commands: argparse._SubParsersAction) -> None:
    """Each command's ``--help`` opens with the line ``excise --help`` shows for it."""
    for action in commands._choices_actions:
        command = commands.choices[action.dest]
        command.description = command.description or action.help


def parser() -> argparse.ArgumentParser:
    root = helptext.Parser(
        prog="excise",
        description="Remove, bound and edit what a language model knows; audit that it holds.",
    )
    root.add_argument("--version", action="version", version=f"excise {_version()}")
    root.add_argument("-v", "--verbose", action="store_true", help="log each stage's progress")
    commands = root.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help=f"unlearn chem-symbols from the bundled model with {DEMO_METHOD}"
    )
    demo.add_argument(
        "--out",
        default="demo-out",
        help=helptext.out_help("model/, report.json, report.html, manifest.json, ..."),
    )
    demo.add_argument("--overwrite", action="store_true", help=helptext.OVERWRITE)
    demo.add_argument("--method", default=DEMO_METHOD, help="removal method (`excise methods`)")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_tracking(demo)
    demo.add_argument(
        "--use-case",
        choices=("toxicity", "bias", "privacy", "hazard"),
        help="run that use case's recipe (recipes/<use case>.yaml) instead; --method is ignored",
    )

    unlearn = commands.add_parser("unlearn", help="apply a removal method and write model + report")
    _add_common(unlearn)
    _add_benchmark(unlearn)
    unlearn.add_argument(
        "--method", required=True, help="removal method: npo, rmu, ... (`excise methods`)"
    )
    unlearn.add_argument(
        "--out",
        required=True,
        help=helptext.out_help(
            "model/ (a Hugging Face checkpoint with its model card), report.json, report.html, "
            "recipe.yaml, manifest.json; with --lora adapter/"
        ),
    )
    unlearn.add_argument("--overwrite", action="store_true", help=helptext.OVERWRITE)
    unlearn.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="method option, value read as YAML (repeatable; `excise methods` lists them)",
    )
    unlearn.add_argument("--steps", type=int, help="training steps (default: the method's)")
    unlearn.add_argument("--lr", type=float, help="learning rate (default: the method's)")
    unlearn.add_argument(
        "--batch-size", type=int, help="examples per micro-batch (default: the method's)"
    )
    unlearn.add_argument(
        "--grad-accum", type=int, help="micro-batches per optimizer step (default: the method's)"
    )
    unlearn.add_argument("--seed", type=int, help="random seed (default: 0)")
    unlearn.add_argument(
        "--checkpoint-every",
        type=int,
        help="save a resumable checkpoint every N steps (default: none)",
    )
    unlearn.add_argument("--resume", action="store_true", help="continue from OUT.ckpt")
    unlearn.add_argument(
        "--lora",
        type=int,
        metavar="R",
        help="train rank-R LoRA adapters (peft) on the layers the method trains; "
        "saved in OUT/adapter (lr default x10)",
    )
    unlearn.add_argument("--lora-alpha", type=float, help="LoRA alpha (default: 2 R)")
    unlearn.add_argument(
        "--lora-targets",
        metavar="NAMES",
        help="comma list of layer names to adapt (q_proj,v_proj,...); default every linear "
        "layer of the decoder blocks the method trains",
    )
    unlearn.add_argument(
        "--merge",
        action="store_true",
        help="with --lora: also write the merged weights as a plain checkpoint in OUT/model",
    )
    unlearn.add_argument(
        "--quiet", action="store_true", help="no progress bars (nor progress lines in a log)"
    )
    _add_tracking(unlearn)
    unlearn.add_argument(
        "--audit",
        nargs="?",
        const="all",
        metavar="ATTACKS",
        help="audit after unlearning (all, or a comma list)",
    )
    unlearn.add_argument(
        "--bypass-check",
        action="store_true",
        help="check whether the behaviour's direction survives in the weights and still works "
        "(flags a method that only bypasses it; excise bypass-check for options)",
    )

    audit = commands.add_parser(
        "audit", help="attack a changed model and write a worst-case scorecard"
    )
    _add_common(audit)
    _add_benchmark(audit, gold=False)
    audit.add_argument("--original", required=True, help="the model before the change")
    audit.add_argument(
        "--attacks", default="all", help="all, or a comma list (see `excise attacks`)"
    )
    audit.add_argument(
        "--out",
        required=True,
        help=helptext.out_help("report.json, report.html, recipe.yaml, manifest.json"),
    )
    audit.add_argument("--overwrite", action="store_true", help=helptext.OVERWRITE)
    audit.add_argument("--quiet", action="store_true", help="no progress bars")
    audit.add_argument(
        "--expect-hash",
        metavar="SHA256",
        help="refuse to audit unless the model's weights have this sha256 (model_sha256 in reports)",
    )

    evaluate = commands.add_parser("evaluate", help="score a model on a task")
    _add_common(evaluate)
    _add_benchmark(evaluate)
    evaluate.add_argument("--original", help="filter the task's items by what this model knows")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")

    for module in EXTENSIONS:
        importlib.import_module(module).add_parser(commands, _add_common)

    run = commands.add_parser("run", help="run a YAML recipe (see recipes/)")
    run.add_argument("recipe", help="recipe file (.yaml)")
    run.add_argument("--dry-run", action="store_true", help="validate and print the plan only")
    run.add_argument("--out", help="output folder instead of the recipe's out")
    run.add_argument("--overwrite", action="store_true", help=helptext.OVERWRITE)
    run.add_argument("--resume", action="store_true", help="continue from OUT.ckpt")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_tracking(run)
    _add_loading(run)

    commands.add_parser("methods", help="list methods, their options and defaults")
    commands.add_parser("attacks", help="list audit attacks and their default budgets")
    tasks = commands.add_parser(
        "tasks", help="list the built-in tasks and benchmarks, their sizes and what they measure"
    )
    tasks.add_argument("--json", action="store_true", help="print the list as JSON")
    _describe(commands)
    return root


def interrupted(interrupt: KeyboardInterrupt, out: str | None) -> str:
    """What an interrupted run left, naming only a checkpoint that is on disk."""
    from excise.train import latest_checkpoint

    folder = getattr(interrupt, "checkpoint", None)
    if folder is None and out:
        folder = Path(f"{out}.ckpt")
    saved = latest_checkpoint(folder) if folder is not None and folder.is_dir() else None
    step = getattr(interrupt, "step", None)
    where = f"interrupted after step {step}" if step is not None else "interrupted"
    if saved is None:
        return f"{where}; no checkpoint was saved and nothing was written"
    return f"{where}; checkpoint saved in {saved}; run the same command with --resume to continue"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s"
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # bars on a terminal, plain lines in a log, none with --quiet (excise.progress)
    progress.configure(quiet=getattr(args, "quiet", False))
    try:
        if getattr(args, "out", None) is not None and not str(args.out).strip():
            raise ConfigError("--out is empty; give the folder to write")
        if args.command == "methods":
            return cmd_methods(args)
        if args.command == "attacks":
            return cmd_attacks(args)
        if args.command == "tasks":
            return cmd_tasks(args)
        if args.command == "demo" and args.use_case:
            from excise.usecases import run_demo

            return run_demo(args.use_case, args.out, overwrite=args.overwrite, quiet=args.quiet)
        if args.command == "demo":
            args.model, args.task, args.forget, args.retain = (
                "smollm2-135m",
                "chem-symbols",
                None,
                None,
            )
            return cmd_unlearn(args, demo=True)
        if args.command == "unlearn":
            return cmd_unlearn(args)
        if args.command == "evaluate":
            return cmd_evaluate(args)
        if args.command == "audit":
            return cmd_audit(args)
        if args.command == "run":
            return cmd_run(args)
        if getattr(args, "handler", None) is not None:
            return args.handler(args)
    except ExciseError as error:
        one_line = " ".join(str(error).replace("\r", "\n").splitlines())
        print(f"excise: error: {one_line}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `excise methods | head`: the reader left; nothing to report
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush stays quiet
        return 0
    except OSError as error:
        if error.filename is None:  # not about a path the user gave: a real fault, shown whole
            raise
        name = str(error.filename)
        shown = name if len(name) <= 80 else name[:40] + "..." + name[-20:]
        print(f"excise: error: {error.strerror or error}: {shown}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        print(f"excise: {interrupted(interrupt, getattr(args, 'out', None))}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
