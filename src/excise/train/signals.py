"""How training stops early: Ctrl-C (SIGINT) or SIGTERM at a step boundary
(:func:`stop_flag`, :class:`TrainingInterrupted`), or a non-finite loss
(:class:`TrainingDiverged`)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from excise.errors import ExciseError
from excise.train.checkpoint import latest_checkpoint

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C; schedulers and `timeout` send SIGTERM


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM stopped training at a step boundary; ``checkpoint`` is where it was saved
    (or None)."""

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        super().__init__(step, checkpoint)
        self.step = step
        self.checkpoint = checkpoint


class TrainingDiverged(ExciseError):
    """A step's loss (or gradient norm) became non-finite: training stops there. The weights are
    not saved; a periodic checkpoint on disk is the last finite state."""

    def __init__(
        self, step: int, terms: list[str], totals: dict[str, float], checkpoint: Path | None
    ) -> None:
        self.step = step
        latest = latest_checkpoint(checkpoint) if checkpoint and checkpoint.is_dir() else None
        kept = (
            f"the last finite checkpoint is kept in {latest}; delete {checkpoint} before a new run"
            if latest is not None
            else "nothing was written"
        )
        values = ", ".join(f"{k}={totals[k]}" for k in terms)
        super().__init__(
            f"training diverged at step {step}: {values} (lr {totals['lr']:.3g}); lower --lr or "
            f"the method's scale and run again; {kept}"
        )


@contextlib.contextmanager
def stop_flag() -> Iterator[threading.Event]:
    """While active, the first SIGINT or SIGTERM only sets the flag (the loop stops at the next
    step boundary); the previous handlers come back at once, so a second signal acts as usual."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag  # signal handlers can only be set from the main thread
        return
    previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}

    def handler(signum, frame) -> None:
        flag.set()
        for number, old in previous.items():
            signal.signal(number, old)

    for number in STOP_SIGNALS:
        signal.signal(number, handler)
    try:
        yield flag
    finally:
        for number, old in previous.items():
            signal.signal(number, old)
