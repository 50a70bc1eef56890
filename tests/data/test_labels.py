"""Label and patient parsing: CSV shapes from public datasets, and the errors for broken ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from fundus_cli.data.labels import (class_names_from, compile_patient_regex, lookup_keys, patient_from_name,
                                    read_labels_csv)
from fundus_cli.errors import FundusError


def _csv(tmp_path: Path, text: str, name: str = "labels.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


def test_known_column_names_are_recognised_in_any_case_and_delimiter(tmp_path: Path) -> None:
    aptos = read_labels_csv(_csv(tmp_path, "id_code,diagnosis\nabc,2\ndef,0\n"))
    assert (aptos.id_column, aptos.label_column, aptos.patient_column) == ("id_code", "diagnosis", None)
    assert aptos.labels == {"abc": "2", "def": "0"}
    semi = read_labels_csv(_csv(tmp_path, "\ufeffImage;Level;Patient_ID\nx.jpg;1;p1\ny.jpg;;p2\n", "b.csv"))
    assert (semi.id_column, semi.label_column, semi.patient_column) == ("Image", "Level", "Patient_ID")
    # An empty label is unknown, not a class named ""; the patient is still read.
    assert semi.labels == {"x.jpg": "1"} and semi.patients == {"x.jpg": "p1", "y.jpg": "p2"}


def test_named_columns_win_and_a_wrong_name_lists_the_columns(tmp_path: Path) -> None:
    path = _csv(tmp_path, "file,grade,stage\na,1,3\n")
    assert read_labels_csv(path, label_column="STAGE").labels == {"a": "3"}
    with pytest.raises(FundusError, match=r"no column named 'severity'.*file, grade, stage.*--label-column"):
        read_labels_csv(path, label_column="severity")


@pytest.mark.parametrize("text, words", [
    ("", "is empty"),
    ("foo,bar\n1,2\n", "which column names the images"),
    ("image,comment\na,b\n", "no label column"),
    ("image,label\na,1\na,2\n", "line 3: image id 'a' appears twice"),
    ("image,label\n,1\n", "line 2: empty image id"),
])
def test_broken_csvs_are_clear_errors_naming_the_file(tmp_path: Path, text: str, words: str) -> None:
    path = _csv(tmp_path, text)
    with pytest.raises(FundusError) as e:
        read_labels_csv(path)
    assert str(path) in str(e.value) and words in str(e.value), str(e.value)


def test_not_utf8_and_missing_files_are_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("image,label\nb\xe9b\xe9,1\n".encode("latin-1"))
    with pytest.raises(FundusError, match="not UTF-8"):
        read_labels_csv(path)
    with pytest.raises(FundusError, match="not found"):
        read_labels_csv(tmp_path / "absent.csv")


def test_short_rows_and_blank_lines_are_tolerated(tmp_path: Path) -> None:
    out = read_labels_csv(_csv(tmp_path, "image,label,patient\na,1\n\n,,\nb,0,p\n"))
    assert out.labels == {"a": "1", "b": "0"} and out.patients == {"b": "p"}


def test_lookup_keys_most_specific_first_without_repeats() -> None:
    assert lookup_keys("sub/x.orig.jpg") == ["sub/x.orig.jpg", "x.orig.jpg", "x.orig", "x"]
    assert lookup_keys("a.png") == ["a.png", "a"]


def test_integer_grades_sort_numerically_so_grade_k_gets_index_k() -> None:
    assert class_names_from(["10", "2", "0", "1", "2"]) == ("0", "1", "2", "10")
    assert class_names_from(["normal", "amd", "dr"]) == ("amd", "dr", "normal")


def test_patient_from_name_prefers_the_named_group_then_group_1() -> None:
    assert patient_from_name(compile_patient_regex(r"(?P<eye>left|right)_(?P<patient>\d+)"), "left_17.jpg") == "17"
    assert patient_from_name(compile_patient_regex(r"(\d+)_(left|right)"), "0042_right.jpg") == "0042"
    assert patient_from_name(compile_patient_regex(r"P\d+"), "scan_P7.png") == "P7"
    assert patient_from_name(compile_patient_regex(r"(\d+)_"), "nomatch.png") is None
    with pytest.raises(FundusError, match="not a valid regular expression"):
        compile_patient_regex("(unclosed")
