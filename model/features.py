"""Feature hashing: string ids -> stable embedding indices."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

PADDING_ID = 0


def hash_id(item_id: str, buckets: int) -> int:
    """Stable hash of ``item_id`` into ``1..buckets-1`` (0 is reserved for padding).

    blake2b, not Python's ``hash()``: the latter is salted per process, and the streams, the
    learner and every serving node must agree on the index of an item.
    """
    if buckets < 2:
        raise ValueError("buckets must be >= 2 (index 0 is padding)")
    digest = hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest()
    return 1 + int.from_bytes(digest, "little") % (buckets - 1)


def hash_ids(item_ids: Iterable[str], buckets: int) -> list[int]:
    """:func:`hash_id` over a sequence."""
    return [hash_id(i, buckets) for i in item_ids]
