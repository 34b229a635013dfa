"""Snapshot encode/decode: a valid snapshot rebuilds an identical serving model from the header
alone; every kind of invalid snapshot is rejected with a reason."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from model.policy import ActorConfig
from model.ranker import RankerConfig
from model.scoring import ActorModel
from model.snapshot import (
    HEADER_NAME,
    SnapshotRejected,
    decode_snapshot,
    encode_snapshot,
    exploration_of,
    header_of,
    to_record,
)
from schemas import Exploration, SnapshotHeader, encode, make_header

KEY = b"unit-test-key"
LIMIT = 16 * 1024 * 1024
EXPLORATION = Exploration(noise_std=0.2)


def _model(seed: int = 0) -> ActorModel:
    torch.manual_seed(seed)
    ranker = RankerConfig(
        user_dim=4,
        item_dim=5,
        context_dim=3,
        hash_buckets=128,
        d_model=16,
        n_heads=2,
        n_layers=1,
        history_len=4,
        max_list_len=6,
    )
    return ActorModel(ranker, ActorConfig(obs_dim=16, action_dim=2, hidden=16))


def _encode(model: ActorModel, version: int = 3, limit: int = LIMIT) -> tuple[SnapshotHeader, bytes]:
    return encode_snapshot(
        model,
        snapshot_version=version,
        training_step=100,
        watermark_ms=5,
        exploration=EXPLORATION,
        key=KEY,
        max_message_bytes=limit,
    )


def _encoded(model: ActorModel) -> tuple[bytes, bytes]:
    header, payload = _encode(model)
    record = to_record(header, payload)
    return header_of(record.headers), record.value


def test_round_trip_rebuilds_identical_model() -> None:
    model = _model()
    header_bytes, payload = _encoded(model)
    header, loaded = decode_snapshot(header_bytes, payload, KEY)
    assert header.snapshot_version == 3 and header.training_step == 100
    assert header.exploration == EXPLORATION  # what serving explores with (signed)
    original = model.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, original[name]), name
    assert not loaded.training


def test_tampered_truncated_and_wrong_key_are_rejected() -> None:
    header_bytes, payload = _encoded(_model())
    flipped = bytearray(payload)
    flipped[len(flipped) // 2] ^= 0x01
    for bad_payload, bad_key, reason in [
        (bytes(flipped), KEY, "payload_sha256"),
        (payload[: len(payload) // 2], KEY, "payload_size"),
        (payload, b"another-key", "signature"),
    ]:
        with pytest.raises(SnapshotRejected, match=reason):
            decode_snapshot(header_bytes, bad_payload, bad_key)


def test_tampered_header_is_rejected() -> None:
    header_bytes, payload = _encoded(_model())
    tampered = header_bytes.replace(b'"training_step":100', b'"training_step":101')
    assert tampered != header_bytes
    with pytest.raises(SnapshotRejected, match="signature"):
        decode_snapshot(tampered, payload, KEY)
    with pytest.raises(SnapshotRejected, match="bad header"):
        decode_snapshot(b"{not json", payload, KEY)


def test_nan_weights_are_rejected_even_when_signed() -> None:
    model = _model()
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    header_bytes, payload = _encoded(model)
    with pytest.raises(SnapshotRejected, match="non-finite"):
        decode_snapshot(header_bytes, payload, KEY)


def test_payload_that_does_not_fit_the_config_is_rejected() -> None:
    header, payload = _encode(_model(), version=1)
    config = header.model_config
    bigger = dict(config, ranker=dict(config["ranker"], d_model=32))
    forged = make_header(
        snapshot_version=1,
        created_at_ms=header.created_at_ms,
        training_step=0,
        watermark_ms=0,
        model_config=bigger,
        payload=payload,
        key=KEY,
    )
    with pytest.raises(SnapshotRejected, match="does not fit"):
        decode_snapshot(encode(forged), payload, KEY)


def test_oversized_snapshot_refused_at_publish() -> None:
    with pytest.raises(ValueError, match="max_message_bytes"):
        _encode(_model(), limit=1024)


def test_missing_header_is_rejected() -> None:
    with pytest.raises(SnapshotRejected, match=HEADER_NAME):
        header_of([("other", b"x")])
    assert dataclasses.is_dataclass(to_record(*_encode(_model())))


def test_serving_explores_with_the_headers_exploration_else_the_fallback() -> None:
    header_bytes, payload = _encoded(_model())
    header, _ = decode_snapshot(header_bytes, payload, KEY)
    fallback = Exploration(noise_std=0.7)
    assert exploration_of(header, fallback) == EXPLORATION
    assert exploration_of(None, fallback) == fallback  # the cold-start model
    # a header from before exploration was recorded: signed without it, served with the fallback
    old = make_header(
        snapshot_version=2,
        created_at_ms=0,
        training_step=0,
        watermark_ms=0,
        model_config=header.model_config,
        payload=payload,
        key=KEY,
    )
    assert b"exploration" not in encode(old)
    decoded, _ = decode_snapshot(encode(old), payload, KEY)
    assert decoded.exploration is None and exploration_of(decoded, fallback) == fallback
