"""`excise --version`, `excise tasks` and the options' help: what each does and its default."""

import argparse
import importlib.metadata
import json

import pytest

from excise.cli import helptext, main, parser


def help_text(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal's width


def one_line(text: str) -> str:
    return " ".join(text.split())


def test_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"excise {importlib.metadata.version('excise')}\n"


@pytest.fixture
def no_model(monkeypatch):
    """Listing tasks must not load a model."""
    import excise.models

    def refuse(*args, **kwargs):
        raise AssertionError("excise tasks loaded a model")

    monkeypatch.setattr(excise.models, "load_model", refuse)


def test_tasks_lists_every_task_with_its_sizes(capsys, no_model):
    from excise.data.benchmarks import BENCHMARK_TASKS
    from excise.data.tasks import BUILTIN_TASKS, load_task
    from excise.editing.requests import builtin_requests

    assert main(["tasks"]) == 0
    out = one_line(capsys.readouterr().out)
    for name in (*BUILTIN_TASKS, *BENCHMARK_TASKS, "counterfact-mini"):
        assert f" {name} " in f" {out}", name
    chem = load_task("chem-symbols")
    assert f"forget {len(chem.forget)}, retain {len(chem.retain)}" in out
    assert f"requests {len(builtin_requests('counterfact-mini'))}" in out
    assert "forget 400, retain 3600" in out  # tofu:forget10 as published
    assert "questions 1273" in out  # wmdp:bio


def test_tasks_json(capsys, no_model):
    from excise.data.benchmarks import BENCHMARK_TASKS
    from excise.data.tasks import BUILTIN_TASKS, load_task

    assert main(["tasks", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    by_name = {e["name"]: e for e in entries}
    assert list(by_name) == [*BUILTIN_TASKS, *BENCHMARK_TASKS, "counterfact-mini"]
    for entry in entries:
        assert entry["measures"] and entry["source"] and entry["kind"]
        assert entry["sizes"] and all(
            isinstance(v, int) and v >= 0 for v in entry["sizes"].values()
        )
        assert any(entry["sizes"].values())
    for name in BUILTIN_TASKS:  # as shipped: no knowledge filter
        task, sizes = load_task(name), by_name[name]["sizes"]
        assert (sizes["forget"], sizes["retain"]) == (len(task.forget), len(task.retain))
        assert (sizes["forget_eval"], sizes["retain_eval"]) == (
            len(task.forget_eval),
            len(task.retain_eval),
        )
    assert by_name["tofu:forget01"]["sizes"]["forget"] == 40
    assert "locuslab/TOFU" in by_name["tofu:forget01"]["source"]


@pytest.mark.parametrize("command", ["unlearn", "audit", "edit", "erase"])
def test_help_shows_defaults_and_describes_common_options(capsys, command):
    text = help_text(capsys, command)
    assert "(default: float32)" in text and "(default: auto)" in text
    assert one_line(helptext.OVERWRITE) in text
    assert one_line(helptext.out_help("")) in text  # --out says what it writes
    assert "prompt format: raw (plain text) or chat" in text  # --template
    assert one_line(helptext.DTYPE) in text
    if command in ("unlearn", "audit", "erase"):
        assert "(default: smollm2-135m)" in text


def test_every_option_says_what_it_does():
    root = parser()
    commands = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        assert sub.description, f"excise {name} --help has no description"
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"excise {name} {action.option_strings[0]} has no help"


@pytest.mark.parametrize("command", ["erase", "bypass-check"])
def test_no_data_dir_where_there_is_none(capsys, command):
    assert "--data-dir" not in help_text(capsys, command)


def test_data_dir_where_there_is_one(capsys):
    assert "--data-dir DIR" in help_text(capsys, "unlearn")
