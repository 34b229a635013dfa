"""Base machinery shared by every schema dataclass: validation on construction, trusted
construction from already-validated JSON, the type/schema_version envelope, to_dict/from_dict.

Every concrete class is a ``@dataclass(frozen=True, slots=True)`` deriving from :class:`Model`
and defines ``_check(src, path)``: it reads raw field values with ``src.get(name, MISSING)``,
validates and normalizes them and returns ``{field name: value}``. The same ``_check`` runs for

* Python construction (``Click(...)``): ``__post_init__`` feeds it the constructor arguments and
  stores the normalized values (lists become tuples, ints in float fields become floats);
* decoding (``from_dict``/``decode``): it is fed the JSON dict, and the object is then built
  without running ``__post_init__`` a second time.

So every instance that exists has passed validation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, Final, TypeVar

import orjson

from schemas.errors import ROOT, SchemaError
from schemas.validate import MISSING, type_error, type_name

SCHEMA_VERSION: Final = 2
"""The version every record is encoded with. 2 added ``Impression.log_propensity`` and the wide
exploration of ``Exploration`` (``wide_std``, ``wide_share``, and later ``uniform_share``), all
optional."""

SUPPORTED_SCHEMA_VERSIONS: Final = frozenset({1, 2})
"""Versions the decoder accepts (older known versions are upgraded to the in-memory form: a
version-1 record reads as version 2 with the new fields at their defaults; a snapshot header
keeps the version it was signed with, see ``schemas.snapshot``)."""

M = TypeVar("M", bound="Model")

_new = object.__new__
_set = object.__setattr__


def child_prefix(path: str) -> str:
    """Prefix for the fields of the object at ``path`` (``""`` for the root)."""
    return f"{path}." if path else ""


class Model:
    """Base of every schema dataclass (top-level records and nested objects)."""

    __slots__ = ()

    TYPE: ClassVar[str | None] = None
    """The ``type`` discriminator of top-level records; None for nested objects."""

    @staticmethod
    def _check(src: Mapping[str, Any], path: str) -> dict[str, Any]:
        raise NotImplementedError

    _NESTED: ClassVar[tuple[str, ...]] = ()
    """Fields holding a Model, a tuple of Models or an optional Model (converted by ``_json``)."""

    @classmethod
    def _field_names(cls) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(all field names in order, names of the constructor's fields), cached per class."""
        names: tuple[tuple[str, ...], tuple[str, ...]] | None = cls.__dict__.get("_FIELD_NAMES_CACHE")
        if names is None:
            fs = dataclasses.fields(cls)  # type: ignore[arg-type]
            names = (tuple(f.name for f in fs), tuple(f.name for f in fs if f.init))
            type.__setattr__(cls, "_FIELD_NAMES_CACHE", names)
        return names

    def _json(self) -> dict[str, Any]:
        """The JSON form with tuples left as tuples (orjson writes them as arrays)."""
        out = {name: getattr(self, name) for name in self._field_names()[0]}
        for name in self._NESTED:
            v = out[name]
            if isinstance(v, Model):
                out[name] = v._json()
            elif type(v) is tuple:
                out[name] = [x._json() for x in v]
        return out

    def __post_init__(self) -> None:
        src = {name: getattr(self, name) for name in self._field_names()[1]}
        for name, value in self._check(src, "").items():
            _set(self, name, value)

    # ------------------------------------------------------------------------ from JSON
    @classmethod
    def _from_json(cls: type[M], src: Any, path: str) -> M:
        """Validate the JSON value ``src`` found at ``path`` and build an instance."""
        if type(src) is not dict and not isinstance(src, Mapping):
            raise type_error(src, path or ROOT, "an object")
        obj = _new(cls)
        if cls.TYPE is not None:
            check_envelope(src, path, cls.TYPE)
            _set(obj, "type", cls.TYPE)
            _set(obj, "schema_version", SCHEMA_VERSION)
        for name, value in cls._check(src, path).items():
            _set(obj, name, value)
        return obj

    @classmethod
    def nested(cls: type[M], value: Any, path: str) -> M:
        """A nested field holding this type: an instance (already valid) or a JSON object."""
        if type(value) is cls:
            return value
        return cls._from_json(value, path)

    @classmethod
    def from_dict(cls: type[M], data: Mapping[str, Any]) -> M:
        """Validate a JSON-shaped dict (as ``orjson.loads`` returns it) and build an instance.

        Raises only :class:`SchemaError`; ``data`` is not modified and not aliased.
        """
        return guarded(cls._from_json, data, "")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form as a dict of plain lists/dicts (includes type and schema_version)."""
        return orjson.loads(orjson.dumps(self._json()))


def check_envelope(src: Mapping[str, Any], path: str, expected_type: str) -> None:
    """Check the ``type`` and ``schema_version`` fields of a top-level record."""
    p = child_prefix(path)
    t = src.get("type", MISSING)
    if t != expected_type or type(t) is not str:
        if type(t) is not str:
            raise type_error(t, p + "type", "string")
        raise SchemaError(p + "type", f"expected {expected_type!r}, got {t!r}")
    check_version(src.get("schema_version", MISSING), p + "schema_version")


def check_version(version: Any, path: str) -> int:
    if type(version) is not int:
        raise type_error(version, path, "integer")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        supported = ", ".join(map(str, sorted(SUPPORTED_SCHEMA_VERSIONS)))
        raise SchemaError(path, f"unsupported schema_version {version} (supported: {supported})")
    return version


def guarded(fn: Any, src: Any, path: str) -> Any:
    """Run a validating builder; any exception other than SchemaError is a bug in this package,
    but the decoder's contract is to raise nothing else, so it is reported as one on ``$``."""
    try:
        return fn(src, path)
    except SchemaError:
        raise
    except Exception as e:  # pragma: no cover - the fuzz tests check this never happens
        raise internal_error(e) from e


def internal_error(e: Exception) -> SchemaError:
    return SchemaError(ROOT, f"internal error: {type(e).__name__}: {e}")


__all__ = [
    "SCHEMA_VERSION",
    "SUPPORTED_SCHEMA_VERSIONS",
    "Model",
    "check_envelope",
    "check_version",
    "child_prefix",
    "guarded",
    "internal_error",
    "type_name",
]
