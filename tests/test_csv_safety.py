"""Every CSV medmtl writes is safe to open in a spreadsheet, read back with the ``csv`` module."""

from __future__ import annotations

import ast
import csv
import io
from pathlib import Path

import numpy as np
import pytest

from medmtl.csv_safety import FORMULA_TRIGGERS, csv_text, safe_cell
from medmtl.data.demo import generate_demo_data

PACKAGE = Path(__file__).resolve().parents[1] / "medmtl"

FORMULAS = [
    "=cmd|' /C calc'!A0",
    "+SUM(1,1)",
    "@SUM(1)",
    "-2+3+cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
    '=HYPERLINK("x")',
    "-",
    "+",
]
PLAIN = ["case_001", "a,b", "cr\rinside", 'say "hi"', "two\nlines", "benign (1)", "", "'quoted", " =1", "患者01"]
NUMBERS = [0, 3, -3, -0.5, 1e-7, -2.5e10, 0.123456, np.float32(-0.25), np.int64(-7)]


def _read(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def test_formulas_come_back_as_quoted_text_and_numbers_as_numbers() -> None:
    rows = [{"case_id": cid, "value": -1.5, "n": -3} for cid in FORMULAS + PLAIN]
    header, *back = _read(csv_text(["case_id", "value", "n"], rows))

    assert header == ["case_id", "value", "n"]
    assert [r[0] for r in back] == ["'" + f for f in FORMULAS] + PLAIN  # commas, quotes, newlines round-trip
    for row in back:
        assert float(row[1]) == -1.5 and int(row[2]) == -3
    assert not any(r[0].startswith(FORMULA_TRIGGERS) for r in back)


def test_numbers_stay_numbers() -> None:
    (header, values) = _read(csv_text([f"c{i}" for i in range(len(NUMBERS))], [NUMBERS]))
    assert [float(v) for v in values] == [float(n) for n in NUMBERS]
    assert all(safe_cell(n) is n for n in NUMBERS)


def test_number_text_is_left_alone_but_text_after_a_sign_is_not() -> None:
    assert [safe_cell(v) for v in ("-3", "-0.5", "+1e5", "-.5")] == ["-3", "-0.5", "+1e5", "-.5"]
    assert [safe_cell(v) for v in ("-3)", "-1+1", "- 3", "-inf", "-0x10")] == [
        "'-3)",
        "'-1+1",
        "'- 3",
        "'-inf",
        "'-0x10",
    ]
    assert safe_cell(None) is None and safe_cell(Path("-x")) == "'-x"


def test_header_and_sequence_rows_are_neutralised_and_extra_keys_refused() -> None:
    header, row = _read(csv_text(["id", "=x"], [("@SUM(1)", None)]))
    assert header == ["id", "'=x"] and row == ["'@SUM(1)", ""]
    with pytest.raises(ValueError, match="not columns"):
        csv_text(["a"], [{"a": 1, "b": 2}])


def test_demo_label_tables_read_back_unchanged(tmp_path) -> None:
    """The demo generator writes its input tables through the same helper: its ids and labels are untouched."""
    generate_demo_data(tmp_path, num_cases=8, seed=0)
    with open(tmp_path / "demo2d" / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["case_id"] for r in rows] == sorted(r["case_id"] for r in rows)
    assert all(r["case_id"].startswith("case_") and r["malignant"] in {"", "0", "1"} for r in rows)


def test_every_csv_writer_in_medmtl_goes_through_the_helper() -> None:
    """No module but ``csv_safety`` builds a ``csv.writer``/``DictWriter`` or calls ``to_csv``."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "csv_safety.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and (
                node.attr == "to_csv"
                or (
                    node.attr in {"writer", "DictWriter"}
                    and isinstance(node.value, ast.Name)
                    and node.value.id == "csv"
                )
            ):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
            if isinstance(node, ast.ImportFrom) and node.module == "csv":
                offenders += [f"{path.relative_to(PACKAGE)}:{node.lineno}" for a in node.names if "riter" in a.name]
    assert not offenders, f"CSV written without medmtl.csv_safety.csv_text at {offenders}"
