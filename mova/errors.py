"""Errors that name what went wrong, so a user can fix the record or option that caused it."""

from __future__ import annotations

from collections.abc import Iterable


class MovaError(Exception):
    """Base class of Mova's own errors."""


class ImageLoadError(MovaError, ValueError):
    """An image file is missing, unreadable or corrupt."""


class PlaceholderMismatchError(MovaError, ValueError):
    """A sample's ``<image>`` placeholders and its images do not pair up one to one."""


class SequenceTooLongError(MovaError, ValueError):
    """A spliced sequence needs more positions than the LLM's context; visual tokens are never cut."""


class ConfigError(MovaError, ValueError):
    """A configuration value is invalid."""


class UnknownNameError(ConfigError, KeyError):
    """A registry lookup failed (a config named something that does not exist); the message lists what is
    registered. Both a :class:`ConfigError` and a ``KeyError`` (it is a failed lookup)."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        self.kind, self.name, self.known = kind, name, sorted(known)
        super().__init__(f"unknown {kind} {name!r}; known: {', '.join(self.known)}")

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


class DataError(MovaError, ValueError):
    """A data source or one of its rows cannot be used; the message names the source and, for a row,
    its index, id and what is wrong with it."""
