"""Where a training job writes, checked before the long work: its output folder, the checkpoints
beside it (``OUT.ckpt``) and its experiment trackers' logs (``OUT.runs``). What can fail fails
now, and nothing on disk changes."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from excise.errors import ConfigError
from excise.fsutil import check_checkpoints, check_output
from excise.train import check_resumable, tracking

log = logging.getLogger("excise")


@dataclass
class Places:
    """Where a run writes besides ``out``: its checkpoints and its trackers' logs."""

    checkpoints: Path | None
    trackers: list[str]
    logs: Path | None


def check_places(
    out: str | Path | None,
    *,
    overwrite: bool,
    inputs: dict[str, str | None],
    report_to: str | list[str] | None,
    logging_dir: str | None,
    resume: bool,
    settings: dict[str, Any],
) -> Places:
    """Check ``out`` against ``inputs``, the checkpoints (a saved one needs ``resume``, and must
    have been written with the same ``settings``) and the trackers and their logging folder.
    ``out=None`` writes nothing: no output and no checkpoints."""
    out = Path(out) if out is not None else None
    checkpoints = None
    if out is not None:
        check_output(out, overwrite=overwrite, inputs=inputs)
        checkpoints = out.with_name(out.name + ".ckpt")
        check_checkpoints(checkpoints)
    trackers, logs = tracking.parse_report_to(report_to), None
    if trackers:
        if out is None and not logging_dir:
            raise ConfigError("report_to without out needs logging_dir: where the logs go")
        logs = tracking.logging_dir(out if out is not None else logging_dir, logging_dir)
        outputs = {"--out": out, "OUT.ckpt": checkpoints} if out is not None else {}
        tracking.check_logging_dir(logs, outputs, inputs)
    elif logging_dir:
        log.warning("excise: warning: --logging-dir without --report-to: nothing is logged there")
    saved = checkpoints is not None and any(checkpoints.glob("step-*/state.json"))
    if saved and not resume:
        raise ConfigError(
            f"{checkpoints} holds a checkpoint of an interrupted run; pass --resume to "
            "continue it, or delete that folder to start again"
        )
    if resume and not saved:
        log.warning("excise: warning: no checkpoint in %s; starting from step 0", checkpoints)
    if resume and saved:  # a damaged checkpoint or other settings: now, not after evaluation
        check_resumable(checkpoints, settings)
    return Places(checkpoints, trackers, logs)
