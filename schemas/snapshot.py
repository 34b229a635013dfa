"""Actor snapshot headers: what a published model snapshot is, and its HMAC-SHA256 signature.

A snapshot is a header record (this module) plus a payload (safetensors bytes, sent in
``chunk_count`` chunks). The signature authenticates the header, and the header pins the payload
by size and SHA-256, so verifying both authenticates the payload:

    signature = hex(HMAC-SHA256(key, canonical_header_bytes(header)))
    canonical_header_bytes = the header's JSON form without "signature",
                             keys sorted (recursively), no whitespace, UTF-8

``key_id`` (optional, signed) names the key that signed the header, so serving nodes can accept a
set of keys while one is rotated. Headers written before it existed have no ``key_id``: they are
encoded, canonicalized and signed exactly as before, and verified against every accepted key.

``exploration`` (optional, signed) is how serving explores around the snapshot's weights: the
learner records its configured exploration here, and the nodes serve the snapshot with it (one
source of truth for training, evaluation and production). Added the way ``key_id`` was: absent
is left out of the JSON, so older headers re-encode and verify byte for byte. Schema version 2
added its wide exploration (``wide_std``, ``wide_share``) and its uniform exploration
(``uniform_share``), left out of the JSON at their default 0 for the same reason.

``global_weights`` (optional, signed; guarded rollout) is the learner's moving average of its
weight generator's mean weights, which the rollout's holdout arm is served; absent is left out of
the JSON, as ``key_id`` is.

A header keeps the ``schema_version`` it was written with (every other record reads as the
current version): the version is part of the signed bytes, so a version-1 header must be
canonicalized as version 1 to verify.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Final, Literal

import orjson

from schemas._model import SCHEMA_VERSION, Model, child_prefix
from schemas.errors import SchemaError
from schemas.events import MAX_OBJECTIVES
from schemas.validate import (
    MISSING,
    type_error,
    v_const,
    v_hex64,
    v_int,
    v_json_object,
    v_number,
    v_simplex,
)

PAYLOAD_FORMAT: Final = "safetensors"
_PLACEHOLDER_SIGNATURE: Final = "0" * 64
MAX_KEY_ID_LEN: Final = 64
KEY_ID_PATTERN: Final = "^[A-Za-z0-9._-]{1,64}$"
"""Key ids: short tokens without ``:`` or ``,`` (the separators of ``Settings.snapshot_hmac_keys``)."""
_KEY_ID_RE: Final = re.compile(KEY_ID_PATTERN)


def v_key_id(value: object, path: str) -> str:
    """A key id (:data:`KEY_ID_PATTERN`)."""
    if type(value) is not str or not _KEY_ID_RE.match(value):
        raise SchemaError(path, f"key id must match {KEY_ID_PATTERN}, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Exploration(Model):
    """How serving explores around a snapshot's objective weights (the learner's setting).

    A mixture drawn per list: on a ``uniform_share`` share of lists the weights are uniform on
    the simplex (whatever the generator outputs); on a ``wide_share`` share, Gaussian noise of std
    ``wide_std`` on the weight generator's logits; on the rest, of std ``noise_std``. The density
    of the served weights under this mixture is ``model.policy.log_propensity``.
    """

    noise_std: float
    """std of the Gaussian noise added to the weight generator's logits (0 = exploit only)"""
    wide_std: float = 0.0
    """std of the logit noise on the widely explored lists"""
    wide_share: float = 0.0
    """share of lists explored with ``wide_std`` instead of ``noise_std``, in [0, 1] (0 = none)"""
    uniform_share: float = 0.0
    """share of lists served weights uniform on the simplex (Dirichlet(1, ..., 1)), independent of
    the generator, in [0, 1 - wide_share] (0 = none)"""

    def _json(self) -> dict[str, Any]:
        # Defaults are left out: an exploration without wide lists encodes (and is signed) as in
        # version-1 headers, which had only noise_std.
        out: dict[str, Any] = {"noise_std": self.noise_std}
        if self.wide_std != 0.0:
            out["wide_std"] = self.wide_std
        if self.wide_share != 0.0:
            out["wide_share"] = self.wide_share
        if self.uniform_share != 0.0:
            out["uniform_share"] = self.uniform_share
        return out

    @staticmethod
    def _check(src: Mapping[str, Any], path: str) -> dict[str, Any]:
        p = child_prefix(path)
        out: dict[str, float] = {}
        fields = (("noise_std", MISSING), ("wide_std", 0.0), ("wide_share", 0.0), ("uniform_share", 0.0))
        for name, default in fields:
            value = v_number(src.get(name, default), p + name)
            if value < 0.0:
                raise SchemaError(p + name, f"must be >= 0, got {value!r}")
            out[name] = value
        if out["wide_share"] > 1.0:
            raise SchemaError(p + "wide_share", f"must be in [0, 1], got {out['wide_share']!r}")
        if out["wide_share"] + out["uniform_share"] > 1.0:
            raise SchemaError(
                p + "uniform_share",
                f"must be in [0, 1 - wide_share = {1.0 - out['wide_share']!r}], got {out['uniform_share']!r}",
            )
        return out


def v_global_weights(value: Any, path: str) -> tuple[float, ...]:
    """1..MAX_OBJECTIVES weights >= 0 summing to 1 (within SIMPLEX_TOLERANCE)."""
    if not isinstance(value, (list, tuple)):
        raise type_error(value, path, "an array of numbers")
    n = len(value)
    if not 0 < n <= MAX_OBJECTIVES:
        raise SchemaError(path, f"needs 1..{MAX_OBJECTIVES} entries (one per objective), got {n}")
    return v_simplex(value, path, n, "one per objective")


@dataclass(frozen=True, slots=True)
class SnapshotHeader(Model):
    """Header of one actor snapshot. Not hashable (``model_config`` is a dict)."""

    TYPE: ClassVar[str | None] = "snapshot_header"
    type: Literal["snapshot_header"] = field(default="snapshot_header", init=False, repr=False)
    schema_version: int = field(default=SCHEMA_VERSION, init=False, repr=False)
    snapshot_version: int
    created_at_ms: int
    training_step: int
    watermark_ms: int
    model_config: dict[str, Any]
    payload_format: str
    payload_size: int
    payload_sha256: str
    chunk_count: int
    signature: str
    key_id: str | None = None  # absent in headers from before key rotation
    exploration: Exploration | None = None  # absent in headers from before it was recorded
    global_weights: tuple[float, ...] | None = None
    """The learner's exponential moving average of its weight generator's mean weights over
    training batches, one per objective (on the simplex): the fixed weights the rollout's holdout
    arm is served with. Absent in headers from before the guarded rollout (signed, left out when
    None like ``key_id``)."""

    _NESTED: ClassVar[tuple[str, ...]] = ("exploration",)

    def _json(self) -> dict[str, Any]:
        # An absent key_id, exploration or global_weights is left out (not written as null): old
        # headers re-encode, and canonicalize, byte for byte as they were signed.
        out = Model._json(self)  # not super(): zero-argument super() fails in slots dataclasses
        for optional in ("key_id", "exploration", "global_weights"):
            if out[optional] is None:
                del out[optional]
        return out

    @staticmethod
    def _check(src: Mapping[str, Any], path: str) -> dict[str, Any]:
        p = child_prefix(path)
        g = src.get
        key_id = g("key_id")
        exploration = g("exploration")
        global_weights = g("global_weights")
        out: dict[str, Any] = {
            "snapshot_version": v_int(g("snapshot_version", MISSING), p + "snapshot_version", 1),
            "created_at_ms": v_int(g("created_at_ms", MISSING), p + "created_at_ms"),
            "training_step": v_int(g("training_step", MISSING), p + "training_step"),
            "watermark_ms": v_int(g("watermark_ms", MISSING), p + "watermark_ms"),
            "model_config": v_json_object(g("model_config", MISSING), p + "model_config"),
            "payload_format": v_const(g("payload_format", MISSING), p + "payload_format", PAYLOAD_FORMAT),
            "payload_size": v_int(g("payload_size", MISSING), p + "payload_size"),
            "payload_sha256": v_hex64(g("payload_sha256", MISSING), p + "payload_sha256"),
            "chunk_count": v_int(g("chunk_count", MISSING), p + "chunk_count", 1),
            "signature": v_hex64(g("signature", MISSING), p + "signature"),
            "key_id": None if key_id is None else v_key_id(key_id, p + "key_id"),
            "exploration": None
            if exploration is None
            else Exploration.nested(exploration, p + "exploration"),
            "global_weights": None
            if global_weights is None
            else v_global_weights(global_weights, p + "global_weights"),
        }
        # Decoding (check_envelope has validated it): keep the version the header was signed with.
        # Construction in Python has none in ``src`` and writes the current version.
        version = g("schema_version")
        if version is not None:
            out["schema_version"] = version
        return out


def canonical_header_bytes(header: SnapshotHeader | Mapping[str, Any]) -> bytes:
    """The bytes the signature covers: the header's JSON form without ``signature``, keys sorted
    recursively, compact, UTF-8. A mapping (with or without ``signature``, ``type`` and
    ``schema_version``) is validated first; raises SchemaError if it is not a valid header."""
    if not isinstance(header, SnapshotHeader):
        data = {"type": SnapshotHeader.TYPE, "schema_version": SCHEMA_VERSION, **header}
        data["signature"] = _PLACEHOLDER_SIGNATURE
        header = SnapshotHeader.from_dict(data)
    d = header.to_dict()  # without key_id, exploration when absent (see SnapshotHeader._json)
    del d["signature"]
    return orjson.dumps(d, option=orjson.OPT_SORT_KEYS)


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, (bytes, bytearray)):
        raise TypeError(f"key must be bytes, got {type(key).__name__}")
    if not key:
        raise ValueError("key must not be empty")
    return bytes(key)


def sign(header: SnapshotHeader | Mapping[str, Any], key: bytes) -> str:
    """Hex HMAC-SHA256 of :func:`canonical_header_bytes` (any existing signature is ignored)."""
    return hmac.new(_check_key(key), canonical_header_bytes(header), hashlib.sha256).hexdigest()


def verify_snapshot(
    header: SnapshotHeader,
    payload: bytes | bytearray | memoryview,
    key: bytes | Mapping[str, bytes],
) -> None:
    """Check the header's signature, then the payload's size and SHA-256 against the header.

    ``key`` is one key, or the accepted keys by id: a header with a ``key_id`` must be signed by
    the key of that id (field ``key_id`` if the id is not accepted); one without (written before
    key ids existed) may be signed by any of them. Raises SchemaError with field ``key_id``,
    ``signature``, ``payload_size`` or ``payload_sha256``. Comparisons of digests are constant-time.
    """
    if isinstance(key, Mapping):
        if header.key_id is not None:
            if header.key_id not in key:
                accepted = ", ".join(sorted(key)) or "none"
                raise SchemaError("key_id", f"unknown key id {header.key_id!r} (accepted: {accepted})")
            candidates = [key[header.key_id]]
        else:
            candidates = list(key.values())
    else:
        candidates = [key]
    # Every candidate is tried (no early exit), so timing does not tell which one matched.
    matched = [hmac.compare_digest(sign(header, k), header.signature) for k in candidates]
    if not any(matched):
        raise SchemaError("signature", "HMAC-SHA256 signature mismatch (wrong key or tampered header)")
    size = memoryview(payload).nbytes
    if size != header.payload_size:
        raise SchemaError("payload_size", f"payload has {size} bytes, header says {header.payload_size}")
    if not hmac.compare_digest(hashlib.sha256(payload).hexdigest(), header.payload_sha256):
        raise SchemaError("payload_sha256", "payload SHA-256 does not match the header")


def make_header(
    *,
    snapshot_version: int,
    created_at_ms: int,
    training_step: int,
    watermark_ms: int,
    model_config: Mapping[str, Any],
    payload: bytes | bytearray | memoryview,
    key: bytes,
    key_id: str | None = None,
    exploration: Exploration | None = None,
    global_weights: tuple[float, ...] | None = None,
    chunk_count: int = 1,
) -> SnapshotHeader:
    """Build a signed header for ``payload``: computes payload_size, payload_sha256 and signature
    (which also covers ``key_id``, the id of ``key``, ``exploration`` and ``global_weights``;
    None writes a header without the field)."""
    unsigned = SnapshotHeader(
        snapshot_version=snapshot_version,
        created_at_ms=created_at_ms,
        training_step=training_step,
        watermark_ms=watermark_ms,
        model_config=dict(model_config),
        payload_format=PAYLOAD_FORMAT,
        payload_size=memoryview(payload).nbytes,
        payload_sha256=hashlib.sha256(payload).hexdigest(),
        chunk_count=chunk_count,
        signature=_PLACEHOLDER_SIGNATURE,
        key_id=key_id,
        exploration=exploration,
        global_weights=global_weights,
    )
    return replace(unsigned, signature=sign(unsigned, key))


__all__ = [
    "KEY_ID_PATTERN",
    "PAYLOAD_FORMAT",
    "Exploration",
    "SnapshotHeader",
    "canonical_header_bytes",
    "make_header",
    "sign",
    "v_key_id",
    "verify_snapshot",
]
