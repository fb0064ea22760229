"""The README is a newcomer's page and the docs site is whole: what the README shows runs.

The strict site build itself (every link and anchor resolves) is `make docs`, which `make test`
runs first; these tests check what mkdocs does not: the README's length and quick start, that the
nav names real pages, and that every command the README shows is one the CLI accepts.
"""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest
import yaml

from excise.cli import main, parser

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```", re.S | re.M)


def readme() -> str:
    return README.read_text(encoding="utf-8")


def section(text: str, title: str) -> str:
    """The body of the ``## title`` section."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def shell_blocks(text: str) -> list[str]:
    """Fenced blocks that hold commands (no language, or a shell), not Python or a tree."""
    return [body for lang, body in FENCE.findall(text) if lang in ("", "sh", "bash", "console")]


def commands(text: str) -> list[list[str]]:
    """Each ``excise ...`` line of the README's shell blocks, continuations joined, as argv."""
    found = []
    for block in shell_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip().startswith("excise "):
                found.append(shlex.split(line, comments=True)[1:])
    return found


def subcommands() -> dict[str, object]:
    (action,) = [a for a in parser()._actions if a.dest == "command"]
    return action.choices


def nav_pages(nav) -> list[str]:
    """Every page a mkdocs nav names, however deeply nested."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in nav_pages(value)]
    return [page for item in nav for page in nav_pages(item)]


def test_readme_fits_200_lines():
    assert len(readme().splitlines()) <= 200


def test_quick_start_is_exactly_make_demo_and_make_test():
    quick = section(readme(), "Quick start")
    blocks = FENCE.findall(quick)
    assert blocks, "the quick start shows no commands"
    lang, body = blocks[0]
    assert [line.strip() for line in body.splitlines() if line.strip()] == [
        "make demo",
        "make test",
    ]
    assert len(shell_blocks(quick)) == 1, "the quick start is two commands, nothing more"


def test_quick_start_shows_the_demo_table_and_its_run_time():
    quick = section(readme(), "Quick start")
    table = quick[quick.index("| metric | before | after |") :]
    for metric in ("forget accuracy", "retain accuracy", "perplexity"):
        assert f"| {metric}" in table
    assert re.search(r"\b\d+(\.\d+)? (min|s)\b", quick), "the quick start gives the demo's run time"
    assert "placeholder" not in quick.lower()


def test_every_excise_command_named_in_the_readme_is_a_sub_command():
    known = subcommands()
    text = readme()
    prose = FENCE.sub("", text)
    code = "\n".join(shell_blocks(text) + re.findall(r"`([^`\n]+)`", prose))
    named = set(re.findall(r"(?<![\w./-])excise ([a-z][a-z-]*)", code))
    assert named, "the README names no excise command"
    assert named <= set(known), f"not sub-commands: {sorted(named - set(known))}"


@pytest.mark.parametrize("argv", commands(readme()), ids=lambda argv: " ".join(argv)[:60])
def test_readme_command_parses_as_written(argv, capsys):
    """Every ``excise`` line the README shows is accepted by the parser (options included)."""
    if argv in (["--version"], ["--help"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 0
        return
    args = parser().parse_args(argv)
    assert args.command == argv[0]


def table_rows(title: str) -> set[str]:
    """The names in the first column of the README section's table."""
    return set(re.findall(r"^\| `([\w-]+)` \|", section(readme(), title), re.M))


def listed(capsys, command: str) -> list[tuple[str, str]]:
    """``(name, kind)`` for each entry ``excise methods`` / ``excise attacks`` prints (kind: the
    ``[remove]``-style tag after the name, "" where there is none)."""
    assert main([command]) in (0, None)
    out = capsys.readouterr().out
    return re.findall(r"^(\S+) +(?:\[(\w+)\])?", out, re.M)


def test_readme_methods_table_lists_what_excise_methods_lists(capsys):
    names = {name for name, kind in listed(capsys, "methods") if kind in ("remove", "helper")}
    assert table_rows("Methods") == names


def test_readme_attacks_table_lists_what_excise_attacks_lists(capsys):
    assert table_rows("Attacks") == {name for name, _ in listed(capsys, "attacks")}


def test_readme_editors_table_lists_the_edit_methods(capsys):
    editors = {name for name, kind in listed(capsys, "methods") if kind == "edit"}
    if not editors:  # an `excise methods` that lists removal methods only: `edit --help` names them
        (method,) = [a for a in subcommands()["edit"]._actions if a.dest == "method"]
        editors = set(re.findall(r"\w+", method.help.split("(default")[0])) - {"or"}
    assert table_rows("Editors") == editors


def test_readme_erasers_table_lists_the_erase_methods():
    (method,) = [a for a in subcommands()["erase"]._actions if a.dest == "method"]
    assert table_rows("Erasers") == set(method.choices)


def test_readme_python_example_uses_the_public_api():
    import excise

    (example,) = [body for lang, body in FENCE.findall(section(readme(), "Python API"))]
    tree = ast.parse(example)
    used = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "excise"
    }
    assert used and used <= set(excise.__all__), sorted(used - set(excise.__all__))


def test_readme_states_the_bundled_models_license():
    text = " ".join(readme().split())
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in text
    assert "Apache-2.0" in text


def test_every_nav_page_exists_and_every_page_is_in_the_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    assert config["theme"]["name"] == "material"
    assert config.get("strict") is True
    pages = nav_pages(config["nav"])
    docs = ROOT / config.get("docs_dir", "docs")
    missing = [page for page in pages if not (docs / page).is_file()]
    assert not missing, f"nav pages missing from {docs}: {missing}"
    on_disk = {str(p.relative_to(docs)) for p in docs.rglob("*.md")}
    assert on_disk == set(pages), f"pages outside the nav: {sorted(on_disk - set(pages))}"


def test_readme_links_to_docs_resolve():
    for target in re.findall(r"\]\(((?:docs|bench)/[^)#]+)", readme()):
        assert (ROOT / target).is_file(), target
