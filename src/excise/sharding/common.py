"""What the FSDP and ZeRO-3 paths share."""

from __future__ import annotations

import os


def env_flag(name: str, default: str) -> bool:
    return os.environ.get(name, default).strip().lower() in ("true", "1", "yes")
