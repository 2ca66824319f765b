"""Validation results cached by file content: unchanged files are not opened again, changed ones are."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from PIL import Image

import medmtl.data.file_digests as file_digests
import medmtl.data.validate.case_checks as case_checks
from medmtl.data.demo import generate_demo2d
from medmtl.data.image_signatures import file_sha256
from medmtl.data.validate import validate_dataset


@pytest.fixture
def opened(monkeypatch) -> list[str]:
    """Every file the checks open (the one function that reads a file), in this process (``workers=1``)."""
    calls: list[str] = []
    inspect = case_checks._inspect

    def counting(path, *args, **kwargs):
        calls.append(str(path))
        return inspect(path, *args, **kwargs)

    monkeypatch.setattr(case_checks, "_inspect", counting)
    return calls


def test_second_validation_opens_no_file_and_a_changed_file_is_checked_again(tmp_path, opened) -> None:
    generate_demo2d(tmp_path / "demo2d", 10, 0)
    spec, root = "data_specs/demo.yaml", str(tmp_path / "demo2d")
    first = validate_dataset(spec, root, workers=1, duplicates=False)
    assert first.ok and first.files_checked > 0 and len(opened) == first.files_checked
    opened.clear()

    second = validate_dataset(spec, root, workers=1, duplicates=False)
    assert opened == []  # nothing decoded: every case came from the cache
    assert second.ok and second.files_checked == first.files_checked
    assert second.label_counts == first.label_counts and second.empty_masks == first.empty_masks
    assert [str(p) for p in second.problems] == [str(p) for p in first.problems]

    image = sorted((tmp_path / "demo2d").rglob("*.png"))[0]
    pixels = np.asarray(Image.open(image)).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(image)
    third = validate_dataset(spec, root, workers=1, duplicates=False)
    assert str(image) in opened and 1 <= len(opened) <= 3  # only the changed file's case (image and mask)
    assert third.files_checked == first.files_checked

    opened.clear()
    validate_dataset(spec, root, workers=1, duplicates=False, cache=False)
    assert len(opened) == first.files_checked


def test_errors_are_not_cached(tmp_path, opened) -> None:
    generate_demo2d(tmp_path / "demo2d", 10, 0)
    mask = sorted((tmp_path / "demo2d" / "masks").rglob("*.png"))[0]
    Image.fromarray(np.full((8, 8), 7, dtype=np.uint8)).save(mask)  # wrong shape and label value
    spec, root = "data_specs/demo.yaml", str(tmp_path / "demo2d")
    first = validate_dataset(spec, root, workers=1, duplicates=False)
    assert not first.ok
    opened.clear()
    second = validate_dataset(spec, root, workers=1, duplicates=False)
    assert not second.ok and str(mask) in opened  # the failing case is opened again, the others are not
    assert sorted(str(p) for p in second.problems) == sorted(str(p) for p in first.problems)


def test_unchanged_files_are_not_read_to_find_them_unchanged(tmp_path, opened, monkeypatch) -> None:
    """Files are keyed on (path, size, mtime, inode) first: a second validation hashes none; a rewrite is checked."""
    generate_demo2d(tmp_path / "demo2d", 10, 0)
    image = sorted((tmp_path / "demo2d").rglob("*.png"))[0]
    pixels = np.asarray(Image.open(image)).copy()
    Image.fromarray(pixels).save(image, compress_level=0)  # stored uncompressed: a changed pixel keeps the size
    hour_ago = time.time_ns() - 3600 * 10**9  # older than FRESH_SECONDS: the stat signatures are recorded
    for path in (tmp_path / "demo2d").rglob("*"):
        os.utime(path, ns=(hour_ago, hour_ago))
    hashed: list[str] = []

    def counting(path):
        hashed.append(str(path))
        return file_sha256(path)

    monkeypatch.setattr(file_digests, "file_sha256", counting)
    spec, root = "data_specs/demo.yaml", str(tmp_path / "demo2d")
    first = validate_dataset(spec, root, workers=1, duplicates=False)
    assert first.ok and str(image) in hashed and len(hashed) == first.files_checked
    hashed.clear()
    opened.clear()

    second = validate_dataset(spec, root, workers=1, duplicates=False)
    assert hashed == [] and opened == []  # not hashed, not decoded
    assert second.ok and second.files_checked == first.files_checked

    size, inode = image.stat().st_size, image.stat().st_ino
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(image, compress_level=0)
    os.utime(image, ns=(hour_ago + 10**9, hour_ago + 10**9))  # another time, still not fresh
    assert (image.stat().st_size, image.stat().st_ino) == (size, inode)
    third = validate_dataset(spec, root, workers=1, duplicates=False)
    assert hashed == [str(image)] and str(image) in opened  # only the rewritten file is read, then checked
    assert third.ok and third.files_checked == first.files_checked
