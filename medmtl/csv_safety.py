"""Spreadsheet-safe CSV text: every CSV medmtl writes goes through :func:`csv_text`.

Hospital staff open medmtl's tables (``predictions.csv``, ``learning_curve.csv``) in Excel or
LibreOffice, which run a cell that starts with ``=``, ``+``, ``-`` or ``@`` as a formula (and treat a
leading tab or carriage return the same way). Case ids come from file and folder names that anyone
can choose, so an id such as ``=cmd|' /C calc'!A0`` would be a command in the spreadsheet. Following
OWASP's CSV-injection rule, such text cells get a leading single quote (``'=cmd...``), which the
spreadsheet shows as text. Numbers stay numbers: ``int``/``float`` values, and text that is a plain
decimal number such as ``-0.5`` or ``-3`` (a spreadsheet reads it as that number, never as a
formula), are written unchanged.
"""

from __future__ import annotations

import csv
import io
import numbers
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["FORMULA_TRIGGERS", "csv_text", "safe_cell"]

FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
"""First characters that make a spreadsheet read a text cell as a formula (OWASP)."""

_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def safe_cell(value: Any) -> Any:
    """``value`` as it can be written to a CSV cell that a spreadsheet opens without running it.

    Args:
        value: a cell value; ``None`` is an empty cell.

    Returns:
        Numbers (and ``None``) unchanged; text, or anything else as its ``str``, with a ``'`` in front
        when it starts with one of :data:`FORMULA_TRIGGERS` and is not a plain decimal number.

    Example::

        safe_cell("=SUM(1,1)")  # "'=SUM(1,1)"
        safe_cell(-0.5)  # -0.5
        safe_cell("case_001")  # "case_001"
    """
    if value is None or isinstance(value, numbers.Number):
        return value
    text = value if isinstance(value, str) else str(value)
    if text.startswith(FORMULA_TRIGGERS) and not _PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text


def csv_text(columns: Sequence[str], rows: Iterable[Mapping[str, Any] | Sequence[Any]]) -> str:
    """A whole CSV document (header + rows) with every cell passed through :func:`safe_cell`.

    Args:
        columns: the header.
        rows: dicts keyed by column (a missing column is an empty cell) or sequences in column order.

    Returns:
        The CSV text, lines ending in ``\\r\\n`` (RFC 4180; so a carriage return inside a cell is quoted
        too: the ``csv`` module quotes only the line end's characters). Write it with ``newline=""``.

    Raises:
        ValueError: a dict row has keys that are not columns (as :class:`csv.DictWriter`).
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow([safe_cell(c) for c in columns])
    known = set(columns)
    for row in rows:
        if isinstance(row, Mapping):
            extra = [k for k in row if k not in known]
            if extra:
                raise ValueError(f"csv_text: row keys {extra} are not columns {list(columns)}")
            values: Iterable[Any] = (row.get(c) for c in columns)
        else:
            values = row
        writer.writerow([safe_cell(v) for v in values])
    return buffer.getvalue()
