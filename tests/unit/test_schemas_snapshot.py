"""Snapshot headers: signing, verification, tampering, canonical bytes, the recorded exploration."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac

import jsonschema
import orjson
import pytest

import schemas
from schemas import (
    Exploration,
    SchemaError,
    SnapshotHeader,
    canonical_header_bytes,
    make_header,
    sign,
    verify_snapshot,
)
from schemas.jsonschema_export import record_schema

KEY = b"test-key"
PAYLOAD = bytes(range(256)) * 40


def _header(**overrides: object) -> SnapshotHeader:
    kw: dict[str, object] = dict(
        snapshot_version=3,
        created_at_ms=1_700_000_000_000,
        training_step=1234,
        watermark_ms=1_699_999_990_000,
        model_config={"hidden": [64, 32], "lr": 0.001, "name": "actör", "nested": {"b": 1, "a": None}},
        payload=PAYLOAD,
        key=KEY,
        chunk_count=2,
    )
    kw.update(overrides)
    return make_header(**kw)  # type: ignore[arg-type]


def test_make_header_and_verify() -> None:
    h = _header()
    assert h.payload_size == len(PAYLOAD)
    assert h.payload_sha256 == hashlib.sha256(PAYLOAD).hexdigest()
    assert h.payload_format == "safetensors"
    assert len(h.signature) == 64
    verify_snapshot(h, PAYLOAD, KEY)
    verify_snapshot(h, memoryview(PAYLOAD), KEY)
    verify_snapshot(h, bytearray(PAYLOAD), KEY)
    # survives the wire
    back = schemas.decode_snapshot_header(schemas.encode(h))
    assert back == h
    verify_snapshot(back, PAYLOAD, KEY)


def test_tampered_payload() -> None:
    h = _header()
    bad = bytearray(PAYLOAD)
    bad[100] ^= 1
    with pytest.raises(SchemaError) as info:
        verify_snapshot(h, bytes(bad), KEY)
    assert info.value.field == "payload_sha256"
    with pytest.raises(SchemaError) as info:
        verify_snapshot(h, PAYLOAD[:-1], KEY)
    assert info.value.field == "payload_size"
    with pytest.raises(SchemaError) as info:
        verify_snapshot(h, PAYLOAD + b"\0", KEY)
    assert info.value.field == "payload_size"


@pytest.mark.parametrize(
    "change",
    [
        {"training_step": 1235},
        {"snapshot_version": 4},
        {"watermark_ms": 1},
        {"created_at_ms": 2},
        {"chunk_count": 1},
        {"model_config": {"hidden": [64, 33], "lr": 0.001, "name": "actör", "nested": {"b": 1, "a": None}}},
    ],
)
def test_tampered_header(change: dict[str, object]) -> None:
    h = dataclasses.replace(_header(), **change)  # type: ignore[arg-type]
    with pytest.raises(SchemaError) as info:
        verify_snapshot(h, PAYLOAD, KEY)
    assert info.value.field == "signature"


def test_tampered_payload_with_matching_header_fields() -> None:
    """Replacing the payload and fixing size/sha in the header breaks the signature."""
    other = b"evil" * 100
    h = dataclasses.replace(
        _header(), payload_size=len(other), payload_sha256=hashlib.sha256(other).hexdigest()
    )
    with pytest.raises(SchemaError) as info:
        verify_snapshot(h, other, KEY)
    assert info.value.field == "signature"


def test_tampered_on_the_wire() -> None:
    raw = schemas.encode(_header())
    tampered = raw.replace(b'"training_step":1234', b'"training_step":1239')
    assert tampered != raw
    with pytest.raises(SchemaError) as info:
        verify_snapshot(schemas.decode_snapshot_header(tampered), PAYLOAD, KEY)
    assert info.value.field == "signature"


def test_wrong_key() -> None:
    h = _header()
    with pytest.raises(SchemaError) as info:
        verify_snapshot(h, PAYLOAD, b"other-key")
    assert info.value.field == "signature"
    with pytest.raises(TypeError):
        verify_snapshot(h, PAYLOAD, "test-key")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        sign(h, b"")


def test_signature_changes_with_key_and_header() -> None:
    a, b = _header(), _header(key=b"k2")
    assert a.signature != b.signature
    assert dataclasses.replace(a, signature=b.signature) == dataclasses.replace(b, signature=b.signature)
    assert _header().signature == a.signature  # deterministic


def test_canonical_bytes() -> None:
    h = _header()
    canon = canonical_header_bytes(h)
    d = orjson.loads(canon)
    assert "signature" not in d
    assert d == {k: v for k, v in h.to_dict().items() if k != "signature"}
    assert list(d) == sorted(d)
    assert list(d["model_config"]["nested"]) == ["a", "b"]  # sorted recursively
    assert b" " not in canon.replace(b"act\xc3\xb6r", b"")
    assert "actör".encode() in canon  # UTF-8, not \\u-escaped
    # the signature is exactly HMAC-SHA256 over those bytes
    assert h.signature == hmac.new(KEY, canon, hashlib.sha256).hexdigest()
    # a mapping without signature (and without type/schema_version) gives the same bytes
    m = {k: v for k, v in h.to_dict().items() if k not in ("signature", "type", "schema_version")}
    assert canonical_header_bytes(m) == canon
    assert sign(m, KEY) == h.signature
    with pytest.raises(SchemaError):
        canonical_header_bytes({**m, "chunk_count": 0})


def test_unknown_fields_do_not_enter_the_signature() -> None:
    h = _header()
    d = h.to_dict()
    d["future"] = "x"
    back = schemas.decode_snapshot_header(orjson.dumps(d))
    verify_snapshot(back, PAYLOAD, KEY)


def test_documented_test_vector() -> None:
    """The example header in docs/schemas.md is signed with the dev key over these exact bytes."""
    from schemas.examples import EXAMPLE_HMAC_KEY, EXAMPLE_PAYLOAD, SNAPSHOT_HEADER

    verify_snapshot(SNAPSHOT_HEADER, EXAMPLE_PAYLOAD, EXAMPLE_HMAC_KEY)
    canon = (
        b'{"chunk_count":1,"created_at_ms":1732795170000,'
        b'"exploration":{"noise_std":0.1,"wide_share":0.25,"wide_std":1.0},'
        b'"model_config":{"hidden_sizes":[128,64],'
        b'"n_item_features":4,"objectives":["click","dwell"]},"payload_format":"safetensors",'
        b'"payload_sha256":"a3fb12c6931e9489c025a4386b292fe95be819221676421104986d0407a0dc5c",'
        b'"payload_size":27,"schema_version":2,"snapshot_version":12,"training_step":48000,'
        b'"type":"snapshot_header","watermark_ms":1732795168500}'
    )
    assert canonical_header_bytes(SNAPSHOT_HEADER) == canon
    assert SNAPSHOT_HEADER.signature == hmac.new(EXAMPLE_HMAC_KEY, canon, hashlib.sha256).hexdigest()
    assert SNAPSHOT_HEADER.signature == "548f1c7febd964f78113b767e5cea96246dc1e72f8a84bf69c0f653c3a3ec04d"


# The schema-version-1 example header (docs/schemas.md before version 2), as its learner wrote it.
V1_HEADER = (
    b'{"type":"snapshot_header","schema_version":1,"snapshot_version":12,"created_at_ms":1732795170000,'
    b'"training_step":48000,"watermark_ms":1732795168500,"model_config":{"objectives":["click","dwell"],'
    b'"hidden_sizes":[128,64],"n_item_features":4},"payload_format":"safetensors","payload_size":27,'
    b'"payload_sha256":"a3fb12c6931e9489c025a4386b292fe95be819221676421104986d0407a0dc5c","chunk_count":1,'
    b'"signature":"759fd889c9da8e757393dca2f891b417649186668e97199cc162480e4bab53ea"}'
)


def test_version_1_header_keeps_its_version_and_verifies() -> None:
    """The version is signed: a version-1 header is canonicalized as version 1, byte for byte."""
    from schemas.examples import EXAMPLE_HMAC_KEY, EXAMPLE_PAYLOAD

    old = schemas.decode_snapshot_header(V1_HEADER)
    assert old.schema_version == 1 and old.exploration is None
    verify_snapshot(old, EXAMPLE_PAYLOAD, EXAMPLE_HMAC_KEY)
    assert b'"schema_version":1' in canonical_header_bytes(old)
    assert schemas.decode_snapshot_header(schemas.encode(old)) == old  # re-encodes as version 1
    # the same header claiming version 2 is not what was signed
    claimed = schemas.decode_snapshot_header(V1_HEADER.replace(b'"schema_version":1', b'"schema_version":2'))
    with pytest.raises(SchemaError) as info:
        verify_snapshot(claimed, EXAMPLE_PAYLOAD, EXAMPLE_HMAC_KEY)
    assert info.value.field == "signature"
    # a version-1 header with the exploration it could record (noise_std only) verifies too
    d = orjson.loads(V1_HEADER)
    d["exploration"] = {"noise_std": 0.1}
    d["signature"] = sign(d, EXAMPLE_HMAC_KEY)
    assert b'"exploration":{"noise_std":0.1}' in canonical_header_bytes(d)
    verify_snapshot(schemas.decode_snapshot_header(orjson.dumps(d)), EXAMPLE_PAYLOAD, EXAMPLE_HMAC_KEY)
    # a header built in Python is the current version
    assert _header().schema_version == schemas.SCHEMA_VERSION == 2


# --------------------------------------------------------------------------------- exploration
def test_exploration_is_recorded_and_signed() -> None:
    h = _header(exploration=Exploration(noise_std=0.25))
    assert h.to_dict()["exploration"] == {"noise_std": 0.25}
    back = schemas.decode_snapshot_header(schemas.encode(h))
    assert back == h and back.exploration == Exploration(noise_std=0.25)
    verify_snapshot(back, PAYLOAD, KEY)
    raw = schemas.encode(h)
    for tampered in (
        raw.replace(b'"noise_std":0.25', b'"noise_std":0.0'),  # exploration changed on the wire
        raw.replace(b',"exploration":{"noise_std":0.25}', b""),  # or stripped (the node's default)
    ):
        assert tampered != raw
        with pytest.raises(SchemaError) as info:
            verify_snapshot(schemas.decode_snapshot_header(tampered), PAYLOAD, KEY)
        assert info.value.field == "signature"
    with pytest.raises(SchemaError) as info:
        verify_snapshot(dataclasses.replace(h, exploration=None), PAYLOAD, KEY)
    assert info.value.field == "signature"


def test_header_without_exploration_is_encoded_and_signed_as_before() -> None:
    """Old headers (no ``exploration``) keep their bytes: no member, not null."""
    old = _header()
    assert old.exploration is None and "exploration" not in old.to_dict()
    assert b"exploration" not in canonical_header_bytes(old)
    # null on the wire reads as absent (as key_id does)
    d = old.to_dict()
    d["exploration"] = None
    back = schemas.decode_snapshot_header(orjson.dumps(d))
    assert back == old
    verify_snapshot(back, PAYLOAD, KEY)


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ({"noise_std": -0.1}, "exploration.noise_std"),
        ({"noise_std": "0.1"}, "exploration.noise_std"),
        ({"noise_std": True}, "exploration.noise_std"),
        ({"noise_std": 1e300}, "exploration.noise_std"),
        ({}, "exploration.noise_std"),
        ({"noise_std": 0.1, "wide_std": -1.0}, "exploration.wide_std"),
        ({"noise_std": 0.1, "wide_std": None}, "exploration.wide_std"),
        ({"noise_std": 0.1, "wide_share": 1.5}, "exploration.wide_share"),
        ({"noise_std": 0.1, "wide_share": -0.25}, "exploration.wide_share"),
        ({"noise_std": 0.1, "wide_share": "0.5"}, "exploration.wide_share"),
        ({"noise_std": 0.1, "uniform_share": 1.5}, "exploration.uniform_share"),
        ({"noise_std": 0.1, "uniform_share": -0.25}, "exploration.uniform_share"),
        ({"noise_std": 0.1, "uniform_share": None}, "exploration.uniform_share"),
        ([0.1], "exploration"),
        ("0.1", "exploration"),
    ],
)
def test_malformed_exploration_is_rejected_by_the_decoder_and_the_json_schema(
    value: object, field: str
) -> None:
    d = _header(exploration=Exploration(noise_std=0.1)).to_dict()
    d["exploration"] = value
    with pytest.raises(SchemaError) as info:
        schemas.decode_snapshot_header(orjson.dumps(d))
    assert info.value.field == field
    validator = jsonschema.Draft202012Validator(record_schema("snapshot_header"))
    assert not validator.is_valid(d)
    d["exploration"] = {"noise_std": 0.0}
    assert validator.is_valid(d) and schemas.decode_snapshot_header(
        orjson.dumps(d)
    ).exploration == Exploration(noise_std=0.0)


def test_exploration_validates_on_construction() -> None:
    assert Exploration(noise_std=0).noise_std == 0.0 and type(Exploration(noise_std=0).noise_std) is float
    with pytest.raises(SchemaError) as info:
        Exploration(noise_std=-1.0)
    assert info.value.field == "noise_std"
    for kwargs, field in (({"wide_std": -0.5}, "wide_std"), ({"wide_share": 1.01}, "wide_share")):
        with pytest.raises(SchemaError) as info:
            Exploration(noise_std=0.1, **kwargs)
        assert info.value.field == field
    assert Exploration(noise_std=0.1, wide_std=1, wide_share=1).wide_share == 1.0  # bounds included
    with pytest.raises(SchemaError) as info:  # the shares of the mixture's components sum to <= 1
        Exploration(noise_std=0.1, wide_std=1.0, wide_share=0.5, uniform_share=0.75)
    assert info.value.field == "uniform_share"
    assert Exploration(noise_std=0.1, wide_std=1.0, wide_share=0.25, uniform_share=0.75).uniform_share == 0.75


def test_wide_exploration_is_recorded_signed_and_old_explorations_decode() -> None:
    wide = Exploration(noise_std=0.1, wide_std=1.0, wide_share=0.25)
    h = _header(exploration=wide)
    assert h.to_dict()["exploration"] == {"noise_std": 0.1, "wide_std": 1.0, "wide_share": 0.25}
    back = schemas.decode_snapshot_header(schemas.encode(h))
    assert back.exploration == wide
    verify_snapshot(back, PAYLOAD, KEY)
    raw = schemas.encode(h)
    for tampered in (
        raw.replace(b'"wide_share":0.25', b'"wide_share":0.5'),
        raw.replace(b',"wide_std":1.0', b""),
    ):
        assert tampered != raw
        with pytest.raises(SchemaError) as info:
            verify_snapshot(schemas.decode_snapshot_header(tampered), PAYLOAD, KEY)
        assert info.value.field == "signature"
    # an exploration without the wide fields (older headers) reads as no wide exploration, and
    # one without wide lists is written as before them (defaults left out of the signed bytes)
    d = h.to_dict()
    d["exploration"] = {"noise_std": 0.2}
    assert schemas.decode_snapshot_header(orjson.dumps(d)).exploration == Exploration(0.2, 0.0, 0.0)
    assert _header(exploration=Exploration(noise_std=0.2)).to_dict()["exploration"] == {"noise_std": 0.2}
    validator = jsonschema.Draft202012Validator(record_schema("snapshot_header"))
    assert validator.is_valid(d) and validator.is_valid(h.to_dict())


def test_uniform_exploration_is_recorded_signed_and_older_headers_verify() -> None:
    uniform = Exploration(noise_std=0.1, wide_std=1.0, uniform_share=0.25)
    h = _header(exploration=uniform)
    assert h.to_dict()["exploration"] == {"noise_std": 0.1, "wide_std": 1.0, "uniform_share": 0.25}
    raw = schemas.encode(h)
    back = schemas.decode_snapshot_header(raw)
    assert back.exploration == uniform
    verify_snapshot(back, PAYLOAD, KEY)
    for tampered in (
        raw.replace(b'"uniform_share":0.25', b'"uniform_share":0.5'),
        raw.replace(b',"uniform_share":0.25', b""),
    ):
        assert tampered != raw
        with pytest.raises(SchemaError) as info:
            verify_snapshot(schemas.decode_snapshot_header(tampered), PAYLOAD, KEY)
        assert info.value.field == "signature"
    # a header without uniform exploration is written (and signed) as before the field existed:
    # the documented version-2 vector (wide) and the version-1 header still verify
    from schemas.examples import EXAMPLE_HMAC_KEY, EXAMPLE_PAYLOAD, SNAPSHOT_HEADER

    assert b"uniform_share" not in canonical_header_bytes(SNAPSHOT_HEADER)
    verify_snapshot(
        schemas.decode_snapshot_header(schemas.encode(SNAPSHOT_HEADER)), EXAMPLE_PAYLOAD, EXAMPLE_HMAC_KEY
    )
    validator = jsonschema.Draft202012Validator(record_schema("snapshot_header"))
    assert validator.is_valid(h.to_dict())
