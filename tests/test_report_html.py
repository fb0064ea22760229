"""report.html renders in headless Chromium with no errors and shows its plots.

.ci/run installs Debian's chromium; without it (a developer machine) the test is skipped, unless
EXCISE_REQUIRE_CHROMIUM=1 (set by .ci/run) turns the skip into a failure.
"""

import os
import shutil
import struct
import subprocess

import pytest

from excise.metrics import Evaluation
from excise.report import build_report, write_report
from tests.conftest import tiny_task

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
]


def chromium() -> str:
    path = (
        shutil.which("chromium")
        or shutil.which("chromium-browser")
        or shutil.which("google-chrome")
    )
    if path is None:
        if os.environ.get("EXCISE_REQUIRE_CHROMIUM"):
            pytest.fail("chromium is required here (EXCISE_REQUIRE_CHROMIUM=1) but not installed")
        pytest.skip("chromium not installed (.ci/run installs it)")
    return path


def sample_report():
    before = Evaluation(
        {"forget_accuracy": 1.0, "retain_accuracy": 1.0, "mc_accuracy": 0.7, "perplexity": 24.1}
    )
    after = Evaluation(
        {"forget_accuracy": 0.0, "retain_accuracy": 0.98, "mc_accuracy": 0.7, "perplexity": 24.2}
    )
    log = [
        {"step": s, "loss": 10.0 / s, "forget_mse": 9.0 / s, "lr": 1e-4, "grad_norm": 1.0}
        for s in range(1, 6)
    ]
    return build_report(
        model_spec="tiny",
        task=tiny_task(),
        method="rmu",
        method_options={},
        train={"steps": 5},
        before=before,
        after=after,
        log=log,
        timings={"unlearn": 1.0},
    )


@pytest.mark.parametrize("with_audit", [False, True])
def test_report_renders_in_headless_chromium(tmp_path, with_audit, tiny_tokenizer):
    browser = chromium()
    report = sample_report()
    if with_audit:
        from excise.attacks.scorecard import audit
        from tests.conftest import make_tiny_model, teach

        task = tiny_task()
        original = teach(
            make_tiny_model(tiny_tokenizer), tiny_tokenizer, task.forget + task.retain, steps=40
        )
        report["audit"] = audit(
            make_tiny_model(tiny_tokenizer), tiny_tokenizer, task, original=original,
            attacks=["relearn", "probe", "quantize"],
            budgets={"relearn": {"steps": (0, 2), "variants": ("forget_full",)}},
        )  # fmt: skip
    write_report(report, tmp_path)
    page = (tmp_path / "report.html").resolve().as_uri()
    profile = ["--user-data-dir=" + str(tmp_path / "profile")]
    dom = subprocess.run(
        [browser, *FLAGS, *profile, "--dump-dom", page], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    # the before/after bars and the loss curve; with an audit also relearning and attack bars
    assert dom.stdout.count("<svg") >= (4 if with_audit else 2)
    assert ("Relearning" in dom.stdout) == with_audit
    assert "<polyline" in dom.stdout and "<rect" in dom.stdout
    console_errors = [
        line for line in dom.stderr.splitlines() if "CONSOLE" in line and "ERROR" in line.upper()
    ]
    assert not console_errors and "Uncaught" not in dom.stderr
    shot = subprocess.run(
        [
            browser,
            *FLAGS,
            *profile,
            f"--screenshot={tmp_path / 'shot.png'}",
            "--window-size=1000,1200",
            page,
        ],
        capture_output=True,
        timeout=120,
    )
    assert shot.returncode == 0
    png = (tmp_path / "shot.png").read_bytes()
    width, height = struct.unpack(">II", png[16:24])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and (width, height) == (1000, 1200)
    assert len(png) > 20_000  # a blank page compresses to a few kB; charts and tables do not
