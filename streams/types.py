"""Small value types shared by the join, the linker and the Kafka glue."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

# Dead-letter ``stage`` values: where a record was rejected and why (docs/streams.md lists them).
STAGE_DECODE = "streams.decode"  # not valid JSON / not a valid record of the topic's type
STAGE_LATE = "streams.join.late"  # feedback after its list was emitted, or an impression after its window
STAGE_OUTSIDE_WINDOW = "streams.join.outside_window"  # feedback event time at or after the window end
STAGE_UNKNOWN_REQUEST = "streams.join.unknown_request"  # feedback whose impression never came in time
STAGE_BAD_POSITION = "streams.join.bad_position"  # feedback position past the end of the list
STAGE_MISMATCH = "streams.join.mismatch"  # feedback user_id / item_id disagree with the impression
STAGE_BAD_KEY = "streams.join.bad_key"  # Kafka key is not the record's request_id (wrong partition)
STAGE_LINK_LATE = "streams.link.late"  # a list outcome older than what its user's chain already linked
STAGE_LINK_DECODE = "streams.link.decode"  # an unreadable record on the internal list-outcomes topic
STAGE_TOO_LARGE = "streams.emit.too_large"  # an output record above the topic's message size limit


class Source(NamedTuple):
    """Where an input record came from (for dead letters). A tuple: one is made per input
    record, and a tuple of atoms is cheap to build and to the garbage collector."""

    topic: str
    partition: int
    offset: int
    key: bytes | None


@dataclass(frozen=True, slots=True)
class Rejected:
    """An input record a stage could not use; becomes a schemas.DeadLetter."""

    source: Source
    raw: bytes
    stage: str
    reason: str
    error_field: str | None = None
