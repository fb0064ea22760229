"""Training checkpoints: ``FOLDER/step-N`` holds only the trainable tensors
(``trainable.safetensors``), the optimizer state (``optimizer.pt``), the torch RNG state and
``state.json`` (the step, the settings it was trained with, and which kind of launch wrote it).
Only the newest is kept; ``resume`` continues from it after checking the settings
(:func:`check_resumable` checks them before any long work).

A plain or data parallel run writes the optimizer state by position; a sharded one (FSDP,
DeepSpeed ZeRO-3: :mod:`excise.train.launch`) gathers whole tensors and the state by parameter
name, so such a run may resume on another process count, but not without sharding.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from excise import fsutil
from excise.errors import ConfigError, ExciseError
from excise.train.config import TrainConfig

if TYPE_CHECKING:
    from excise.train.launch import Launch

LAUNCHES = {  # Launch.written_as: (who wrote a checkpoint, how a run goes)
    "plain": ("an unsharded", "without sharding"),
    "fsdp": ("an FSDP", "under FSDP"),
    "deepspeed": ("a DeepSpeed ZeRO-3", "under DeepSpeed ZeRO-3"),
}


# settings a run may resume with changed (they do not change what is computed)
UNCHECKED = ("progress", "checkpoint_every", "gradient_checkpointing")
# settings checked only when not at their default, so checkpoints written before they were resume
OPTIONAL = {"optimizer_in_backward": False, "optimizer_states": "fp32"}


def latest_checkpoint(folder: Path) -> Path | None:
    steps = [p for p in folder.glob("step-*") if p.name.removeprefix("step-").isdigit()]
    steps.sort(key=lambda p: int(p.name.removeprefix("step-")))
    complete = [p for p in steps if (p / "state.json").is_file()]
    return complete[-1] if complete else None


def checkpoint_settings(config: TrainConfig, method_config: Any) -> dict[str, Any]:
    """What a checkpoint must have been trained with to be resumed (JSON-comparable)."""
    train = {k: v for k, v in asdict(config).items() if k not in UNCHECKED}
    for key, default in OPTIONAL.items():  # as before these settings were, at their defaults
        if train.get(key) == default:
            del train[key]
    method = asdict(method_config) if is_dataclass(method_config) else {}
    return json.loads(json.dumps({"train": train, "method": method}, default=str))


def read_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        int(state["step"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ExciseError(
            f"checkpoint {path} is damaged (state.json unreadable); delete {path} to resume from "
            "an earlier one, or the checkpoint folder to start again"
        ) from None
    return state


def check_settings(path: Path, saved: dict[str, Any] | None, settings: dict[str, Any] | None):
    """Refuse a checkpoint written with other settings, naming every one that changed; those
    ``settings["later"]`` names (e.g. ``train.lr``, known once the model loads) are left to the
    check the training loop makes then."""
    if settings is None or saved is None or saved == settings:
        return
    changed = sorted(
        f"{part}.{key}"
        for part in ("train", "method")
        for key in set(saved.get(part, {})) | set(settings.get(part, {}))
        if saved.get(part, {}).get(key) != settings.get(part, {}).get(key)
        and f"{part}.{key}" not in settings.get("later", ())
    )
    if not changed:
        return
    raise ConfigError(
        f"checkpoint {path} was written with other settings ({', '.join(changed)}); "
        "resume with the same settings, or delete the checkpoint folder to start again"
    )


def check_resumable(folder: Path, settings: dict[str, Any]) -> Path | None:
    """The checkpoint ``--resume`` would continue from, checked before any long work: readable,
    complete (tensor files' sizes) and written with ``settings``; None when there is none."""
    latest = latest_checkpoint(folder) if folder.is_dir() else None
    if latest is None:
        return None
    check_settings(latest, read_state(latest).get("settings"), settings)
    for name in ("trainable.safetensors", "rng.safetensors"):
        fsutil.check_safetensors(latest / name, "checkpoint file")
    if not (latest / "optimizer.pt").is_file():
        raise ExciseError(f"checkpoint {latest} lacks optimizer.pt; delete it to start again")
    return latest


def save_checkpoint(
    folder: Path,
    step: int,
    tensors: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    settings: dict[str, Any] | None = None,
    *,
    launch: str = "plain",
) -> None:
    """Write ``step``'s checkpoint; ``launch`` (:attr:`Launch.written_as`) says who wrote it: a
    sharded run's optimizer state is keyed by parameter name, a plain run's by position."""
    target = folder / f"step-{step}"
    tmp = folder / f".step-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
        tmp / "trainable.safetensors",
    )
    torch.save(optimizer_state, tmp / "optimizer.pt")
    save_file({"torch": torch.get_rng_state()}, tmp / "rng.safetensors")
    by_name = launch != "plain"  # also read by checkpoints written before "launch" was
    state = {"step": step, "settings": settings, "optimizer_by_name": by_name, "launch": launch}
    (tmp / "state.json").write_text(json.dumps(state))
    tmp.rename(target)
    for old in folder.glob("step-*"):  # keep only the newest
        if old != target:
            shutil.rmtree(old, ignore_errors=True)


def write_checkpoint(
    folder: Path,
    step: int,
    launch: Launch,
    named: dict[str, torch.nn.Parameter],
    optimizer,
    settings: dict[str, Any],
) -> None:
    """Every process calls this; the main process writes (when sharded, after gathering)."""
    whole = launch.checkpoint_state(named, optimizer)  # when sharded, a collective
    if whole is not None:
        tensors, optimizer_state = whole
        save_checkpoint(folder, step, tensors, optimizer_state, settings, launch=launch.written_as)
    launch.accelerator.wait_for_everyone()


def load_checkpoint(
    path: Path,
    launch: Launch,
    named: dict[str, torch.nn.Parameter],
    optimizer,
    settings: dict[str, Any] | None = None,
) -> int:
    """Load the checkpoint at ``path`` into the trained weights, the optimizer and the RNG;
    return its step. Refused when another kind of launch or other settings wrote it."""
    state = read_state(path)
    written = state.get("launch") or ("fsdp" if state.get("optimizer_by_name") else "plain")
    if written != launch.written_as:
        raise ConfigError(
            f"checkpoint {path} was written by {LAUNCHES[written][0]} run and cannot be resumed "
            f"{LAUNCHES[launch.written_as][1]}; resume with the same kind of launch, or "
            "delete the checkpoint folder to start again"
        )
    check_settings(path, state.get("settings"), settings)
    for name in ("trainable.safetensors", "rng.safetensors"):
        fsutil.check_safetensors(path / name, "checkpoint file")
    tensors = load_file(path / "trainable.safetensors")
    if set(tensors) != set(named):
        raise ExciseError(
            f"checkpoint {path} was written for other trainable weights; cannot resume"
        )
    for name, param in named.items():
        launch.load_whole(param, tensors[name])
    # weights_only: the safe unpickler, which refuses arbitrary objects
    try:
        optimizer_state = torch.load(path / "optimizer.pt", weights_only=True)
    except Exception as error:  # truncated or foreign: torch raises several types
        raise ExciseError(
            f"checkpoint {path} is damaged (optimizer.pt: {str(error).splitlines()[0][:80]}); "
            "delete the checkpoint folder to start again"
        ) from None
    launch.load_optimizer_state(optimizer, optimizer_state)
    torch.set_rng_state(load_file(path / "rng.safetensors")["torch"])
    return int(state["step"])
