"""Progress of the long stages: a bar on a terminal, plain lines in a log, nothing with --quiet.

:func:`progress` is the one way excise shows progress (the training loop, scoring and generation,
the knowledge filter, each audit attack, key statistics, editing):

- stderr is a terminal (or a Jupyter kernel): a tqdm bar that appears only after
  :data:`DELAY` seconds (short steps stay silent) and leaves no line behind;
- otherwise (a log file, CI, a pipe): one plain line every ``EXCISE_PROGRESS_SECONDS`` seconds
  (default :data:`EVERY`; 0 writes a line at every update), such as
  ``[evaluate before] score: 120/400 items (30%), 12 s, ~28 s left``, and a closing line once
  any was written; never a carriage return;
- :func:`configure` with ``quiet`` (the CLI's ``--quiet``) silences both, and keeps the
  Hugging Face libraries' own bars out of logs.

:func:`stage` names what runs (:meth:`Timer.stage` sets it, and times it): bars inside it read
``[stage] what``. Under ``accelerate launch`` only the process of rank 0 shows progress.
Imports stay light (tqdm is imported on a terminal only).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TextIO

DELAY = 2.0  # seconds before a terminal bar appears
EVERY = 20.0  # seconds between plain lines (EXCISE_PROGRESS_SECONDS overrides)
_QUIET = False
_STAGE: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("stage", default=())


def configure(*, quiet: bool = False) -> None:
    """``quiet``: no progress at all. Quiet or not on a terminal, the Hugging Face libraries'
    bars (downloads, dataset generation) are turned off too: they draw with carriage returns."""
    global _QUIET
    _QUIET = quiet
    if quiet or not interactive():
        _quiet_libraries()


def _quiet_libraries() -> None:
    for name in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        os.environ.setdefault(name, "1")
    # already imported: the environment is read at import, so tell them directly
    for module, function in (
        ("huggingface_hub.utils", "disable_progress_bars"),
        ("datasets.utils.logging", "disable_progress_bar"),
        ("transformers.utils.logging", "disable_progress_bar"),
    ):
        if module in sys.modules:
            with contextlib.suppress(Exception):
                getattr(sys.modules[module], function)()


def quiet() -> bool:
    return _QUIET


def interactive(stream: TextIO | None = None) -> bool:
    """A terminal, or a Jupyter kernel (whose stderr is no terminal but draws bars)."""
    stream = stream or sys.stderr
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):  # a closed or odd stream
        return False
    return "ipykernel" in sys.modules


def _main_process() -> bool:
    return int(os.environ.get("RANK", "0") or 0) == 0


def interval() -> float:
    try:
        return max(0.0, float(os.environ.get("EXCISE_PROGRESS_SECONDS", EVERY)))
    except ValueError:
        return EVERY


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Bars started inside read ``[name] what`` (nested stages join: ``[outer: inner]``)."""
    token = _STAGE.set((*_STAGE.get(), name))
    try:
        yield
    finally:
        _STAGE.reset(token)


class Timer:
    """Wall time of each named stage of a job, in order; ``echo`` (if given) hears
    ``[name] ...`` when a stage starts and ``[name] done in N s`` when it ends."""

    def __init__(self, echo: Callable[[str], None] | None = None) -> None:
        self.seconds: dict[str, float] = {}
        self.echo = echo

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.echo:
            self.echo(f"[{name}] ...")
        start = time.perf_counter()
        with stage(name):  # progress inside reads "[name] ..."
            yield
        self.seconds[name] = round(time.perf_counter() - start, 2)
        if self.echo:
            self.echo(f"[{name}] done in {self.seconds[name]:.1f} s")


def label(desc: str) -> str:
    names = _STAGE.get()
    if not names:
        return desc
    return f"[{': '.join(names)}]" + (f" {desc}" if desc else "")


def _seconds(value: float) -> str:
    value = int(round(value))
    return f"{value} s" if value < 120 else f"{value // 60} min {value % 60:02d} s"


class Lines:
    """The plain form: a line every ``every`` seconds on ``stream`` (None: silent). The same
    calls as tqdm's: iterate, ``update``, ``set_postfix``, ``close``, ``with``."""

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        *,
        total: float | None = None,
        desc: str = "",
        unit: str = "it",
        initial: float = 0,
        every: float = EVERY,
        stream: TextIO | None = None,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n, self.start_n, self.every, self.stream = initial, initial, every, stream
        self.postfix = ""
        self.started = self.last = time.monotonic()
        self.written: float | None = None  # the count of the last line written
        self.closed = False

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("this progress has no iterable; call update() instead")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> Lines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def set_postfix(self, values: Mapping[str, Any] | None = None, **more: Any) -> None:
        pairs = {**(values or {}), **more}
        self.postfix = ", ".join(f"{k}={v}" for k, v in pairs.items())

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def line(self, *, final: bool = False) -> str:
        elapsed = time.monotonic() - self.started
        count = f"{self.n:g}"
        if self.total:
            count += f"/{self.total:g} {self.unit} ({100 * self.n / self.total:.0f}%)"
        else:
            count += f" {self.unit}"
        text = f"{self.desc}: {count}, {_seconds(elapsed)}"
        done = self.n - self.start_n
        if final:
            text += " (done)"
        elif self.total and done > 0 and self.n < self.total:
            text += f", ~{_seconds(elapsed / done * (self.total - self.n))} left"
        return text + (f"; {self.postfix}" if self.postfix else "")

    def _write(self, text: str) -> None:
        if self.stream is not None:
            self.stream.write(text + "\n")
            self.stream.flush()
            self.written = self.n

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.stream is not None and now - self.last >= self.every:
            self.last = now
            self._write(self.line())

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.written is not None and self.written != self.n:  # a stage that showed progress
            self._write(self.line(final=True))  # says where it ended


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    total: float | None = None,
    desc: str = "",
    unit: str = "it",
    initial: float = 0,
    enabled: bool = True,
):
    """Progress over ``iterable`` (or ``update(n)`` calls up to ``total``): a tqdm bar on a
    terminal, plain lines otherwise, silent when not ``enabled``, with :func:`configure`'s
    ``quiet`` or outside the main process. Use it as an iterable or a context manager."""
    text = label(desc)
    show = enabled and not _QUIET and _main_process()
    if show and interactive():
        from tqdm.auto import tqdm

        return tqdm(
            iterable,
            total=total,
            desc=text,
            unit=unit,
            initial=initial,
            leave=False,
            delay=DELAY,
            dynamic_ncols=True,
            file=sys.stderr,
        )
    every = interval()
    stream = sys.stderr if show else None
    return Lines(
        iterable, total=total, desc=text, unit=unit, initial=initial, every=every, stream=stream
    )
