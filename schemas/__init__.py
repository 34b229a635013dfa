"""paperec record schemas: events, transitions, snapshot headers and dead letters.

Frozen slotted dataclasses that validate on construction, a fast JSON codec (orjson) whose
decoder raises only :class:`SchemaError`, snapshot signing, and the exported JSON Schema files.
This package depends only on the standard library and orjson.
"""

from schemas._model import SCHEMA_VERSION, SUPPORTED_SCHEMA_VERSIONS
from schemas.codec import (
    RECORD_TYPES,
    RawInput,
    Record,
    decode,
    decode_click,
    decode_dead_letter,
    decode_dwell,
    decode_impression,
    decode_list_outcome,
    decode_snapshot_header,
    decode_transition,
    encode,
    from_dict,
    to_dict,
)
from schemas.dead_letter import MAX_RAW_BYTES, DeadLetter, make_dead_letter, truncate_utf8
from schemas.errors import SchemaError
from schemas.events import (
    MAX_CONTEXT,
    MAX_DWELL_MS,
    MAX_HISTORY,
    MAX_ITEM_FEATURES,
    MAX_ITEMS,
    MAX_OBJECTIVES,
    MAX_USER_FEATURES,
    Click,
    Dwell,
    Impression,
    Item,
    ListOutcome,
    ListState,
)
from schemas.snapshot import (
    PAYLOAD_FORMAT,
    Exploration,
    SnapshotHeader,
    canonical_header_bytes,
    make_header,
    sign,
    verify_snapshot,
)
from schemas.transition import Labels, Transition, transition_id
from schemas.validate import MAX_ABS_NUMBER, MAX_ID_LEN, SIMPLEX_TOLERANCE

__all__ = [
    "MAX_ABS_NUMBER",
    "MAX_CONTEXT",
    "MAX_DWELL_MS",
    "MAX_HISTORY",
    "MAX_ID_LEN",
    "MAX_ITEMS",
    "MAX_ITEM_FEATURES",
    "MAX_OBJECTIVES",
    "MAX_RAW_BYTES",
    "MAX_USER_FEATURES",
    "PAYLOAD_FORMAT",
    "RECORD_TYPES",
    "SCHEMA_VERSION",
    "SIMPLEX_TOLERANCE",
    "SUPPORTED_SCHEMA_VERSIONS",
    "Click",
    "DeadLetter",
    "Dwell",
    "Exploration",
    "Impression",
    "Item",
    "Labels",
    "ListOutcome",
    "ListState",
    "RawInput",
    "Record",
    "SchemaError",
    "SnapshotHeader",
    "Transition",
    "canonical_header_bytes",
    "decode",
    "decode_click",
    "decode_dead_letter",
    "decode_dwell",
    "decode_impression",
    "decode_list_outcome",
    "decode_snapshot_header",
    "decode_transition",
    "encode",
    "from_dict",
    "make_dead_letter",
    "make_header",
    "sign",
    "to_dict",
    "transition_id",
    "truncate_utf8",
    "verify_snapshot",
]
