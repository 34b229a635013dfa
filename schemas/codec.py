"""JSON codec: ``encode`` any record to compact JSON bytes, ``decode`` bytes back, dispatching on
the ``type`` field. Decoding validates and raises only :class:`SchemaError`, whatever the input.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, TypeAlias, TypeVar, overload

import orjson

from schemas._model import Model, check_version, internal_error
from schemas.dead_letter import DeadLetter
from schemas.errors import ROOT, SchemaError
from schemas.events import Click, Dwell, Impression, ListOutcome
from schemas.rollout import RolloutDecision
from schemas.snapshot import SnapshotHeader
from schemas.transition import Transition
from schemas.validate import MISSING, type_error

Record: TypeAlias = (
    Impression | Click | Dwell | ListOutcome | Transition | SnapshotHeader | DeadLetter | RolloutDecision
)
RawInput: TypeAlias = bytes | bytearray | memoryview | str

RECORD_TYPES: Final[dict[str, type[Model]]] = {
    "impression": Impression,
    "click": Click,
    "dwell": Dwell,
    "list_outcome": ListOutcome,
    "transition": Transition,
    "snapshot_header": SnapshotHeader,
    "dead_letter": DeadLetter,
    "rollout_decision": RolloutDecision,
}
"""Top-level record classes by their ``type`` discriminator."""

R = TypeVar("R", bound=Model)

_loads = orjson.loads
_dumps = orjson.dumps
_JSONDecodeError = orjson.JSONDecodeError


def encode(record: Record) -> bytes:
    """Compact JSON (UTF-8 bytes) of a top-level record, ``type`` and ``schema_version`` first."""
    if type(record) not in _CLASSES:
        raise TypeError(f"not a top-level record: {type(record).__name__}")
    return _dumps(record._json())


_CLASSES: Final = frozenset(RECORD_TYPES.values())


def _record_class(data: Any, expect: type[Model] | None) -> type[Model]:
    if type(data) is not dict and not isinstance(data, Mapping):
        raise type_error(data, ROOT, "a JSON object")
    t = data.get("type", MISSING)
    if type(t) is not str:
        raise type_error(t, "type", "string")
    cls = RECORD_TYPES.get(t)
    if cls is None:
        raise SchemaError("type", f"unknown record type {t[:64]!r}")
    if expect is not None and cls is not expect:
        raise SchemaError("type", f"expected {expect.TYPE!r}, got {t!r}")
    check_version(data.get("schema_version", MISSING), "schema_version")
    return cls


def _check_expect(expect: type[Model] | None) -> None:
    if expect is not None and expect not in _CLASSES:
        raise TypeError(f"expect must be one of the top-level record classes, got {expect!r}")


@overload
def decode(raw: RawInput, expect: None = None) -> Record: ...
@overload
def decode(raw: RawInput, expect: type[R]) -> R: ...
def decode(raw: RawInput, expect: type[Model] | None = None) -> Any:
    """Parse and validate one record. ``expect``: the record class required (a record of another
    type is a SchemaError on field ``type``). Unknown extra fields are ignored."""
    _check_expect(expect)
    try:
        data = _loads(raw)
    except _JSONDecodeError as e:
        raise SchemaError(ROOT, f"invalid JSON: {e}") from None
    except Exception as e:  # e.g. an input that is not bytes/str
        raise SchemaError(ROOT, f"cannot parse input of type {type(raw).__name__}: {e}") from None
    return _build(data, expect)


def _build(data: Any, expect: type[Model] | None) -> Any:
    try:
        return _record_class(data, expect)._from_json(data, "")
    except SchemaError:
        raise
    except Exception as e:  # pragma: no cover - a bug; the fuzz tests check this never happens
        raise internal_error(e) from e


@overload
def from_dict(data: Mapping[str, Any], expect: None = None) -> Record: ...
@overload
def from_dict(data: Mapping[str, Any], expect: type[R]) -> R: ...
def from_dict(data: Mapping[str, Any], expect: type[Model] | None = None) -> Any:
    """Like :func:`decode` for an already-parsed JSON dict (not modified, not aliased)."""
    _check_expect(expect)
    return _build(data, expect)


def to_dict(record: Model) -> dict[str, Any]:
    """The JSON form of any schema object as plain dicts and lists."""
    return record.to_dict()


def decode_impression(raw: RawInput) -> Impression:
    return decode(raw, Impression)


def decode_click(raw: RawInput) -> Click:
    return decode(raw, Click)


def decode_dwell(raw: RawInput) -> Dwell:
    return decode(raw, Dwell)


def decode_list_outcome(raw: RawInput) -> ListOutcome:
    return decode(raw, ListOutcome)


def decode_transition(raw: RawInput) -> Transition:
    return decode(raw, Transition)


def decode_snapshot_header(raw: RawInput) -> SnapshotHeader:
    return decode(raw, SnapshotHeader)


def decode_dead_letter(raw: RawInput) -> DeadLetter:
    return decode(raw, DeadLetter)


def decode_rollout_decision(raw: RawInput) -> RolloutDecision:
    return decode(raw, RolloutDecision)


__all__ = [
    "RECORD_TYPES",
    "RawInput",
    "Record",
    "decode",
    "decode_click",
    "decode_dead_letter",
    "decode_dwell",
    "decode_impression",
    "decode_list_outcome",
    "decode_rollout_decision",
    "decode_snapshot_header",
    "decode_transition",
    "encode",
    "from_dict",
    "to_dict",
]
