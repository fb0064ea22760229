"""Errors a user can cause. The CLI prints the message on one line and exits with code 2."""

from __future__ import annotations


class ExciseError(Exception):
    """A problem with the user's input: bad path, malformed data, unknown name, bad option."""


class DataError(ExciseError):
    """Data that cannot be read or is not in a supported shape."""


class ModelError(ExciseError):
    """A model that cannot be loaded or whose architecture is not supported."""


class ConfigError(ExciseError):
    """An option or configuration value that is unknown or out of range."""
