"""Actor snapshots: what the learner publishes and the serving nodes hot-load.

A snapshot is one Kafka record on the compacted ``actor-snapshots`` topic:
- key ``actor`` (compaction keeps only the newest snapshot),
- value: the safetensors payload of ``ActorModel.state_dict()`` (tensors only, never pickle),
- record header ``paperec-snapshot-header``: the JSON ``SnapshotHeader`` (schema version,
  snapshot version, created_at, training step, input watermark, model config, the exploration
  serving applies to the snapshot, SHA-256 of the payload, the id of the signing key and an
  HMAC-SHA256 signature).

Exploration has one source of truth: the learner's configuration, recorded (signed) in every
header by :func:`encode_snapshot`, which requires it; the serving nodes explore with the header's
value (:func:`exploration_of`), the node's setting only where no header says (cold start, and
headers written before the field existed).

Size policy: a snapshot is one message. The topic's ``max.message.bytes``, the broker's
``message.max.bytes`` and the producer's ``max_request_size`` are all raised together from
``Settings.max_message_bytes`` (16 MiB by default; the default model is ~4.7 MiB); ``encode_snapshot``
refuses a payload over that limit instead of chunking.

This module imports model code only (``model.scoring``), so serving can use it without the
trainer.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from model.scoring import ActorModel
from schemas import (
    PAYLOAD_FORMAT,
    SUPPORTED_SCHEMA_VERSIONS,
    Exploration,
    SchemaError,
    SnapshotHeader,
    decode_snapshot_header,
    encode,
    make_header,
    verify_snapshot,
)

SNAPSHOT_KEY = b"actor"
HEADER_NAME = "paperec-snapshot-header"
# Framing overhead allowed on top of the payload (header JSON, record overhead).
HEADER_HEADROOM_BYTES = 256 * 1024


class SnapshotRejected(ValueError):
    """An invalid snapshot: the reason names what failed (checksum, signature, weights, ...)."""


@dataclass(frozen=True)
class SnapshotRecord:
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def encode_snapshot(
    model: ActorModel,
    *,
    snapshot_version: int,
    training_step: int,
    watermark_ms: int,
    exploration: Exploration,
    key: bytes,
    max_message_bytes: int,
    key_id: str | None = None,
    created_at_ms: int | None = None,
    global_weights: tuple[float, ...] | None = None,
) -> tuple[SnapshotHeader, bytes]:
    """Serialize and sign the serving model with ``key`` (whose id ``key_id`` the header records),
    with the ``exploration`` serving is to apply to it and the learner's ``global_weights`` (the
    rollout's holdout weights; None: none recorded). Returns (header, safetensors payload)."""
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}
    payload = save_safetensors(tensors)
    if len(payload) + HEADER_HEADROOM_BYTES > max_message_bytes:
        raise ValueError(
            f"snapshot payload is {len(payload)} bytes, over max_message_bytes={max_message_bytes} "
            "minus header headroom: raise PAPEREC_MAX_MESSAGE_BYTES (topic and broker limits follow it)"
        )
    header = make_header(
        snapshot_version=snapshot_version,
        created_at_ms=int(time.time() * 1000) if created_at_ms is None else created_at_ms,
        training_step=training_step,
        watermark_ms=watermark_ms,
        model_config=model.model_config(),
        payload=payload,
        key=key,
        key_id=key_id,
        exploration=exploration,
        global_weights=global_weights,
    )
    return header, payload


def to_record(header: SnapshotHeader, payload: bytes) -> SnapshotRecord:
    return SnapshotRecord(key=SNAPSHOT_KEY, value=payload, headers=[(HEADER_NAME, encode(header))])


def header_of(headers: list[tuple[str, bytes]] | tuple[tuple[str, bytes], ...] | None) -> bytes:
    for name, value in headers or ():
        if name == HEADER_NAME:
            return value
    raise SnapshotRejected(f"record has no {HEADER_NAME} header")


def decode_snapshot(
    header_bytes: bytes, payload: bytes, key: bytes | Mapping[str, bytes]
) -> tuple[SnapshotHeader, ActorModel]:
    """Validate everything, then build the model. Raises SnapshotRejected with the reason.

    ``key``: one key, or the accepted keys by id (see :func:`schemas.verify_snapshot`).

    Order matters: the signature is checked before the payload is parsed or the config is used,
    so an unauthenticated record never reaches safetensors or the model constructor.
    """
    try:
        header = decode_snapshot_header(header_bytes)
    except SchemaError as exc:
        raise SnapshotRejected(f"bad header: {exc}") from None
    if header.schema_version not in SUPPORTED_SCHEMA_VERSIONS:  # decoder checks too; be explicit
        raise SnapshotRejected(f"unsupported schema_version {header.schema_version}")
    try:
        verify_snapshot(header, payload, key)
    except SchemaError as exc:
        raise SnapshotRejected(f"verification failed: {exc}") from None
    if header.payload_format != PAYLOAD_FORMAT:
        raise SnapshotRejected(f"unsupported payload_format {header.payload_format!r}")
    try:
        tensors = load_safetensors(payload)
    except (SafetensorError, ValueError) as exc:
        raise SnapshotRejected(f"payload is not valid safetensors: {exc}") from None
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise SnapshotRejected(f"non-finite values in tensor {name}")
    try:
        model = ActorModel.from_config(header.model_config)
        model.load_state_dict(tensors, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise SnapshotRejected(f"payload does not fit the model config: {exc}") from None
    return header, model.eval()


def exploration_of(header: SnapshotHeader | None, fallback: Exploration) -> Exploration:
    """The exploration to serve a model with: its snapshot header's; ``fallback`` (the serving
    node's setting) for the cold-start model (``header`` None) and for headers written before
    headers recorded it, which were served with that setting too."""
    if header is None or header.exploration is None:
        return fallback
    return header.exploration


def snapshot_age_s(header: SnapshotHeader, now_ms: int | None = None) -> float:
    now = int(time.time() * 1000) if now_ms is None else now_ms
    return max(0.0, (now - header.created_at_ms) / 1000.0)


def is_newer(candidate: SnapshotHeader, current: SnapshotHeader | None) -> bool:
    return current is None or candidate.snapshot_version > current.snapshot_version


__all__ = [
    "HEADER_NAME",
    "SNAPSHOT_KEY",
    "SnapshotRecord",
    "SnapshotRejected",
    "decode_snapshot",
    "encode_snapshot",
    "exploration_of",
    "header_of",
    "is_newer",
    "snapshot_age_s",
    "to_record",
]
