"""The single-value checks of brainlm.validation: what each accepts, what it refuses, and the exact
message (the commands, settings objects and tests elsewhere match on these texts)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from brainlm.errors import BrainLMInputError
from brainlm.validation import (
    choice,
    finite_float,
    fraction,
    integer_at_least,
    non_negative_float,
    positive_float,
    positive_int,
    positive_int_coerced,
    worker_count,
)


def message(call) -> str:
    """The message of the BrainLMInputError ``call()`` raises."""
    with pytest.raises(BrainLMInputError) as caught:
        call()
    return str(caught.value)


# --- positive_int -----------------------------------------------------------------------------

@pytest.mark.parametrize("value", [1, 2, 10**12])
def test_positive_int_accepts_whole_numbers_from_1(value):
    assert positive_int(value, "--epochs") == value


@pytest.mark.parametrize("value, shown", [(0, "0"), (-3, "-3"), (True, "True"), (2.0, "2.0"), ("4", "'4'"),
                                          (None, "None"), (np.int64(3), repr(np.int64(3)))])
def test_positive_int_refuses_naming_the_label_and_the_value(value, shown):
    assert message(lambda: positive_int(value, "--epochs")) == (
        f"--epochs {shown}; expected a positive whole number")


def test_positive_int_with_numpy_integers_and_a_counted_unit():
    assert positive_int(np.int64(3), "context_trs is", numpy_integers=True) == 3
    assert type(positive_int(np.int64(3), "context_trs is", numpy_integers=True)) is int
    assert message(lambda: positive_int(np.int32(0), "horizon_trs is", "run/x.npy", numpy_integers=True,
                                        of="TRs")) == (
        f"run/x.npy: horizon_trs is {np.int32(0)!r}; expected a positive number of TRs")
    assert message(lambda: positive_int(np.bool_(True), "b", numpy_integers=True)).startswith("b ")


def test_positive_int_coerced_truncates_like_int_and_refuses_below_1():
    assert positive_int_coerced(2.7, "read_volumes is") == 2
    assert positive_int_coerced("5", "read_volumes is") == 5
    assert message(lambda: positive_int_coerced(0.5, "read_volumes is")) == (
        "read_volumes is 0.5; expected a positive integer")
    with pytest.raises(ValueError, match="invalid literal"):  # what int() says, unchanged
        positive_int_coerced("many", "read_volumes is")


# --- integer_at_least -------------------------------------------------------------------------

def test_integer_at_least_its_minimum():
    assert integer_at_least(0, "field 'seed' is", 0) == 0
    assert integer_at_least(np.int16(2), "field 'n_trs' is", 2) == 2
    assert message(lambda: integer_at_least(1, "field 'n_trs' is", 2)) == (
        "field 'n_trs' is 1; expected an integer >= 2")
    assert message(lambda: integer_at_least(False, "field 'seed' is", 0)) == (
        "field 'seed' is False; expected an integer >= 0")
    assert message(lambda: integer_at_least(3.0, "field 'seed' is", 0)) == (
        "field 'seed' is 3.0; expected an integer >= 0")


# --- finite, non-negative and positive floats -------------------------------------------------

def test_finite_float_converts_and_names_what_is_not_a_finite_number():
    assert finite_float("2.5", "field 'x' is") == 2.5 and finite_float(np.float32(1), "x") == 1.0
    assert message(lambda: finite_float("fast", "field 'dt' is")) == "field 'dt' is 'fast'; expected a number"
    assert message(lambda: finite_float(None, "field 'dt' is")) == "field 'dt' is None; expected a number"
    assert message(lambda: finite_float(math.inf, "field 'dt' is")) == (
        "field 'dt' is inf; expected a finite number")
    assert message(lambda: finite_float(True, "field 'dt' is")) == "field 'dt' is True; expected a finite number"


def test_non_negative_float():
    assert non_negative_float(0, "field 'noise_scale' is") == 0.0
    assert message(lambda: non_negative_float(-0.1, "field 'noise_scale' is", "site 'A'")) == (
        "site 'A': field 'noise_scale' is -0.1; expected a number >= 0")
    assert message(lambda: non_negative_float(-1, "field 'burn_in_s' is", unit="seconds")) == (
        "field 'burn_in_s' is -1; expected a number >= 0 seconds")
    assert message(lambda: non_negative_float(math.nan, "field 'x' is")) == (
        "field 'x' is nan; expected a finite number")


def test_positive_float_with_an_upper_bound_and_a_unit():
    assert positive_float(0.72, "field 'tr' is", upper=100.0, unit="seconds") == 0.72
    assert positive_float(100, "field 'tr' is", upper=100.0) == 100.0  # the bound is included
    assert message(lambda: positive_float(0, "field 'tr' is", "site 'B'", upper=100.0, unit="seconds")) == (
        "site 'B': field 'tr' is 0; expected a number > 0 and <= 100 seconds")
    assert message(lambda: positive_float(100.5, "field 'tr' is", upper=100.0, unit="seconds")) == (
        "field 'tr' is 100.5; expected a number > 0 and <= 100 seconds")
    assert message(lambda: positive_float(-2, "field 'frequency_hz' is", unit="Hz")) == (
        "field 'frequency_hz' is -2; expected a number > 0 Hz")
    assert message(lambda: positive_float(-2, "--clip")) == "--clip -2; expected a number > 0"


# --- fraction ---------------------------------------------------------------------------------

@pytest.mark.parametrize("interval, inside, outside", [
    ("(0, 1]", [1e-9, 0.5, 1], [0, -0.1, 1.0001, math.nan]),
    ("[0, 1)", [0, 0.5, 0.999], [1, -1e-9, math.nan]),
    ("(0, 1)", [0.25], [0, 1]),
    ("[0, 0.5]", [0, 0.5], [0.51]),
])
def test_fraction_includes_an_end_only_under_a_square_bracket(interval, inside, outside):
    for v in inside:
        assert fraction(v, "field 'density' is", interval=interval) == v
    for v in outside:
        assert message(lambda: fraction(v, "field 'density' is", interval=interval)) == (
            f"field 'density' is {v!r}; expected a fraction in {interval}")


# --- choice and worker_count ------------------------------------------------------------------

def test_choice_lists_what_is_allowed():
    assert choice("zstd", ("zstd", "none"), "option 'compression' is") == "zstd"
    assert message(lambda: choice("lz4", ("zstd", "none"), "option 'compression' is")) == (
        "option 'compression' is 'lz4'; expected one of ['zstd', 'none']")


def test_worker_count_takes_a_positive_count_or_minus_1():
    expected = "jobs={}; expected a positive number of worker processes, or -1 for all cores"
    assert worker_count(1) == 1 and worker_count(16) == 16 and worker_count(-1) == -1
    for jobs in (0, -2, True, 2.0, "4"):
        assert message(lambda: worker_count(jobs)) == f"jobs={jobs!r} (--jobs)" + expected[len("jobs={}"):]
    # joblib's other negative counts, where the caller hands jobs to joblib as given
    assert worker_count(-3, any_negative=True) == -3
    assert message(lambda: worker_count(0, any_negative=True)).startswith("jobs=0 (--jobs); expected")
