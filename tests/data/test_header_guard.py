"""No allocation from a header: tiny files claiming gigabytes are refused, per format, before any voxel is read.

Each test writes a real file of a few hundred bytes whose header claims gigabytes, reads it the way
training does (:func:`load_image` / ``MedmtlLoadImaged``) and checks that it is refused with a named
problem while Python's peak allocation (``tracemalloc``, which numpy reports to) stays small.
"""

from __future__ import annotations

import gzip
import os
import socket
import struct
import tracemalloc
import zipfile
import zlib

import nibabel as nib
import numpy as np
import pytest
from dicom_factory import make_dataset, save, slice_pixels
from PIL import Image
from pydicom.uid import generate_uid

from medmtl.data.dicom import check_dicom
from medmtl.data.header_guard import (
    DEFAULT_MAX_IMAGE_BYTES,
    MAX_IMAGE_BYTES_ENV,
    file_kind_problem,
    header_problems,
    max_image_bytes,
)
from medmtl.data.readers import ImageReadError, load_image, make_loader

_SMALL_PEAK = 32 * 1024**2  # what reading a header may allocate, at most


def _refused(path, check: str, **kwargs) -> ImageReadError:
    """Load ``path`` under tracemalloc; it must fail with ``check`` and a small peak allocation."""
    tracemalloc.start()
    try:
        with pytest.raises(ImageReadError) as info:
            load_image(path, **kwargs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < _SMALL_PEAK, f"{path.name}: {peak / 1e6:.0f} MB allocated before refusing"
    assert [p.check for p in info.value.problems] == [check], str(info.value)
    assert str(path) in str(info.value)
    return info.value


def _nifti_header(shape, dtype="float32") -> bytes:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.dtype(dtype))
    header.set_data_offset(352)
    return header.binaryblock + b"\x00" * 4


def test_nifti_gz_of_90_bytes_claiming_gigabytes(tmp_path):
    path = tmp_path / "claims.nii.gz"
    path.write_bytes(gzip.compress(_nifti_header((1000, 1000, 360))))
    assert path.stat().st_size < 200
    err = _refused(path, "unreadable_file")
    assert "(1000, 1000, 360) float32 voxels (1.3 GiB)" in str(err)
    assert "gzip data cannot hold more than" in str(err)


def test_uncompressed_nifti_claiming_gigabytes(tmp_path):
    path = tmp_path / "claims.nii"
    path.write_bytes(_nifti_header((2048, 2048, 512), "int16") + bytes(100))
    assert "the file holds only 452 bytes" in str(_refused(path, "unreadable_file"))


def test_gzip_bomb_under_the_cap_is_read_but_refused_over_a_lower_cap(tmp_path):
    """A .nii.gz inflating ~1000:1 (the issue's 249 KB -> 256 MB, scaled down): the cap applies before inflating."""
    path = tmp_path / "bomb.nii.gz"
    data = np.zeros((128, 128, 128), np.float32)  # 8 MiB of zeros: a ~8 KiB gzip file
    path.write_bytes(gzip.compress(_nifti_header(data.shape) + data.tobytes(), compresslevel=9))
    assert path.stat().st_size < 64 * 1024
    assert load_image(path).shape == (128, 128, 128)
    err = _refused(path, "image_too_large", max_image_bytes=4 * 1024**2)
    assert "8.0 MiB once decoded, over the limit of 4.0 MiB per image" in str(err)
    assert MAX_IMAGE_BYTES_ENV in err.problems[0].fix


def test_png_claiming_gigapixels(tmp_path):
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    path = tmp_path / "claims.png"
    ihdr = struct.pack(">IIBBBBB", 200_000, 200_000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(600))))
    err = _refused(path, "unreadable_file")
    assert "a 200000 x 200000 RGB image" in str(err) and "PNG (deflate) data cannot hold" in str(err)


def test_png_over_the_cap_is_refused_and_under_it_pil_own_limit_does_not_apply(tmp_path):
    """medmtl's byte cap replaces PIL's pixel-count limit (89 M pixels), in both directions."""
    path = tmp_path / "wide.png"
    Image.new("L", (2000, 1000)).save(path)
    assert "1.9 MiB once decoded" in str(_refused(path, "image_too_large", max_image_bytes=1024**2))
    before = Image.MAX_IMAGE_PIXELS
    assert load_image(path).shape == (2000, 1000)
    assert before == Image.MAX_IMAGE_PIXELS  # PIL's global is restored after each read


def test_tiff_claiming_gigapixels_in_training_loader(tmp_path):
    path = tmp_path / "claims.tif"
    Image.new("L", (10, 10)).save(path)  # uncompressed: the data must fit in the file
    data = bytearray(path.read_bytes())
    ifd = int.from_bytes(data[4:8], "little")
    for i in range(int.from_bytes(data[ifd : ifd + 2], "little")):
        entry = ifd + 2 + 12 * i
        if int.from_bytes(data[entry : entry + 2], "little") in (256, 257):
            data[entry + 8 : entry + 10] = (50_000).to_bytes(2, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match="50000 x 50000 L image"):
        make_loader(keys=["image"])({"image": path})


def test_npy_claiming_gigabytes_and_npz_members(tmp_path):
    path = tmp_path / "claims.npy"
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(
            handle, {"descr": "<f4", "fortran_order": False, "shape": (50_000, 50_000)}
        )
    assert "(50000, 50000) float32 voxels" in str(_refused(path, "unreadable_file"))
    archive = tmp_path / "claims.npz"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("image.npy", path.read_bytes())
    assert "[image.npy]" in str(_refused(archive, "unreadable_file"))


def test_npy_complex_and_strings_are_refused(tmp_path):
    np.save(tmp_path / "complex.npy", np.ones((3, 4, 5), np.complex64))
    assert "imaginary part" in str(_refused(tmp_path / "complex.npy", "complex_values"))
    np.save(tmp_path / "text.npy", np.array(["a", "b"]))
    _refused(tmp_path / "text.npy", "unsupported_dtype")


def test_dicom_claiming_gigapixels(tmp_path):
    ds = make_dataset(slice_pixels(8, 8, 0), series_uid=generate_uid())
    ds.Rows, ds.Columns = 50_000, 50_000
    path = save(ds, tmp_path / "series" / "IM1.dcm")
    tracemalloc.start()
    try:
        with pytest.raises(Exception, match="50000 x 50000 pixels") as info:
            load_image(path.parent)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < _SMALL_PEAK
    assert [p.check for p in info.value.problems] == ["unreadable_file"]
    small = make_dataset(slice_pixels(8, 8, 0), series_uid=generate_uid())
    save(small, tmp_path / "ok" / "IM1.dcm")
    assert check_dicom(tmp_path / "ok") == []
    found = check_dicom(tmp_path / "ok", max_image_bytes=64)
    assert [p.check for p in found] == ["image_too_large"] and "128 bytes once decoded" in found[0].message


def test_the_cap_comes_from_the_argument_then_the_environment(monkeypatch):
    monkeypatch.delenv(MAX_IMAGE_BYTES_ENV, raising=False)
    assert max_image_bytes() == DEFAULT_MAX_IMAGE_BYTES == 2 * 1024**3
    assert max_image_bytes("512M") == 512 * 1024**2 and max_image_bytes(1000) == 1000
    monkeypatch.setenv(MAX_IMAGE_BYTES_ENV, "1.5GiB")
    assert max_image_bytes() == int(1.5 * 1024**3)
    monkeypatch.setenv(MAX_IMAGE_BYTES_ENV, "lots")
    with pytest.raises(ValueError, match=MAX_IMAGE_BYTES_ENV):
        max_image_bytes()
    with pytest.raises(ValueError, match="positive"):
        max_image_bytes(0)


def test_environment_cap_reaches_the_training_reader(tmp_path, monkeypatch):
    np.save(tmp_path / "a.npy", np.zeros((16, 16, 16), np.float32))
    monkeypatch.setenv(MAX_IMAGE_BYTES_ENV, "8K")
    assert [p.check for p in header_problems(tmp_path / "a.npy")] == ["image_too_large"]
    with pytest.raises(ImageReadError, match="16.0 KiB once decoded, over the limit of 8.0 KiB"):
        load_image(tmp_path / "a.npy")


def test_special_files_are_named_without_being_opened(tmp_path):
    os.mkfifo(tmp_path / "pipe.nii.gz")
    found = file_kind_problem(tmp_path / "pipe.nii.gz")
    assert found.check == "not_a_file" and "named pipe (FIFO)" in found.message
    with pytest.raises(ImageReadError, match="named pipe"):  # returns at once: the FIFO is never opened
        load_image(tmp_path / "pipe.nii.gz")
    assert "character device" in file_kind_problem("/dev/null").message
    (tmp_path / "folder.png").mkdir()
    assert "is a folder, not a .png file" in file_kind_problem(tmp_path / "folder.png").message
    assert file_kind_problem(tmp_path / "folder.png", allow_dir=True) is None
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "s.png"))
        assert "a socket" in file_kind_problem(tmp_path / "s.png").message
    assert file_kind_problem(tmp_path / "missing.png") is None  # reported as missing_file elsewhere


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_file_is_named(tmp_path):
    path = tmp_path / "locked.png"
    Image.new("L", (4, 4)).save(path)
    path.chmod(0)
    found = file_kind_problem(path)
    assert found.check == "permission_denied" and "chmod a+r" in found.fix
