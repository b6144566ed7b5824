"""The export's own error: what cannot be exported as asked, and what to change."""

from __future__ import annotations

from mova.errors import MovaError


class ExportError(MovaError, RuntimeError):
    """The checkpoint cannot be exported as asked; the message says what to change."""
