"""Typed task results: one frozen dataclass per task, written to JSON and read back strictly.

Every task returns a :class:`TaskResult` subclass (``ReconstructionResult``, ``NetworksResult``,
...). The report and the demo read its attributes, so a renamed or removed field fails where
the result is read back (:meth:`TaskResult.from_json` names the file and the field), and in the
tests, instead of in a report at run time.

The JSON form is the task's historical result dictionary plus two keys, ``schema`` (the task's
kind) and ``schema_version``. A result also reads as that mapping (``result["methods"]``), so
scripts written against the earlier dictionaries keep working; new code reads attributes.

Nested parts are dataclasses too where a reader relies on their fields; parts whose keys vary
by method or baseline stay mappings, typed as ``dict``.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from brainlm.data.atomic import to_json
from brainlm.errors import BrainLMInputError
from brainlm.tasks.results_folder import read_results_json

__all__ = ["TaskResult", "Record", "read_result"]

R = TypeVar("R", bound="Record")


class Record:
    """A dataclass part of a result: built from its JSON mapping by :meth:`from_json`, which
    refuses a missing or an unknown field (by name, with where it was found)."""

    @classmethod
    def from_json(cls: type[R], data: Mapping, source: str | None = None, where: str | None = None) -> R:
        where = where or cls.__name__
        if not isinstance(data, Mapping):
            raise BrainLMInputError(f"{where}: expected a JSON object, found {type(data).__name__}", source)
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(names) - {"schema", "schema_version"})
        required = [n for n, f in names.items()
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [n for n in required if n not in data]
        if missing or unknown:
            parts = ([f"lacks field(s) {missing}"] if missing else []) + ([f"has unknown field(s) {unknown}"]
                                                                          if unknown else [])
            raise BrainLMInputError(f"{where} {' and '.join(parts)}; was it written by another version of "
                                    "brainlm? Run the task again", source)
        hints = _hints(cls)
        values = {n: _decode(hints[n], data[n], source, f"{where}.{n}") for n in names if n in data}
        return cls(**values)

    def to_json(self) -> dict:
        """The JSON-ready mapping (nested parts as mappings, in field order)."""
        return {f.name: _encode(getattr(self, f.name)) for f in dataclasses.fields(self)}


T = TypeVar("T", bound="TaskResult")


class TaskResult(Record, Mapping):
    """The result of one task. Subclasses are frozen dataclasses that set ``KIND`` (the
    ``schema`` key) and ``SCHEMA_VERSION`` (raised when a field changes meaning or is renamed)."""

    KIND: ClassVar[str] = ""
    SCHEMA_VERSION: ClassVar[int] = 1

    def to_json(self) -> dict:
        return {"schema": self.KIND, "schema_version": self.SCHEMA_VERSION, **super().to_json()}

    @classmethod
    def from_json(cls: type[T], data: Mapping, source: str | None = None, where: str | None = None) -> T:
        if isinstance(data, Mapping) and "schema" in data:
            if data["schema"] != cls.KIND:
                raise BrainLMInputError(f"a {data['schema']!r} result, expected {cls.KIND!r}", source)
            if data.get("schema_version") != cls.SCHEMA_VERSION:
                raise BrainLMInputError(
                    f"{cls.KIND} result of schema version {data.get('schema_version')!r}; this brainlm reads "
                    f"version {cls.SCHEMA_VERSION}: run the task again", source)
        return super().from_json(data, source, where or cls.KIND)

    @classmethod
    def read(cls: type[T], path: str | Path) -> T:
        """The result saved at ``path``; an error naming the file when it is missing, damaged or
        of another schema."""
        data = read_results_json(path)
        return cls.from_json(data, str(path))

    def dumps(self, indent: int | None = 1) -> str:
        """The JSON text (NaN and infinities as null)."""
        return to_json(self.to_json(), indent=indent)

    # The mapping view: the JSON form, for scripts written against the result dictionaries.
    @functools.cached_property
    def _mapping(self) -> dict:
        return self.to_json()

    def __getitem__(self, key: str) -> Any:
        return self._mapping[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._mapping)

    def __len__(self) -> int:
        return len(self._mapping)


def read_result(cls: type[T], path: str | Path) -> T | None:
    """:meth:`TaskResult.read`, or None when the file does not exist (a step absent from a run)."""
    return cls.read(path) if Path(path).is_file() else None


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _decode(tp, value, source: str | None, where: str):
    """``value`` (parsed JSON) as type ``tp``: dataclass parts are built field by field; lists and
    dicts of parts element by element; anything else is taken as it is."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
        origin = typing.get_origin(tp)
    if isinstance(tp, type) and issubclass(tp, Record):
        return tp.from_json(value, source, where)
    if origin is list and value is not None:
        (arg,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise BrainLMInputError(f"{where}: expected a JSON list, found {type(value).__name__}", source)
        return [_decode(arg, v, source, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict and value is not None:
        _, arg = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise BrainLMInputError(f"{where}: expected a JSON object, found {type(value).__name__}", source)
        return {k: _decode(arg, v, source, f"{where}.{k}") for k, v in value.items()}
    return value


def _encode(value):
    if isinstance(value, Record):
        return value.to_json()
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value
