"""The node's copy of its last verified snapshot on local disk.

Why: the compacted topic keeps only the *newest record* under the snapshot key, which need not be
the newest valid snapshot. A replayed older snapshot or a tombstone written after the real latest
one is skipped by a running node, but once the log cleaner has run, a restarted node would find
only that record and load the old version (or come up on the cold-start model). So a node keeps
the last snapshot it loaded and starts from it; the topic then only replaces it with a strictly
newer verified version.

The file holds the record exactly as received (header bytes + payload), and is verified again
with the current keys when loaded: it is a cache, never trusted more than the topic.

Format: ``MAGIC``, the header length (8 bytes, big-endian), the header JSON, the payload.
Written atomically (temp file, fsync, rename, fsync of the directory), so a crash leaves the old
file or the new one, never half of one. A file that cannot be read or does not verify is renamed
aside (``<name>.rejected``, the previous one overwritten) and ignored: never fatal.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MAGIC = b"PAPEREC-SNAPSHOT-1\n"
FILE_NAME = "latest.snapshot"
_LEN_BYTES = 8


@dataclass(frozen=True)
class StoredSnapshot:
    header: bytes  # the paperec-snapshot-header record header, as received
    payload: bytes


class CorruptSnapshotFile(ValueError):
    """The file is not a snapshot file (truncated, wrong magic, bad length)."""


def pack(snap: StoredSnapshot) -> bytes:
    return MAGIC + len(snap.header).to_bytes(_LEN_BYTES, "big") + snap.header + snap.payload


def unpack(data: bytes) -> StoredSnapshot:
    if not data.startswith(MAGIC):
        raise CorruptSnapshotFile("no snapshot file magic")
    start = len(MAGIC) + _LEN_BYTES
    if len(data) < start:
        raise CorruptSnapshotFile("truncated before the header length")
    n = int.from_bytes(data[len(MAGIC) : start], "big")
    if n == 0 or start + n > len(data):
        raise CorruptSnapshotFile(f"header length {n} does not fit the file ({len(data)} bytes)")
    return StoredSnapshot(header=data[start : start + n], payload=data[start + n :])


class SnapshotStore:
    """One file in ``directory``; used from the snapshot loader thread only."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / FILE_NAME

    def save(self, snap: StoredSnapshot) -> None:
        """Atomically replace the stored snapshot. Raises OSError (the caller logs and goes on)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{FILE_NAME}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                f.write(pack(snap))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        # The rename is durable only once the directory entry is.
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def load(self) -> StoredSnapshot | None:
        """The stored snapshot, or None if there is none or it is unreadable (then set aside)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.error("cannot read the stored snapshot %s (%s): ignored", self.path, exc)
            return None
        try:
            return unpack(data)
        except CorruptSnapshotFile as exc:
            self.set_aside(f"corrupt: {exc}")
            return None

    def set_aside(self, reason: str) -> None:
        """Rename the file to ``<name>.rejected`` so the next start does not trip on it again, but
        an operator can still look at it."""
        aside = self.path.with_name(FILE_NAME + ".rejected")
        try:
            os.replace(self.path, aside)
        except OSError as exc:
            log.error(
                "stored snapshot %s ignored (%s); could not rename it aside: %s", self.path, reason, exc
            )
            return
        log.error("stored snapshot %s ignored (%s); renamed to %s", self.path, reason, aside.name)
