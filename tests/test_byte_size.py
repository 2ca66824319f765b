"""Sizes as text: pydantic's ``ByteSize`` units, a bare letter read as binary, one clear error."""

from __future__ import annotations

import pytest

from medmtl.byte_size import parse_byte_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8GiB", 8 * 2**30),
        ("1.5 gib", int(1.5 * 2**30)),
        ("500MB", 500 * 10**6),
        (" 3 TB ", 3 * 10**12),
        ("4G", 4 * 2**30),
        ("512m", 512 * 2**20),
        ("8K", 8 * 2**10),
        ("2147483648", 2147483648),
        (1000, 1000),
        (8e9, 8 * 10**9),
    ],
)
def test_units(text, expected) -> None:
    assert parse_byte_size(text) == expected


@pytest.mark.parametrize("bad", ["lots", "12 parsecs", "GiB", True, ""])
def test_not_a_size_names_where_it_came_from(bad) -> None:
    with pytest.raises(ValueError, match=r"--cache_limit=.* is not a size: .*8GiB"):
        parse_byte_size(bad, "--cache_limit")
