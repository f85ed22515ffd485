import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from brainlm import BrainLMInputError
from brainlm.data.splits import assign_splits, explicit_splits, split_sizes


@given(n=st.integers(1, 500), a=st.integers(1, 10), b=st.integers(0, 10), c=st.integers(0, 10))
def test_split_sizes_property(n, a, b, c):
    f = np.array([a, b, c]) / (a + b + c)
    sizes = split_sizes(n, f)
    assert sum(sizes) == n and sizes[0] >= 1
    wanted = int((f > 0).sum())
    if n >= wanted:
        assert all(s >= 1 for s, fr in zip(sizes, f) if fr > 0)
    assert all(abs(s - fr * n) <= max(1.0, wanted) for s, fr in zip(sizes, f))


def test_assignment_is_seeded_and_order_free():
    subjects = [f"s{i:03d}" for i in range(100)] * 3  # three runs each
    a = assign_splits(subjects, seed=5)
    b = assign_splits(list(reversed(subjects)), seed=5)
    assert a == b
    assert assign_splits(subjects, seed=6) != a
    counts = {s: list(a.values()).count(s) for s in ("train", "val", "test")}
    assert counts == {"train": 80, "val": 10, "test": 10}


def test_bad_fractions():
    with pytest.raises(BrainLMInputError, match="summing to 1"):
        assign_splits(["a"], (0.5, 0.1, 0.1))
    with pytest.raises(BrainLMInputError, match="summing to 1"):
        assign_splits(["a"], (float("nan"), 0.5, 0.5))


@given(n=st.integers(1, 200), b=st.integers(0, 10), c=st.integers(0, 10))
def test_evaluation_only_fractions_never_fill_train(n, b, c):
    """Issue 16: a cohort only evaluated (train fraction 0) has no training subject, however few."""
    if b + c == 0:
        c = 1
    sizes = split_sizes(n, [0.0, b / (b + c), c / (b + c)])
    assert sum(sizes) == n and sizes[0] == 0
    assert (sizes[1] == 0) == (b == 0) or n < 2


def test_an_evaluation_only_cohort_is_all_test():
    a = assign_splits([f"s{i}" for i in range(7)], (0, 0, 1))
    assert set(a.values()) == {"test"} and len(a) == 7


def test_explicit_splits_need_every_subject():
    groups = ["a", "a", "b", "c"]
    assert explicit_splits(groups, {"a": "train", "b": "val", "c": "test", "z": "test"}) == \
        {"a": "train", "b": "val", "c": "test"}
    with pytest.raises(BrainLMInputError, match="lack 1 subject"):
        explicit_splits(groups, {"a": "train", "b": "val"})
    with pytest.raises(BrainLMInputError, match="expected one of"):
        explicit_splits(groups, {"a": "train", "b": "validation", "c": "test"})
    # No training subject: an evaluation-only cohort (issue 16).
    assert explicit_splits(groups, {"a": "test", "b": "val", "c": "test"}) == {"a": "test", "b": "val", "c": "test"}
