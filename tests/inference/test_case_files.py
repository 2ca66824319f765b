"""Case ids become safe, unique, reversible file names of bounded length that stay in the output folder."""

from __future__ import annotations

import os
import re

import pytest

from medmtl.inference.case_files import MAX_STEM_LENGTH, CaseFileNames, case_file_stem, case_id_from_stem

AWKWARD = [
    "sub.01",
    "sub.02",
    "sub",
    "a/b",
    "a_b",
    "a%2Fb",
    "a\\b",
    "..",
    ".",
    ".hidden",
    "trailing.",
    "trailing ",
    " ",
    "CON",
    "con",
    "nul",
    "COM1",
    "LPT9",
    "-rf",
    "~user",
    "=cmd|' /C calc'!A0",
    "患者.01",
    "café",
    "cafe\u0301",  # the same word, decomposed: another id, another name
    "raw\udcffbytes",  # a file name that was not UTF-8, as Python decodes it
    "x" * 300,
    "x" * 299 + "y",
    "é" * 200,
    "",
]
WINDOWS_DEVICES = re.compile(r"(CON|PRN|AUX|NUL|COM\d|LPT\d)", re.IGNORECASE)


def test_names_are_unique_safe_and_bounded() -> None:
    stems = [case_file_stem(cid) for cid in AWKWARD]
    assert len(set(stems)) == len(AWKWARD)
    for stem in stems:
        assert 0 < len(stem) <= MAX_STEM_LENGTH and stem.isascii()
        assert re.fullmatch(r"[A-Za-z0-9_%~-]+", stem), stem  # no dot, separator, space or quote
        assert not stem.startswith(("-", "~")) and not WINDOWS_DEVICES.fullmatch(stem)


def test_short_names_read_back_and_long_ones_are_hashed() -> None:
    for cid in AWKWARD:
        stem = case_file_stem(cid)
        if len(cid.encode("utf-8", "surrogatepass")) * 3 <= MAX_STEM_LENGTH and cid:
            assert case_id_from_stem(stem) == cid
        if "~" in stem:
            assert case_id_from_stem(stem) is None  # found through predictions.csv instead
    assert case_file_stem("sub.01") == "sub%2E01" and case_file_stem("a/b") == "a%2Fb"
    long_a, long_b = case_file_stem("x" * 300), case_file_stem("x" * 299 + "y")
    assert long_a != long_b and long_a.split("~")[0] == long_b.split("~")[0]
    assert case_id_from_stem("not%ZZ") is None and case_id_from_stem("a.b") is None


def test_a_long_name_is_never_cut_inside_an_escape() -> None:
    for n in range(30, 60):
        prefix = case_file_stem("é" * n).split("~")[0]
        assert re.fullmatch(r"(%[0-9A-F]{2})*", prefix), prefix


def test_a_file_of_another_case_is_never_taken_even_across_runs_and_letter_case(tmp_path) -> None:
    (tmp_path / "lesion").mkdir()
    (tmp_path / "lesion" / "Sub01.png").write_bytes(b"earlier run")
    names = CaseFileNames(tmp_path, ["lesion", "saliency"])
    assert names.stem("Sub01") == "Sub01"  # its own file: a re-run rewrites it
    other = names.stem("sub01")
    assert other != "sub01" and other.casefold() != "sub01" and names.stem("sub01") == other
    names.reset()
    assert CaseFileNames(tmp_path, ["lesion"]).stem("sub01") == other  # the same name in the next run


def test_paths_stay_inside_the_output_folder(tmp_path) -> None:
    names = CaseFileNames(tmp_path / "out", ["lesion"])
    path = names.path("lesion", "../../etc/passwd", ".png")
    assert path.parent == tmp_path / "out" / "lesion" and path.name == "%2E%2E%2F%2E%2E%2Fetc%2Fpasswd.png"
    with pytest.raises(ValueError, match="outside the output folder"):
        names.path("../elsewhere", "c1", ".png")
    outside = tmp_path / "victim.png"
    outside.write_bytes(b"keep")
    (tmp_path / "out" / "lesion").mkdir(parents=True)
    os.symlink(outside, tmp_path / "out" / "lesion" / "c1.png")
    with pytest.raises(ValueError, match="remove the link"):
        names.path("lesion", "c1", ".png")
    assert outside.read_bytes() == b"keep"


def test_max_length_must_leave_room_for_the_hash() -> None:
    with pytest.raises(ValueError, match="at least 24"):
        case_file_stem("a", max_length=10)
