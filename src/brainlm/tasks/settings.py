"""Task settings: each task takes one frozen settings dataclass, or its fields as keywords."""

from __future__ import annotations

import dataclasses
from typing import TypeVar

from brainlm.errors import BrainLMInputError

__all__ = ["resolve_settings"]

S = TypeVar("S")


def resolve_settings(cls: type[S], settings: S | None, options: dict) -> S:
    """``settings``, or a ``cls`` built from keyword ``options`` (validated by its constructor);
    an error when both are given or when an option is not a field of ``cls``."""
    if settings is not None and options:
        raise BrainLMInputError(f"give a {cls.__name__} or its fields as keywords ({sorted(options)}), not both")
    if settings is not None:
        if not isinstance(settings, cls):
            raise BrainLMInputError(f"settings: expected a {cls.__name__}, found {type(settings).__name__}")
        return settings
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise BrainLMInputError(f"unknown option(s) {unknown}; {cls.__name__} has {sorted(names)}")
    return cls(**options)
