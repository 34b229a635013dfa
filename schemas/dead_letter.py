"""Dead letters: records some stage could not process, with why, where from and the raw payload."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal

from schemas._model import SCHEMA_VERSION, Model, child_prefix
from schemas.errors import SchemaError
from schemas.validate import INT64_MAX, MISSING, v_bool, v_int, v_opt_str, v_str

MAX_RAW_BYTES: Final = 64 * 1024
"""``raw`` holds at most this many bytes once UTF-8 encoded."""
MAX_TOPIC_LEN: Final = 255
MAX_STAGE_LEN: Final = 128
MAX_KEY_LEN: Final = 1024
MAX_ERROR_FIELD_LEN: Final = 1024
MAX_REASON_LEN: Final = 4096
_INT32_MAX: Final = 2**31 - 1


def _utf8_len(s: str) -> int:
    if len(s) * 4 <= MAX_RAW_BYTES:  # cannot exceed the limit: skip the encoding
        return len(s)
    return len(s.encode("utf-8", "surrogatepass"))


@dataclass(frozen=True, slots=True)
class DeadLetter(Model):
    """A rejected record. ``raw`` is the payload decoded as UTF-8 with replacement characters,
    cut to MAX_RAW_BYTES (``raw_truncated`` says whether it was cut)."""

    TYPE: ClassVar[str | None] = "dead_letter"
    type: Literal["dead_letter"] = field(default="dead_letter", init=False, repr=False)
    schema_version: int = field(default=SCHEMA_VERSION, init=False, repr=False)
    source_topic: str
    source_partition: int
    source_offset: int
    key: str | None
    stage: str
    error_field: str | None
    reason: str
    raw: str
    raw_truncated: bool
    rejected_at_ms: int

    @staticmethod
    def _check(src: Mapping[str, Any], path: str) -> dict[str, Any]:
        p = child_prefix(path)
        g = src.get
        raw = v_str(g("raw", MISSING), p + "raw", MAX_RAW_BYTES)
        if _utf8_len(raw) > MAX_RAW_BYTES:
            raise SchemaError(p + "raw", f"longer than {MAX_RAW_BYTES} bytes in UTF-8")
        return {
            "source_topic": v_str(g("source_topic", MISSING), p + "source_topic", MAX_TOPIC_LEN),
            "source_partition": v_int(g("source_partition", MISSING), p + "source_partition", -1, _INT32_MAX),
            "source_offset": v_int(g("source_offset", MISSING), p + "source_offset", -1, INT64_MAX),
            "key": v_opt_str(g("key", MISSING), p + "key", MAX_KEY_LEN),
            "stage": v_str(g("stage", MISSING), p + "stage", MAX_STAGE_LEN, 1),
            "error_field": v_opt_str(g("error_field", MISSING), p + "error_field", MAX_ERROR_FIELD_LEN),
            "reason": v_str(g("reason", MISSING), p + "reason", MAX_REASON_LEN),
            "raw": raw,
            "raw_truncated": v_bool(g("raw_truncated", MISSING), p + "raw_truncated"),
            "rejected_at_ms": v_int(g("rejected_at_ms", MISSING), p + "rejected_at_ms"),
        }


def _text(data: bytes | bytearray | memoryview | str | None) -> bytes:
    if data is None:
        return b""
    if isinstance(data, str):
        return data.encode("utf-8", "surrogatepass")  # lone surrogates become U+FFFD below
    return bytes(data)


def truncate_utf8(data: bytes | bytearray | memoryview | str | None, max_bytes: int) -> tuple[str, bool]:
    """``data`` decoded as UTF-8 with replacement characters, cut (at a character boundary) to at
    most ``max_bytes`` UTF-8 bytes; the flag says whether anything was cut."""
    b = _text(data)
    head = b[: max_bytes + 3]  # +3: never cut inside the last character that could still fit
    encoded = head.decode("utf-8", "replace").encode("utf-8")
    if len(b) <= len(head) and len(encoded) <= max_bytes:
        return encoded.decode("utf-8"), False
    return encoded[:max_bytes].decode("utf-8", "ignore"), True


def _cut(s: str, max_len: int) -> str:
    return s if len(s) <= max_len else s[: max_len - 1] + "…"


def make_dead_letter(
    raw: bytes | bytearray | memoryview | str | None,
    *,
    source_topic: str,
    stage: str,
    error: BaseException | None = None,
    reason: str | None = None,
    source_partition: int = -1,
    source_offset: int = -1,
    key: bytes | str | None = None,
    rejected_at_ms: int | None = None,
) -> DeadLetter:
    """Build a valid DeadLetter from whatever was rejected, never failing on odd payloads or keys.

    ``error``: a SchemaError gives ``error_field`` and ``reason``; another exception gives
    ``reason = "<ExceptionType>: <message>"``. An explicit ``reason`` wins. Over-long key and reason
    are cut; ``raw`` is cut to MAX_RAW_BYTES. ``rejected_at_ms`` defaults to now.
    """
    error_field: str | None = None
    if isinstance(error, SchemaError):
        error_field = _cut(error.field, MAX_ERROR_FIELD_LEN)
        default_reason = error.reason
    elif error is not None:
        default_reason = f"{type(error).__name__}: {error}"
    else:
        default_reason = ""
    text, truncated = truncate_utf8(raw, MAX_RAW_BYTES)
    key_text = None if key is None else truncate_utf8(key, 4 * MAX_KEY_LEN)[0]
    return DeadLetter(
        source_topic=_cut(source_topic, MAX_TOPIC_LEN),
        source_partition=source_partition,
        source_offset=source_offset,
        key=None if key_text is None else _cut(key_text, MAX_KEY_LEN),
        stage=stage,
        error_field=error_field,
        reason=_cut(reason if reason is not None else default_reason, MAX_REASON_LEN),
        raw=text,
        raw_truncated=truncated,
        rejected_at_ms=time.time_ns() // 1_000_000 if rejected_at_ms is None else rejected_at_ms,
    )


__all__ = ["MAX_RAW_BYTES", "DeadLetter", "make_dead_letter", "truncate_utf8"]
