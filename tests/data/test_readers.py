"""Readers: one MONAI reader per format, MONAI's layout for images and masks, geometry kept, clear errors."""

from __future__ import annotations

import os
import sys

import nibabel as nib
import numpy as np
import pytest
from dicom_factory import expected_affine, write_series
from monai.data import NibabelReader, NumpyReader
from monai.transforms import Compose, EnsureChannelFirstd, LoadImage
from PIL import Image

from medmtl.data.dicom import DicomError
from medmtl.data.problems import DataError
from medmtl.data.readers import (
    ImageReadError,
    MedmtlDicomReader,
    MedmtlLoadImage,
    MedmtlLoadImaged,
    MedmtlPILReader,
    MedmtlReader,
    load_array,
    load_image,
    make_loader,
    open_checked_pil,
    reader_for,
)

OBLIQUE_AFFINE = np.array(
    [
        [0.0, -1.2, 0.3, 10.0],
        [0.9, 0.0, 0.0, -20.0],
        [0.0, 0.1, 2.5, 5.5],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def test_npy_slice_stack_round_trip(tmp_path):
    stack = np.random.default_rng(0).normal(size=(3, 10, 12)).astype(np.float32)
    np.save(tmp_path / "stack.npy", stack)
    image = load_image(tmp_path / "stack.npy")
    np.testing.assert_array_equal(np.asarray(image), stack)  # NumpyReader keeps the stored order
    np.testing.assert_array_equal(image.affine.numpy(), np.eye(4))


@pytest.mark.parametrize("suffix", [".png", ".tif", ".gif"])
def test_2d_image_and_mask_share_monai_layout(tmp_path, suffix):
    gray = (np.arange(5 * 7).reshape(5, 7) * 7).astype(np.uint8)  # height 5, width 7
    mask = (gray > 100).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / f"img{suffix}")
    Image.fromarray(mask).save(tmp_path / f"img_mask{suffix}")
    sample = make_loader(keys=["image", "mask"])(
        {"image": tmp_path / f"img{suffix}", "mask": tmp_path / f"img_mask{suffix}"}
    )
    assert tuple(sample["image"].shape) == tuple(sample["mask"].shape) == (7, 5)  # PILReader: (width, height)
    if suffix != ".gif":  # a GIF stores palette indices, not grey values
        np.testing.assert_array_equal(np.asarray(sample["image"]), gray.T)
    np.testing.assert_array_equal(np.asarray(sample["mask"]), mask.T)


def test_16bit_tiff_keeps_values(tmp_path):
    arr = (np.arange(6 * 4).reshape(6, 4) * 2500).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "xray.tiff")
    np.testing.assert_array_equal(load_array(tmp_path / "xray.tiff"), arr.T)


def test_rgb_png_and_jpeg_channels_last(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=95)
    image = make_loader(ensure_channel_first=True)(tmp_path / "c.png")
    assert tuple(image.shape) == (3, 7, 5)
    np.testing.assert_array_equal(np.asarray(image), rgb.transpose(2, 1, 0))
    assert tuple(load_image(tmp_path / "c.jpg").shape) == (7, 5, 3)


def test_nifti_round_trip_keeps_oblique_affine(tmp_path):
    data = np.random.default_rng(2).normal(size=(6, 5, 4)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, OBLIQUE_AFFINE), tmp_path / "vol.nii.gz")
    image = load_image(tmp_path / "vol.nii.gz")
    np.testing.assert_array_equal(np.asarray(image), data)
    np.testing.assert_allclose(image.affine.numpy(), OBLIQUE_AFFINE, atol=1e-6)
    np.testing.assert_allclose(image.meta["pixdim"][1:4], np.linalg.norm(OBLIQUE_AFFINE[:3, :3], axis=0), rtol=1e-6)


def test_reader_for_picks_the_reader_per_format(tmp_path):
    series_files, _ = write_series(tmp_path / "ct")
    files = {"a.nii.gz": b"", "b.nii": b"", "c.png": b"", "d.JPG": b"", "e.tif": b"", "f.npy": b"", "g.dcm": b""}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    assert isinstance(reader_for(tmp_path / "a.nii.gz"), NibabelReader)
    assert isinstance(reader_for(tmp_path / "b.nii"), NibabelReader)
    assert all(isinstance(reader_for(tmp_path / n), MedmtlPILReader) for n in ("c.png", "d.JPG", "e.tif"))
    assert isinstance(reader_for(tmp_path / "f.npy"), NumpyReader)
    assert isinstance(reader_for(tmp_path / "g.dcm"), MedmtlDicomReader)
    assert isinstance(reader_for(tmp_path / "ct"), MedmtlDicomReader)
    no_suffix = tmp_path / "IM0001"
    no_suffix.write_bytes(series_files[0].read_bytes())
    assert isinstance(reader_for(no_suffix), MedmtlDicomReader)  # DICM preamble, no suffix


def test_unsupported_and_missing_files_are_named(tmp_path):
    (tmp_path / "scan.mha").write_bytes(b"ObjectType = Image")
    with pytest.raises(ImageReadError) as info:
        load_image(tmp_path / "scan.mha")
    assert [p.check for p in info.value.problems] == ["unsupported_format"]
    assert "scan.mha" in str(info.value) and ".nii.gz" in str(info.value)
    with pytest.raises(ImageReadError, match="missing_file") as info:
        load_image(tmp_path / "gone.nii.gz")
    assert "gone.nii.gz" in str(info.value)


@pytest.mark.parametrize("name", ["broken.png", "broken.nii.gz", "broken.npy", "broken.tif"])
def test_corrupt_files_give_a_data_error_not_a_traceback(tmp_path, name):
    (tmp_path / name).write_bytes(b"\x89PNG garbage" * 3)
    with pytest.raises(DataError) as info:
        load_image(tmp_path / name)
    assert info.value.problems[0].check == "unreadable_file"
    assert name in str(info.value) and "Traceback" not in str(info.value)


def test_dict_loader_mixes_dicom_image_and_nifti_mask(tmp_path):
    _, volume = write_series(tmp_path / "ct")
    affine = expected_affine()
    nib.save(nib.Nifti1Image((volume > 1500).astype(np.uint8), affine), tmp_path / "mask.nii.gz")
    load = Compose([MedmtlLoadImaged(keys=["image", "label"]), EnsureChannelFirstd(keys=["image", "label"])])
    sample = load({"image": str(tmp_path / "ct"), "label": str(tmp_path / "mask.nii.gz")})
    assert tuple(sample["image"].shape) == tuple(sample["label"].shape) == (1, 16, 12, 5)
    np.testing.assert_allclose(sample["image"].affine.numpy(), sample["label"].affine.numpy(), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(sample["label"][0]), volume > 1500)


def test_dicom_errors_reach_the_user_unwrapped(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DicomError, match="empty_folder"):
        MedmtlLoadImage()(tmp_path / "empty")
    with pytest.raises(DicomError, match="empty_folder"):
        LoadImage()(tmp_path / "empty", reader=MedmtlReader())
    with pytest.raises(DicomError, match="empty_folder"):
        make_loader(keys="image")({"image": tmp_path / "empty"})


def test_make_loader_returns_array_or_dict_loader():
    assert isinstance(make_loader(), MedmtlLoadImage)
    assert isinstance(make_loader(keys=["image"]), MedmtlLoadImaged)
    with pytest.raises(ValueError, match="seg must be"):
        MedmtlDicomReader(seg="maybe")


# --------------------------------------------------------------------------------------- real data

BRAIN = {
    "colin27_ch2.nii.gz": ((181, 217, 181), (1.0, 1.0, 1.0)),
    "itk_KmeansTest_T1UCharRaw.nii.gz": ((128, 128, 62), (2.0, 2.0, 3.0)),
    "itk_KmeansTest_T1RawSkullStrip.nii.gz": ((128, 128, 62), (2.0, 2.0, 3.0)),
}


@pytest.mark.shared_data
@pytest.mark.parametrize("name", sorted(BRAIN))
def test_real_brain_nifti_keeps_its_affine(shared_data, name):
    path = shared_data / "brain" / name
    shape, spacing = BRAIN[name]
    image = load_image(path)
    reference = nib.load(path)
    assert tuple(image.shape) == shape
    np.testing.assert_allclose(image.affine.numpy(), reference.affine, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(image.affine.numpy()[:3, :3], axis=0), spacing, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(image)[::16, ::16, ::8], np.asarray(reference.dataobj)[::16, ::16, ::8])


_OPENS: list[str] | None = None  # paths opened while a test records them (see _opened_by)
_HOOKED = False


def _record_open(event: str, args: tuple) -> None:
    if _OPENS is not None and event == "open" and isinstance(args[0], str | bytes | os.PathLike):
        _OPENS.append(os.fsdecode(args[0]))


def _opened_by(action) -> tuple[object, list[str]]:
    """``action()``'s result and every path it opened (Python's ``open`` audit event: ``open``, ``io.open``, ``os.open``)."""
    global _OPENS, _HOOKED
    if not _HOOKED:  # an audit hook cannot be removed: one per process, recording only inside this function
        sys.addaudithook(_record_open)
        _HOOKED = True
    _OPENS = []
    try:
        return action(), _OPENS
    finally:
        _OPENS = None


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif"])
def test_picture_is_opened_once_for_header_checks_and_pixels(tmp_path, suffix):
    """The header guard and PIL used to open each picture separately; one open now gives both."""
    pixels = (np.arange(20 * 30).reshape(20, 30) % 251).astype(np.uint8)
    image, mask = tmp_path / f"scan{suffix}", tmp_path / f"scan_mask{suffix}"
    Image.fromarray(pixels).save(image)
    Image.fromarray((pixels > 100).astype(np.uint8)).save(mask)
    loader = MedmtlLoadImaged(["image", "mask"], image_only=True)
    sample, opened = _opened_by(lambda: loader({"image": image, "mask": mask}))
    assert sorted(p for p in opened if p.startswith(str(tmp_path))) == sorted([str(image), str(mask)])
    np.testing.assert_array_equal(np.asarray(sample["image"]), pixels.T)
    np.testing.assert_array_equal(np.asarray(sample["mask"]), (pixels > 100).T)
    assert sample["image"].meta["filename_or_obj"] == str(image)
    if suffix != ".tif":  # MONAI's own loader sends TIFF to pydicom
        np.testing.assert_array_equal(np.asarray(sample["image"]), np.asarray(LoadImage(image_only=True)(image)))


def test_files_over_the_in_memory_limit_are_checked_from_their_path(tmp_path):
    """Above ``read_whole_max`` the header is checked from the path, then PIL opens it: same pixels, same refusals."""
    path = tmp_path / "big.png"
    pixels = (np.arange(40 * 50).reshape(40, 50) % 256).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    for limit in (0, 1 << 20):  # the path route, the in-memory route
        with open_checked_pil(path, read_whole_max=limit) as image:
            np.testing.assert_array_equal(np.asarray(image), pixels)
        with pytest.raises(ImageReadError) as info:
            open_checked_pil(path, max_image_bytes=1000, read_whole_max=limit)
        assert [p.check for p in info.value.problems] == ["image_too_large"]
        assert str(path) in str(info.value)
