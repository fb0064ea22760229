"""report.html's example prompts render in headless Chromium: the tables, their escaped text and
the highlight of an answer that still gives the expected one, seen on a screenshot.

Skipped without chromium (as tests/test_report_html.py), unless EXCISE_REQUIRE_CHROMIUM=1.
"""

import subprocess

from excise.report import write_report
from excise.report.examples import combine
from tests.test_report_html import FLAGS, chromium, sample_report

HIGHLIGHT = (0xFF, 0xF1, 0xB8)  # .said in excise.report.html.STYLE


def report_with_examples():
    report = sample_report()
    chosen = {
        "forget": [
            ("The element iron has the symbol", " Fe"),
            ("The element gold has the symbol", " Au"),
        ],
        "paraphrase": [("Iron has the symbol", " Fe")],
        "retain": [("The capital of France is", " Paris")],
    }
    before = {
        "forget": [" Fe, and its number", " Au. It is a metal"],
        "paraphrase": [" Fe.\nIt"],
        "retain": [" Paris <b>not bold</b>"],
    }
    after = {
        "forget": [" I don't know", " unknown | symbol"],
        "paraphrase": ["\n\n"],
        "retain": [" Paris, of course"],
    }
    report["examples"] = combine(chosen, before, after)
    return report


def test_examples_render_and_show_in_a_screenshot(tmp_path):
    from PIL import Image

    browser = chromium()
    report = report_with_examples()
    assert [r["before_match"] for r in report["examples"]["forget"]] == [True, True]
    assert [r["after_match"] for r in report["examples"]["forget"]] == [False, False]
    write_report(report, tmp_path)
    page = (tmp_path / "report.html").resolve().as_uri()
    profile = ["--user-data-dir=" + str(tmp_path / "profile")]
    dom = subprocess.run(
        [browser, *FLAGS, *profile, "--dump-dom", page], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert html.count('<table class="examples">') == 3, html[:3000]
    for heading in ("Forgotten prompts", "Rephrased forgotten prompts", "Prompts to keep"):
        assert f"<h3>{heading}</h3>" in html
    assert "The element iron has the symbol" in html and "I don't know" in html
    assert "&lt;b&gt;not bold&lt;/b&gt;" in html and "<b>not bold</b>" not in html  # escaped
    assert "Fe. ↵ It" in html  # a newline shows as the return sign, not as a break
    assert "(blank)" in html  # an answer of only newlines
    console_errors = [
        line for line in dom.stderr.splitlines() if "CONSOLE" in line and "ERROR" in line.upper()
    ]
    assert not console_errors and "Uncaught" not in dom.stderr
    shot = tmp_path / "examples.png"
    run = subprocess.run(
        [
            browser,
            *FLAGS,
            *profile,
            f"--screenshot={shot}",
            "--window-size=1000,1400",  # the examples follow the first table
            page,
        ],
        capture_output=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (1000, 1400)
    colours = image.getcolors(maxcolors=1 << 20)
    highlighted = sum(
        count
        for count, rgb in colours
        if all(abs(a - b) <= 3 for a, b in zip(rgb, HIGHLIGHT, strict=True))
    )
    # the two forget rows and the rephrasing said the answer before, the retain row both times:
    # five highlighted cells, each some hundreds of pixels
    assert highlighted > 5 * 300, highlighted
    dark = sum(count for count, rgb in colours if max(rgb) < 100)
    assert dark > 5_000  # the tables' text is drawn, not a blank page
