"""The one exception type of the schemas package."""

from __future__ import annotations

ROOT = "$"
"""Field path used for errors about the record as a whole (not JSON, not an object, ...)."""


class SchemaError(ValueError):
    """A record failed validation.

    ``field`` is the path of the offending field, e.g. ``items[3].features[2]`` or
    ``impression.request_id``; ``"$"`` means the record as a whole. ``reason`` says what is wrong.
    ``str(err)`` is ``"<field>: <reason>"``.
    """

    field: str
    reason: str

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(field, reason)  # args keep the error picklable
        self.field = field
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"

    def __repr__(self) -> str:
        return f"SchemaError(field={self.field!r}, reason={self.reason!r})"
