"""Tests for brainlm.data.participants: BIDS participants tables and phenotype lookup."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainlm.data.participants import phenotypes_for, read_participants
from brainlm.errors import BrainLMInputError

BIDS_TABLE = (
    "participant_id\tage\tsex\tgroup\thandedness\tfd_mean\tincluded\n"
    "sub-001\t22\tF\tcontrol\t85\t0.12\tTrue\n"
    "sub-002\tn/a\tM\tpatient\t-40\t0.31\tFalse\n"
    "sub-003\t35\tn/a\tcontrol\t\t0.08\tTrue\n"
    "sub-010\t41\tF\tpatient\t90\tn/a\tTrue\n"
)


def _raises(path: Path | str, *patterns: str):
    name = Path(path).name
    return pytest.raises(BrainLMInputError, match=re.escape(name) + r".*" + r".*".join(patterns))


@pytest.fixture
def bids(tmp_path) -> Path:
    path = tmp_path / "participants.tsv"
    path.write_text(BIDS_TABLE)
    return path


def test_bids_table(bids):
    table = read_participants(bids)
    assert table.index.name == "subject"
    assert list(table.index) == ["001", "002", "003", "010"]  # prefix stripped, zeros kept
    assert all(isinstance(i, str) for i in table.index)
    assert list(table.columns) == ["age", "sex", "group", "handedness", "fd_mean", "included"]
    assert pd.api.types.is_float_dtype(table["age"])  # n/a made it float, not text
    assert np.isnan(table.loc["002", "age"]) and table.loc["010", "age"] == 41
    assert pd.isna(table.loc["003", "sex"]) and table.loc["001", "sex"] == "F"
    assert pd.isna(table.loc["003", "handedness"])  # empty cell
    assert pd.api.types.is_bool_dtype(table["included"])


def test_phenotypes_are_plain_python(bids):
    table = read_participants(bids)
    out = phenotypes_for(table, ["sub-001", "002", "003"], source=str(bids))
    assert list(out) == ["001", "002", "003"]
    first = out["001"]
    assert first == {"age": 22.0, "sex": "F", "group": "control", "handedness": 85.0,
                     "fd_mean": 0.12, "included": True}
    assert type(first["age"]) is float and type(first["sex"]) is str
    assert type(first["included"]) is bool
    assert math.isnan(out["002"]["age"]) and type(out["002"]["age"]) is float
    assert math.isnan(out["003"]["sex"])  # missing text is float NaN too
    assert out["002"]["included"] is False


def test_integer_columns_give_int(tmp_path):
    path = tmp_path / "participants.tsv"
    path.write_text("participant_id\tage\tsite\nsub-A\t30\tNYU\nsub-B\t31\tKKI\n")
    out = phenotypes_for(read_participants(path), ["A", "B"], source=str(path))
    assert out["B"] == {"age": 31, "site": "KKI"} and type(out["B"]["age"]) is int


@pytest.mark.parametrize("column", ["subject", "Subject_ID", "SUB", "eid"])
def test_other_id_columns_csv(column, tmp_path):
    path = tmp_path / "phenotypes.csv"
    path.write_text(f"{column},age,fluid_intelligence\n1000123,61,7\n1000456,58,n/a\n")
    table = read_participants(path)
    assert list(table.index) == ["1000123", "1000456"]
    assert list(table.columns) == ["age", "fluid_intelligence"]
    assert np.isnan(table.loc["1000456", "fluid_intelligence"])


def test_explicit_id_column(tmp_path):
    path = tmp_path / "demographics.tsv"
    path.write_text("participant_id\tscan_id\tage\nsub-01\tS9\t20\nsub-02\tS8\t21\n")
    table = read_participants(path, id_column="scan_id")
    assert list(table.index) == ["S9", "S8"] and "participant_id" in table.columns
    with _raises(path, "no column 'ID'", "participant_id", "scan_id"):
        read_participants(path, id_column="ID")


def test_missing_id_column(tmp_path):
    path = tmp_path / "participants.tsv"
    path.write_text("name\tage\nalice\t30\n")
    with _raises(path, "no subject id column", "participant_id", r"\['name', 'age'\]"):
        read_participants(path)


def test_duplicate_ids(tmp_path):
    path = tmp_path / "participants.tsv"
    path.write_text("participant_id\tage\nsub-01\t20\nsub-02\t30\n01\t21\nsub-02\t30\n")
    with _raises(path, "duplicate subject ids", r"\['01', '02'\]"):
        read_participants(path)


def test_empty_id_cell(tmp_path):
    path = tmp_path / "participants.tsv"
    path.write_text("participant_id\tage\nsub-01\t20\nn/a\t30\n")
    with _raises(path, "'participant_id' is empty", "data row 2"):
        read_participants(path)


def test_missing_and_empty_file(tmp_path):
    path = tmp_path / "participants.tsv"
    with _raises(path, "not found"):
        read_participants(path)
    path.write_text("")
    with _raises(path, "empty"):
        read_participants(path)
    path.write_text("participant_id\tage\n")
    with _raises(path, "no rows"):
        read_participants(path)


def test_missing_subjects(bids):
    table = read_participants(bids)
    wanted = ["sub-001", "sub-101", "102", "sub-103", "104", "105", "106", "sub-101"]
    with _raises(bids, r"6 subject\(s\) have no row",
                 re.escape("['101', '102', '103', '104', '105']"), "allow_missing=True"):
        phenotypes_for(table, wanted, source=str(bids))
    out = phenotypes_for(table, wanted, source=str(bids), allow_missing=True)
    assert out["101"] == {} and out["106"] == {}
    assert out["001"]["age"] == 22.0
    assert len(out) == 7


def test_phenotypes_for_user_table_with_duplicates():
    table = pd.DataFrame({"age": [1, 2]}, index=pd.Index(["sub-01", "01"], name="subject"))
    with pytest.raises(BrainLMInputError, match=r"my_table\.tsv.*'01' more than once"):
        phenotypes_for(table, ["01"], source="my_table.tsv")
