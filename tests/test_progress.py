"""excise.progress: plain periodic lines in a log, nothing when quiet or in a short step."""

import io

import pytest

from excise import progress


@pytest.fixture(autouse=True)
def loud():
    progress.configure(quiet=False)
    yield
    progress.configure(quiet=False)


def test_plain_lines_in_a_log(capsys, monkeypatch):
    monkeypatch.setenv("EXCISE_PROGRESS_SECONDS", "0")
    with progress.stage("evaluate before"):
        total = sum(progress.progress(range(4), desc="score", unit="items"))
    assert total == 6
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert lines[0].startswith("[evaluate before] score: 1/4 items (25%), 0 s, ~0 s left")
    assert lines[-1].startswith("[evaluate before] score: 4/4 items (100%)")


def test_a_short_step_writes_nothing_and_quiet_nothing_at_all(capsys, monkeypatch):
    monkeypatch.setenv("EXCISE_PROGRESS_SECONDS", "20")
    with progress.progress(total=3, desc="train", unit="steps") as bar:
        bar.update(3)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("EXCISE_PROGRESS_SECONDS", "0")
    progress.configure(quiet=True)
    for _ in progress.progress(range(3), desc="train"):
        pass
    assert capsys.readouterr().err == ""


def test_lines_carry_the_postfix_and_end_with_a_closing_line():
    stream = io.StringIO()
    bar = progress.Lines(total=10, desc="[unlearn] train", unit="steps", every=0, stream=stream)
    bar.set_postfix({"loss": "0.5"})
    bar.update(4)
    bar.every = 1e9  # no more periodic lines: the close says where it ended
    bar.update(6)
    bar.close()
    bar.close()
    first, last = stream.getvalue().splitlines()
    assert first.startswith("[unlearn] train: 4/10 steps (40%), ") and first.endswith("; loss=0.5")
    assert last.startswith("[unlearn] train: 10/10 steps (100%), ") and "(done)" in last


def test_only_the_main_process_shows_progress(capsys, monkeypatch):
    monkeypatch.setenv("EXCISE_PROGRESS_SECONDS", "0")
    monkeypatch.setenv("RANK", "1")
    list(progress.progress(range(3), desc="score"))
    assert capsys.readouterr().err == ""


def test_a_recipe_takes_report_to():
    from excise.jobs.recipe import parse_recipe

    job = parse_recipe(
        {"task": "chem-symbols", "method": {"name": "npo"}, "out": "o", "report_to": "tensorboard"},
        "r.yaml",
    )
    assert job.report_to == "tensorboard" and job.logging_dir is None


def test_loading_and_saving_a_model_in_a_log_leave_the_hub_bars_off(
    tmp_path, tiny_tokenizer, monkeypatch
):
    """A log (or --quiet) turns the hub's bars off; loading a model must not turn them back on,
    which huggingface_hub answers with a warning in every log (seen in `excise demo`)."""
    import warnings

    from transformers.utils import logging as hf_logging

    from excise.models import load_model, save_model
    from tests.conftest import make_tiny_model

    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            folder = save_model(make_tiny_model(tiny_tokenizer), tiny_tokenizer, tmp_path / "m")
            load_model(str(folder))
        assert not hf_logging.is_progress_bar_enabled()
        assert not [w for w in caught if "progress bars" in str(w.message)]
    finally:
        hf_logging.enable_progress_bar()
