"""What a stage needs of the stream processor that runs it: the seam between the stages
(streams.stage) and Faust.

A stage reads batches of input records from its ``BatchSink``, and through a ``StageIO``:
its partition assignment and the progress on each input partition (end offset, committed
offset), pausing and resuming input partitions, acking processed records (the processor may
then commit their offsets), a producer to send outputs and changelog records with, its table
(the mirror of what its changelog holds) and crash reporting. In production the
``StageIO`` is ``streams.faust_io.FaustStageIO``, the one module that touches Faust's and
aiokafka's internals; tests give the stages an in-memory one.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Hashable, MutableMapping, Sequence
from typing import Any, Protocol


class TopicPartition(Hashable, Protocol):
    """A topic partition (Faust's ``TP``, aiokafka's ``TopicPartition``)."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...


class InputRecord(Protocol):
    """An input record as a stage reads it (Faust's ``Message``)."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...

    @property
    def headers(self) -> Any: ...  # a list of (name, value) pairs or a dict, as the client gives them

    @property
    def tp(self) -> TopicPartition: ...


class RecordBatchBuilder(Protocol):
    """One record batch being built (aiokafka's ``BatchBuilder``)."""

    def append(
        self, *, timestamp: int | None, key: bytes | None, value: bytes | None, headers: Any
    ) -> object | None: ...  # None: the batch is full


class BatchProducer(Protocol):
    """The batch API of aiokafka's ``AIOKafkaProducer`` (public in aiokafka)."""

    def create_batch(self) -> RecordBatchBuilder: ...

    async def send_batch(
        self, batch: RecordBatchBuilder, topic: str, *, partition: int
    ) -> asyncio.Future[Any]: ...

    async def partitions_for(self, topic: str) -> Any: ...


class StageIO(Protocol):
    """The stream processor as one stage sees it."""

    def assignment(self) -> set[Any]:
        """The partitions assigned to this worker (every topic of the app)."""
        ...

    def highwater(self, tp: Any) -> int | None:
        """The end offset of ``tp`` as last fetched (None: not known yet)."""
        ...

    def last_fetch_ms(self, tp: Any) -> int | None:
        """Wall time (ms since the epoch) of the latest successful fetch response for ``tp``,
        empty ones included (None: none yet): when the end offset was last confirmed. The
        watermarks let an input idle forward only while this keeps moving (streams.watermark)."""
        ...

    def committed(self, tp: Any) -> int | None:
        """The offset last committed for ``tp`` (None: none yet)."""
        ...

    def pause(self, tps: Sequence[Any]) -> None:
        """Stop fetching ``tps`` (records already fetched are still delivered)."""
        ...

    def resume(self, tps: Sequence[Any]) -> None: ...

    def is_current(self, record: InputRecord) -> bool:
        """False for records fetched before the latest rebalance: they are neither processed nor
        acked (the processor seeks back to the committed offset and fetches them again)."""
        ...

    def ack(self, records: Sequence[InputRecord]) -> None:
        """The records' effects are durable: the processor may commit their offsets."""
        ...

    def producer(self) -> BatchProducer:
        """The started producer (acks=all) for outputs and changelog records."""
        ...

    @property
    def table(self) -> MutableMapping[bytes, bytes]:
        """The stage's table: what its changelog holds (restored on recovery, mirrored by the
        stage when it writes changes)."""
        ...

    @property
    def changelog_topic(self) -> str: ...

    async def crash(self, exc: BaseException) -> None:
        """Stop the worker because of ``exc`` (a delivery failed: only a restart is consistent)."""
        ...


class StageState(Protocol):
    """The pure state of a stage (``RequestJoin``, ``UserLinker``): changes as changelog
    records, rebuilt from the table after recovery (river/torchrl-style ``load_state_dict``)."""

    counts: Counter[tuple[str, str]]
    """Counters (name, label) since the stage last took them (duplicates and the like)."""

    def sizes(self) -> dict[str, int]: ...

    def take_changes(self) -> list[tuple[bytes, int, bytes | None]]:
        """(key, partition, value or None for a delete) of every entry changed since last time."""
        ...

    def load_state_dict(
        self, entries: dict[bytes, bytes], now_ms: int, partitions: set[int] | None = None
    ) -> None: ...

    def forget_partitions(self, partitions: set[int]) -> None: ...
