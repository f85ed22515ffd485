"""Checks of single input values: one home for the "expected a positive ..." refusals.

Each check returns the value it accepted (converted where it says so) or raises
:class:`~brainlm.errors.BrainLMInputError` with one message form::

    {label} {value!r}; expected {what was expected}

``label`` is how the caller names the value, exactly as its users know it: a command-line option
(``"--epochs"``), a setting (``"TrainerSettings max_epochs"``, ``"batch_size"``) or a phrase
ending in "is" (``"horizon_trs is"``, ``"field 'tr' is"``, ``"option 'orientation' is"``).
``source`` (a file or folder) is prefixed to the message by ``BrainLMInputError``.

This module is a layer of its own just above :mod:`brainlm.errors` and :mod:`brainlm.version`:
every other layer may use it, and it imports nothing of brainlm but the error.
"""

from __future__ import annotations

import math

import numpy as np

from brainlm.errors import BrainLMInputError

__all__ = ["choice", "finite_float", "fraction", "integer_at_least", "non_negative_float", "positive_float",
           "positive_int", "positive_int_coerced", "worker_count"]


def _unit(unit: str) -> str:
    return f" {unit}" if unit else ""


def positive_int(value, label: str, source=None, *, numpy_integers: bool = False, of: str | None = None) -> int:
    """``value`` as an int when it is a whole number >= 1.

    Parameters
    ----------
    numpy_integers : bool
        Also accept numpy integers (``np.int64``); a bool is never a number here.
    of : str, optional
        What is counted, for the message: ``"TRs"`` gives "expected a positive number of TRs";
        without it, "expected a positive whole number".
    """
    types = (int, np.integer) if numpy_integers else int
    if isinstance(value, bool) or not isinstance(value, types) or value < 1:
        expected = f"a positive number of {of}" if of else "a positive whole number"
        raise BrainLMInputError(f"{label} {value!r}; expected {expected}", source)
    return int(value)


def positive_int_coerced(value, label: str, source=None) -> int:
    """``int(value)`` when it is >= 1 (a float is truncated, as ``int`` does; a value ``int``
    cannot convert raises its own ``TypeError`` or ``ValueError``)."""
    if int(value) < 1:
        raise BrainLMInputError(f"{label} {value!r}; expected a positive integer", source)
    return int(value)


def integer_at_least(value, label: str, minimum: int, source=None) -> int:
    """``value`` as an int when it is an integer (Python or numpy, not bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise BrainLMInputError(f"{label} {value!r}; expected an integer >= {minimum}", source)
    return int(value)


def finite_float(value, label: str, source=None) -> float:
    """``float(value)`` when it is a finite number (not a bool)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise BrainLMInputError(f"{label} {value!r}; expected a number", source) from None
    if not math.isfinite(v) or isinstance(value, bool):
        raise BrainLMInputError(f"{label} {value!r}; expected a finite number", source)
    return v


def non_negative_float(value, label: str, source=None, *, unit: str = "") -> float:
    """``float(value)`` when it is a finite number >= 0; ``unit`` (``"seconds"``) ends the
    message."""
    v = finite_float(value, label, source)
    if v < 0:
        raise BrainLMInputError(f"{label} {value!r}; expected a number >= 0{_unit(unit)}", source)
    return v


def positive_float(value, label: str, source=None, *, upper: float | None = None, unit: str = "") -> float:
    """``float(value)`` when it is a finite number > 0 and, with ``upper``, <= ``upper``;
    ``unit`` (``"seconds"``, ``"Hz"``) ends the message."""
    v = finite_float(value, label, source)
    if v <= 0 or (upper is not None and v > upper):
        bound = f" and <= {upper:g}" if upper is not None else ""
        raise BrainLMInputError(f"{label} {value!r}; expected a number > 0{bound}{_unit(unit)}", source)
    return v


def fraction(value, label: str, source=None, *, interval: str = "[0, 1)"):
    """``value`` when it lies in ``interval``, written as in the message: ``"(0, 1]"``, ``"[0, 1)"``
    (a square bracket includes its end). NaN is refused; ``value`` is returned as given."""
    low, high = (float(end) for end in interval[1:-1].split(","))
    above = low <= value if interval[0] == "[" else low < value
    below = value <= high if interval[-1] == "]" else value < high
    if not (above and below):
        raise BrainLMInputError(f"{label} {value!r}; expected a fraction in {interval}", source)
    return value


def choice(value, allowed, label: str, source=None):
    """``value`` when it is one of ``allowed`` (listed in the message)."""
    if value not in allowed:
        raise BrainLMInputError(f"{label} {value!r}; expected one of {list(allowed)}", source)
    return value


def worker_count(jobs, *, any_negative: bool = False) -> int:
    """``jobs`` of a ``--jobs`` option when it is a positive number of worker processes or -1
    (all cores); with ``any_negative``, also joblib's other negative counts (-2: all cores but
    one)."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs == 0 or (jobs < -1 and not any_negative):
        raise BrainLMInputError(f"jobs={jobs!r} (--jobs); expected a positive number of worker "
                                "processes, or -1 for all cores")
    return jobs
