"""The HMAC keys of actor snapshots, from the settings: one key the learner signs with, a set of
keys (by id) the serving nodes accept.

Two forms of configuration (``base/settings.py``):

* one key: ``snapshot_hmac_key`` (secret) under the id ``snapshot_hmac_key_id`` ("default");
* several: ``snapshot_hmac_keys = "id1:secret1,id2:secret2"`` replaces the one-key form; the
  learner signs with the entry named ``snapshot_hmac_key_id``.

Rotation without downtime: nodes accept old+new, the learner switches ``snapshot_hmac_key_id`` to
the new key, nodes drop the old one (docs/hardening.md, section 2).

The built-in dev key (``DEV_HMAC_KEY``, public in this repository) is refused unless
``dev_mode`` is on, so a deployment that forgot to set a key fails at start instead of accepting
snapshots anyone can sign.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from base.settings import DEV_HMAC_KEY, Settings
from schemas import SchemaError
from schemas.snapshot import v_key_id


@dataclass(frozen=True)
class SnapshotKeys:
    accepted: Mapping[str, bytes]
    """key id -> secret: every key a serving node verifies snapshots with"""
    signing_id: str
    """the id the learner signs with (need not be accepted by a node that never signs)"""

    def signing(self) -> tuple[str, bytes]:
        """(id, secret) of the signing key; ValueError naming the settings if it is not configured."""
        if self.signing_id not in self.accepted:
            raise ValueError(
                f"snapshot_hmac_key_id {self.signing_id!r} is not one of the ids in snapshot_hmac_keys "
                f"({', '.join(sorted(self.accepted))}): the learner has no key to sign with"
            )
        return self.signing_id, self.accepted[self.signing_id]

    def uses_dev_key(self) -> bool:
        return DEV_HMAC_KEY.encode() in self.accepted.values()


def parse_keys(spec: str) -> dict[str, bytes]:
    """``"id1:secret1,id2:secret2"`` -> ``{"id1": b"secret1", ...}``. ValueError naming the
    setting on an empty secret, a bad or repeated id. Secrets may contain ``:`` but not ``,``."""
    out: dict[str, bytes] = {}
    for entry in spec.split(","):
        key_id, sep, secret = entry.strip().partition(":")
        try:
            v_key_id(key_id, "id")
        except SchemaError as exc:
            raise ValueError(f"snapshot_hmac_keys: entry {key_id!r}: {exc.reason}") from None
        if not sep or not secret:
            raise ValueError(f"snapshot_hmac_keys: key {key_id!r} has no secret (write id:secret)")
        if key_id in out:
            raise ValueError(f"snapshot_hmac_keys: key id {key_id!r} is given twice")
        out[key_id] = secret.encode()
    return out


def snapshot_keys(settings: Settings) -> SnapshotKeys:
    """The keys configured in ``settings``; ValueError naming the setting when they are unusable,
    including the dev key outside dev_mode."""
    try:
        signing_id = v_key_id(settings.snapshot_hmac_key_id, "id")
    except SchemaError as exc:
        raise ValueError(f"snapshot_hmac_key_id: {exc.reason}") from None
    if settings.snapshot_hmac_keys.strip():
        keys = SnapshotKeys(parse_keys(settings.snapshot_hmac_keys), signing_id)
    else:
        if not settings.snapshot_hmac_key:
            raise ValueError("snapshot_hmac_key is empty: set PAPEREC_SNAPSHOT_HMAC_KEY to a secret")
        keys = SnapshotKeys({signing_id: settings.snapshot_hmac_key.encode()}, signing_id)
    if keys.uses_dev_key() and not settings.dev_mode:
        raise ValueError(
            "the snapshot HMAC key is the built-in development key, which is public: set "
            "PAPEREC_SNAPSHOT_HMAC_KEY (--snapshot-hmac-key) or PAPEREC_SNAPSHOT_HMAC_KEYS "
            "(--snapshot-hmac-keys) to a secret, or start with PAPEREC_DEV_MODE=1 (--dev-mode true) "
            "on a development stack"
        )
    return keys


__all__ = ["SnapshotKeys", "parse_keys", "snapshot_keys"]
