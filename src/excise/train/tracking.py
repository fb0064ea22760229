"""Experiment tracking through accelerate's trackers: ``--report-to tensorboard,wandb,mlflow,...``.

A run logs its settings (hyperparameters), every training step's loss terms (``train/loss``,
``train/forget_nll``, ``train/lr``, ``train/grad_norm``... at their step), the evaluation
metrics before (step 0) and after training (the last step) as ``eval/<metric>``, and with an
audit the scorecard (``audit/forget_accuracy/<attack>``) and each curve of an attack
(``audit/<attack>/<model>/<variant>/<metric>`` at its step: relearning steps). Missing and
non-finite values are left out.

Trackers are accelerate's own classes (:mod:`accelerate.tracking`), with the names accelerate
gives them (``tensorboard``, ``wandb``, ``mlflow``, ``comet_ml``, ``aim``, ``clearml``,
``dvclive``, ``swanlab``, ``trackio``; ``all``: every one installed). Local logs go to
``--logging-dir`` (default ``OUT.runs``, beside ``--out``), never into an input nor into OUT
itself (written whole at the end): TensorBoard writes ``LOGGING_DIR/<run>``, wandb its local
files under ``LOGGING_DIR``; aim uses it as its repository. The rest log where their own
settings send them (``WANDB_*``, ``MLFLOW_TRACKING_URI``...), mlflow to
``LOGGING_DIR/mlruns`` when ``MLFLOW_TRACKING_URI`` is unset. Only the main process of
``accelerate launch`` logs.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import math
import numbers
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from excise.errors import ConfigError, ExciseError

PROJECT = "excise"  # the project (wandb, comet), experiment (mlflow) a run belongs to
# tracker name -> the package it needs (pip name, module)
PACKAGES = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow"),
    "comet_ml": ("comet-ml", "comet_ml"),
    "aim": ("aim", "aim"),
    "clearml": ("clearml", "clearml"),
    "dvclive": ("dvclive", "dvclive"),
    "swanlab": ("swanlab", "swanlab"),
    "trackio": ("trackio", "trackio"),
}


def _installed(name: str) -> bool:
    module = PACKAGES[name][1]
    found = importlib.util.find_spec(module) is not None
    if name == "tensorboard" and not found:  # accelerate also writes through tensorboardX
        found = importlib.util.find_spec("tensorboardX") is not None
    return found


def parse_report_to(value: str | Iterable[str] | None) -> list[str]:
    """Tracker names from ``--report-to`` (a comma list or a list; ``none`` or empty: none;
    ``all``: every installed one). An unknown name or a missing package is a one-line error."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    names = list(dict.fromkeys(str(n).strip().lower() for n in items if str(n).strip()))
    if names in ([], ["none"]):
        return []
    if "all" in names:
        return [n for n in PACKAGES if _installed(n)]
    for name in names:
        if name not in PACKAGES:
            raise ConfigError(
                f"--report-to: unknown tracker {name!r}; choose from {', '.join(PACKAGES)}, "
                "all or none (a comma list for several)"
            )
        if not _installed(name):
            raise ExciseError(
                f"--report-to {name} needs the {PACKAGES[name][0]} package, which is not "
                f"installed: pip install {PACKAGES[name][0]}"
            )
    return names


def logging_dir(out: str | os.PathLike, given: str | os.PathLike | None = None) -> Path:
    """Where local logs go: ``given``, else ``OUT.runs`` beside ``out``."""
    if given is not None and str(given).strip():
        return Path(given).expanduser()
    out = Path(out)
    return out.with_name(out.name + ".runs")


def check_logging_dir(
    folder: Path,
    outputs: Mapping[str, str | os.PathLike],
    inputs: Mapping[str, str | os.PathLike | None],
) -> None:
    """The logs go neither into, over nor around an output (OUT is written whole at the end,
    OUT.ckpt is emptied) or an input that is on disk; a file in the way is an error too. Checked
    before the long work."""
    target = folder.expanduser().resolve()
    places = [(label, value, True) for label, value in outputs.items()]
    places += [(label, value, False) for label, value in inputs.items()]
    for label, value, output in places:
        if value is None or not str(value).strip():
            continue
        given = Path(value).expanduser()
        if not output and not given.exists():  # a hub id or a bundled name
            continue
        given = given.resolve()
        if target == given or target.is_relative_to(given) or given.is_relative_to(target):
            where = "is" if target == given else "lies inside"
            where = where if given == target or target.is_relative_to(given) else "holds"
            raise ConfigError(
                f"the logging folder {folder} {where} {label} {value}; logs go beside the "
                "output (default OUT.runs): choose another --logging-dir"
            )
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--logging-dir {folder} is a file; give a folder")


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return value if math.isfinite(float(value)) else None


def _hparams(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flat ``a/b`` keys with str, number or bool values (what every tracker stores)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_hparams(value, name + "/"))
        elif value is None or isinstance(value, str | bool | int | float):
            if isinstance(value, float) and not math.isfinite(value):
                value = str(value)
            flat[name] = "none" if value is None else value
        else:
            flat[name] = str(value)
    return flat


def _accelerate_state() -> None:
    """accelerate's trackers log through its logger, which needs its process state: set it up
    as the training loop's Accelerator will (CPU without a GPU; DeepSpeed left to the loop)."""
    import torch
    from accelerate import PartialState

    from excise.train.zero3 import accelerate_without_deepspeed

    with accelerate_without_deepspeed():
        PartialState(cpu=not torch.cuda.is_available())


class Tracker:
    """The trackers of one run; a no-op without names. Every call is safe to repeat."""

    def __init__(
        self,
        names: list[str],
        *,
        folder: Path | None = None,
        run_name: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.names, self.folder = list(names), folder
        self.run_name = run_name or time.strftime("%Y%m%d-%H%M%S")
        self.config = dict(config or {})
        self.trackers: list[Any] = []
        self.finished = False

    def __bool__(self) -> bool:
        return bool(self.names)

    def where(self) -> str:
        """What to tell the user: where each tracker logs."""
        parts = []
        for name in self.names:
            if name == "tensorboard":
                parts.append(
                    f"tensorboard: {self.folder / self.run_name} "
                    f"(view with `tensorboard --logdir {self.folder}`)"
                )
            else:
                parts.append(f"{name}: run {self.run_name}")
        return "; ".join(parts)

    def _make(self, name: str):
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        cls = LOGGER_TYPE_TO_CLASS[name]
        folder = str(self.folder)
        if name == "tensorboard":
            return cls(self.run_name, folder)
        if name == "wandb":
            return cls(PROJECT, name=self.run_name, dir=folder)
        if name == "mlflow":
            if "MLFLOW_TRACKING_URI" not in os.environ:
                import mlflow

                mlflow.set_tracking_uri((self.folder / "mlruns").resolve().as_uri())
            return cls(experiment_name=PROJECT, run_name=self.run_name)
        if cls.requires_logging_directory:
            return cls(PROJECT, folder)
        return cls(PROJECT)

    def start(self) -> Tracker:
        """Open every tracker and store the run's settings."""
        if not self.names or self.trackers:
            return self
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ExciseError(
                f"cannot write the logging folder {self.folder} ({error.strerror or error}); "
                "choose another --logging-dir"
            ) from None
        _accelerate_state()
        for name in self.names:
            try:
                tracker = self._make(name)
                tracker.main_process_only = False  # only the main process makes a Tracker
                tracker.start()
            except ExciseError:
                raise
            except Exception as error:
                self.finish()
                first = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
                raise ExciseError(
                    f"--report-to {name}: the tracker did not start: {first}"
                ) from error
            self.trackers.append(tracker)
        atexit.register(self.finish)  # a run that fails still closes its logs
        if self.config:
            hparams = _hparams(self.config)
            for tracker in self.trackers:
                tracker.store_init_configuration(hparams)
        return self

    def log(self, values: Mapping[str, Any], step: int | None = None) -> None:
        """Log the finite numbers of ``values`` at ``step``."""
        if not self.trackers:
            return
        numbers_ = {k: v for k, v in values.items() if _number(v) is not None}
        if not numbers_:
            return
        for tracker in self.trackers:
            tracker.log(numbers_, step=step)

    def log_step(self, step: int, totals: Mapping[str, float]) -> None:
        """The training loop's ``on_step``: the step's loss terms, lr and gradient norm."""
        self.log({f"train/{k}": v for k, v in totals.items() if k != "step"}, step=step)

    def log_evaluation(self, metrics: Mapping[str, Any], step: int) -> None:
        """Evaluation metrics at ``step`` (0 before training, the last step after it)."""
        self.log({f"eval/{k}": v for k, v in metrics.items()}, step=step)

    def log_audit(self, audit: Mapping[str, Any], step: int) -> None:
        """The audit's scorecard at ``step`` and every attack curve at its own steps."""
        card = (audit.get("scorecard") or {}).get("forget_accuracy") or {}
        values = {f"audit/forget_accuracy/{k}": v for k, v in (card.get("attacked") or {}).items()}
        values["audit/forget_accuracy/clean"] = card.get("clean")
        values["audit/forget_accuracy/worst"] = card.get("worst")
        self.log(values, step=step)
        curves: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for name, result in (audit.get("results") or {}).items():
            if result.get("curve"):
                curves[(name, "unlearned")] = result["curve"]
        for role, rows in ((audit.get("relearn") or {}).get("curves") or {}).items():
            curves[("relearn", role)] = rows
        for (name, role), rows in curves.items():
            for row in rows:
                if _number(row.get("step")) is None:
                    continue
                variant = f"/{row['variant']}" if row.get("variant") else ""
                scalars = {
                    f"audit/{name}/{role}{variant}/{key}": value
                    for key, value in row.items()
                    if key not in ("step", "variant")
                }
                self.log(scalars, step=int(row["step"]))

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        atexit.unregister(self.finish)
        for tracker in self.trackers:
            # a tracker that cannot close must not hide the run's result
            with contextlib.suppress(Exception):
                tracker.finish()


def open_tracker(
    report_to: list[str],
    *,
    folder: Path,
    run_name: str | None = None,
    config: Mapping[str, Any] | None = None,
    main_process: bool = True,
) -> Tracker:
    """A started :class:`Tracker` for ``report_to`` (a no-op one without names, and outside the
    main process)."""
    if not main_process:
        report_to = []
    return Tracker(report_to, folder=folder, run_name=run_name, config=config).start()
