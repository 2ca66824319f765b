"""DICOM: series and multi-frame geometry, specific errors, NIfTI conversion, de-identification."""

from __future__ import annotations

import gzip
import logging
import os
import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_factory import (
    PLANTED_STRINGS,
    expected_affine,
    make_dataset,
    save,
    slice_pixels,
    write_series,
)
from monai.data import PydicomReader
from monai.transforms import LoadImage
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import RLELossless, generate_uid

import medmtl.data.dicom.deidentify as dicom_deidentify
import medmtl.data.dicom.file_checks as dicom_file_checks
import medmtl.data.dicom.pixels as dicom_pixels
from medmtl.data.dicom import (
    CHECKS,
    DicomError,
    check_dicom,
    convert_dicom,
    deidentify_dataset,
    read_dicom,
    scan_dicom,
    series_file_name,
)
from medmtl.data.problems import DataError, Severity
from medmtl.data.readers import MedmtlDicomReader, load_image

OBLIQUE = (0.8660254, 0.5, 0.0, 0.0, 0.0, -1.0)  # rotated about z, columns running feet-ward: a tilted coronal


def sitk_ras_affine(image: sitk.Image) -> np.ndarray:
    """SimpleITK's geometry (LPS) as a RAS affine in MONAI's index order."""
    out = np.eye(4)
    out[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    out[:3, 3] = image.GetOrigin()
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ out


def sitk_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def assert_no_planted(text: str | bytes) -> None:
    for planted in PLANTED_STRINGS:
        needle = planted.encode() if isinstance(text, bytes) else planted
        assert needle not in text, f"planted identifier {planted!r} leaked"


# --------------------------------------------------------------------------------------- loading


def test_series_loads_as_one_volume_with_geometry(tmp_path):
    _, expected = write_series(tmp_path / "ct")
    image = load_image(tmp_path / "ct")
    assert tuple(image.shape) == (16, 12, 5)
    np.testing.assert_array_equal(np.asarray(image), expected)
    np.testing.assert_allclose(image.meta["spacing"], [0.7, 0.8, 2.5])
    np.testing.assert_allclose(image.affine.numpy(), expected_affine(), atol=1e-6)
    assert image.meta["space"] == "RAS"
    assert_no_planted(repr(image.meta))


def test_series_matches_monai_pydicom_reader(tmp_path):
    write_series(tmp_path / "ct")
    ours = load_image(tmp_path / "ct")
    monai = LoadImage(reader=PydicomReader(), image_only=True)(tmp_path / "ct")
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(monai))
    np.testing.assert_allclose(ours.affine.numpy(), monai.affine.numpy(), atol=1e-5)


def test_series_sorted_by_position_not_name_or_instance_number(tmp_path):
    _, expected = write_series(tmp_path / "ct", reverse_instance_numbers=True)
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "ct")), expected)


def test_oblique_series_matches_simpleitk(tmp_path):
    write_series(tmp_path / "ob", orientation=OBLIQUE, origin=(5.0, -7.0, 12.5), pixel_spacing=(0.9, 0.6), spacing=1.7)
    image = load_image(tmp_path / "ob")
    reference = sitk_series(tmp_path / "ob")
    np.testing.assert_allclose(image.affine.numpy(), sitk_ras_affine(reference), atol=1e-4)
    np.testing.assert_allclose(
        image.affine.numpy(), expected_affine(OBLIQUE, (5.0, -7.0, 12.5), (0.9, 0.6), 1.7), atol=1e-5
    )
    np.testing.assert_array_equal(np.asarray(image), sitk.GetArrayFromImage(reference).T)


def test_rescale_is_applied(tmp_path):
    pixels = slice_pixels(6, 8, 0)
    save(make_dataset(pixels, series_uid=generate_uid(), rescale=(2.0, -1024.0)), tmp_path / "a.dcm")
    np.testing.assert_allclose(np.asarray(load_image(tmp_path / "a.dcm")), pixels.T * 2.0 - 1024.0)


def test_monochrome1_is_inverted_over_stored_bits(tmp_path):
    pixels = np.array([[0, 100], [4000, 4095]], dtype=np.uint16)
    ds = make_dataset(pixels, series_uid=generate_uid(), photometric="MONOCHROME1", bits_stored=12)
    arr, meta = read_dicom(save(ds, tmp_path / "cr.dcm"))
    np.testing.assert_array_equal(arr, (4095 - pixels).T)
    assert meta["dicom_photometric"] == "MONOCHROME2"


def test_rgb_single_file_has_channels_last(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (6, 9, 3), dtype=np.uint8)
    save(make_dataset(rgb, series_uid=generate_uid(), position=None, orientation=None), tmp_path / "us.dcm")
    image = load_image(tmp_path / "us.dcm")
    assert tuple(image.shape) == (9, 6, 3)
    np.testing.assert_array_equal(np.asarray(image), rgb.transpose(1, 0, 2))
    assert image.meta["original_channel_dim"] == -1


def test_legacy_multiframe_frames_on_axis_2(tmp_path):
    frames = np.stack([slice_pixels(6, 8, k) for k in range(4)])
    ds = make_dataset(frames, series_uid=generate_uid(), position=None, orientation=None, pixel_spacing=(0.5, 0.4))
    image = load_image(save(ds, tmp_path / "cine.dcm"))
    assert tuple(image.shape) == (8, 6, 4)
    np.testing.assert_array_equal(np.asarray(image), frames.transpose(2, 1, 0))
    np.testing.assert_allclose(image.meta["spacing"][:2], [0.4, 0.5])


def _enhanced(frames: np.ndarray, positions: list[tuple[float, float, float]]) -> Dataset:
    ds = make_dataset(
        frames,
        series_uid=generate_uid(),
        position=None,
        orientation=None,
        pixel_spacing=None,
        thickness=None,
        sop_class="1.2.840.10008.5.1.4.1.1.2.1",
    )
    shared = Dataset()
    shared.PlaneOrientationSequence = [Dataset()]
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PixelMeasuresSequence = [Dataset()]
    shared.PixelMeasuresSequence[0].PixelSpacing = [0.5, 0.4]
    shared.PixelMeasuresSequence[0].SliceThickness = 3.0
    shared.PixelValueTransformationSequence = [Dataset()]
    shared.PixelValueTransformationSequence[0].RescaleSlope = 1
    shared.PixelValueTransformationSequence[0].RescaleIntercept = -1024
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for position in positions:
        item = Dataset()
        item.PlanePositionSequence = [Dataset()]
        item.PlanePositionSequence[0].ImagePositionPatient = list(position)
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    return ds


def test_enhanced_multiframe_geometry_from_functional_groups(tmp_path):
    frames = np.stack([slice_pixels(6, 8, k) for k in range(3)])
    positions = [(1.0, 2.0, 9.0), (1.0, 2.0, 6.0), (1.0, 2.0, 3.0)]  # frames stored top-down
    path = save(_enhanced(frames, positions), tmp_path / "enh.dcm")
    image = load_image(path)
    assert tuple(image.shape) == (8, 6, 3)
    np.testing.assert_allclose(np.asarray(image), frames.transpose(2, 1, 0) - 1024.0)
    np.testing.assert_allclose(image.meta["spacing"], [0.4, 0.5, 3.0])
    np.testing.assert_allclose(image.affine.numpy()[:3, 2], [0.0, 0.0, -3.0])
    np.testing.assert_allclose(image.affine.numpy()[:3, 3], [-1.0, -2.0, 9.0])
    np.testing.assert_allclose(image.affine.numpy(), sitk_ras_affine(sitk.ReadImage(str(path))), atol=1e-5)


def test_enhanced_multiframe_with_uneven_frames_is_refused(tmp_path):
    frames = np.stack([slice_pixels(6, 8, k) for k in range(3)])
    path = save(_enhanced(frames, [(0, 0, 0), (0, 0, 3), (0, 0, 10)]), tmp_path / "enh.dcm")
    with pytest.raises(DicomError) as info:
        load_image(path)
    assert info.value.checks == {"multiframe_stack"}


# -------------------------------------------------------------------------------------- problems


def _corrupt_series(tmp_path: Path) -> tuple[Path, str]:
    folder = tmp_path / "series"
    write_series(folder)
    (folder / "IM9999.dcm").write_bytes(b"this is not a DICOM file at all" * 10)
    return folder, "IM9999.dcm"


def _empty(tmp_path: Path) -> tuple[Path, str]:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    return tmp_path / "empty", "empty"


def _not_dicom_file(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "scan.dcm"
    path.write_bytes(bytes(range(256)) * 4)
    return path, "scan.dcm"


def _two_series(tmp_path: Path) -> tuple[Path, str]:
    write_series(tmp_path / "mixed", description="AX T1", prefix="A")
    write_series(tmp_path / "mixed", n=3, description="COR T2", prefix="B")
    return tmp_path / "mixed", "mixed"


def _missing_slice(tmp_path: Path) -> tuple[Path, str]:
    files, _ = write_series(tmp_path / "gap", n=6, skip=[3])
    return tmp_path / "gap", files[2].name  # the neighbour before the hole is named


def _uneven(tmp_path: Path) -> tuple[Path, str]:
    write_series(tmp_path / "uneven", n=5, offsets=[0.0, 2.5, 5.0, 6.1, 9.0])
    return tmp_path / "uneven", "uneven"


def _duplicate(tmp_path: Path) -> tuple[Path, str]:
    write_series(tmp_path / "dup", n=4, offsets=[0.0, 2.5, 2.5, 5.0])
    return tmp_path / "dup", "dup"


def _truncated(tmp_path: Path) -> tuple[Path, str]:
    path = save(make_dataset(slice_pixels(32, 32, 0), series_uid=generate_uid()), tmp_path / "cut.dcm")
    path.write_bytes(path.read_bytes()[:-700])
    return path, "cut.dcm"


def _seg(tmp_path: Path) -> tuple[Path, str]:
    ds = make_dataset(
        np.zeros((4, 4), np.uint8), series_uid=generate_uid(), sop_class="1.2.840.10008.5.1.4.1.1.66.4", modality="SEG"
    )
    ds.SegmentSequence = [Dataset()]
    ds.SegmentSequence[0].SegmentNumber = 1
    return save(ds, tmp_path / "seg.dcm"), "seg.dcm"


def _report(tmp_path: Path) -> tuple[Path, str]:
    ds = make_dataset(np.zeros((2, 2), np.uint16), series_uid=generate_uid(), sop_class="1.2.840.10008.5.1.4.1.1.88.11")
    for keyword in ("Rows", "Columns", "PixelData"):
        delattr(ds, keyword)
    return save(ds, tmp_path / "sr.dcm"), "sr.dcm"


def _mosaic(tmp_path: Path) -> tuple[Path, str]:
    ds = make_dataset(slice_pixels(8, 8, 0), series_uid=generate_uid(), sop_class="1.2.840.10008.5.1.4.1.1.4")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "MOSAIC"]
    return save(ds, tmp_path / "mosaic.dcm"), "mosaic.dcm"


def _mpeg(tmp_path: Path) -> tuple[Path, str]:
    ds = make_dataset(slice_pixels(8, 8, 0), series_uid=generate_uid(), transfer_syntax="1.2.840.10008.1.2.4.100")
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    ds["PixelData"].VR = "OB"
    return save(ds, tmp_path / "video.dcm"), "video.dcm"


FAULTS = {
    "empty_folder": _empty,
    "not_dicom": _corrupt_series,
    "mixed_series": _two_series,
    "missing_slices": _missing_slice,
    "uneven_spacing": _uneven,
    "duplicate_slices": _duplicate,
    "decode_failed": _truncated,
    "dicom_seg": _seg,
    "no_pixel_data": _report,
    "siemens_mosaic": _mosaic,
    "unsupported_transfer_syntax": _mpeg,
}


@pytest.mark.parametrize("check", sorted(FAULTS))
def test_each_fault_gives_its_specific_error_naming_the_file(tmp_path, check, caplog):
    path, name = FAULTS[check](tmp_path)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(DicomError) as info:
        load_image(path)
    err = info.value
    assert isinstance(err, DataError) and isinstance(err, ValueError)
    assert check in err.checks, str(err)
    assert check in CHECKS
    message = str(err)
    assert name in message and "fix:" in message
    assert_no_planted(message)
    assert_no_planted(caplog.text)


def test_dicom_error_survives_pickling(tmp_path):
    path, _ = _empty(tmp_path)
    err = pytest.raises(DicomError, scan_dicom, path).value
    again = pickle.loads(pickle.dumps(err))
    assert again.checks == {"empty_folder"} and str(again) == str(err)


@pytest.mark.parametrize("check", sorted(set(FAULTS) - {"decode_failed"}))
def test_check_dicom_reports_the_same_without_raising(tmp_path, check):
    path, _ = FAULTS[check](tmp_path)
    problems = check_dicom(path)
    assert check in {p.check for p in problems if p.severity == Severity.ERROR}


def test_check_dicom_decode_finds_truncated_pixels(tmp_path):
    path, _ = _truncated(tmp_path)
    assert check_dicom(path) == []
    assert [p.check for p in check_dicom(path, decode=True)] == ["decode_failed"]


def test_check_dicom_clean_series_and_missing_path(tmp_path):
    write_series(tmp_path / "ct")
    assert check_dicom(tmp_path / "ct") == []
    assert [p.check for p in check_dicom(tmp_path / "nope")] == ["missing_file"]


def test_mixed_series_message_counts_and_describes_without_uids(tmp_path):
    folder, _ = _two_series(tmp_path)
    uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID) for f in folder.iterdir()}
    message = str(pytest.raises(DicomError, scan_dicom, folder).value)
    assert "mixes 2 series" in message and "'AX T1': 5 file(s)" in message and "'COR T2': 3 file(s)" in message
    assert not any(uid in message for uid in uids)


def test_missing_slice_message_names_both_neighbours(tmp_path):
    folder, _ = _missing_slice(tmp_path)
    problem = check_dicom(folder)[0]
    files = sorted(folder.iterdir(), key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))
    assert files[2].name in problem.message and files[3].name in problem.message
    assert "1 slice(s) missing" in problem.message


def test_unsupported_syntax_names_the_plugin(tmp_path, monkeypatch):
    ds = make_dataset(slice_pixels(8, 8, 0), series_uid=generate_uid(), transfer_syntax="1.2.840.10008.1.2.4.201")
    ds.PixelData = encapsulate([bytes(64)])
    ds["PixelData"].VR = "OB"
    path = save(ds, tmp_path / "htj2k.dcm")
    monkeypatch.setattr(dicom_file_checks, "_decoder_available", lambda ts: False)
    [problem] = check_dicom(path)
    assert problem.check == "unsupported_transfer_syntax"
    assert "High-Throughput JPEG 2000" in problem.message and "pylibjpeg-openjpeg" in problem.fix


def test_missing_pydicom_plugin_falls_back_to_simpleitk(tmp_path, monkeypatch, caplog):
    pixels = slice_pixels(10, 12, 2)
    ds = make_dataset(pixels, series_uid=generate_uid())
    ds.compress(RLELossless)
    path = save(ds, tmp_path / "rle.dcm")
    monkeypatch.setattr(dicom_file_checks, "_decoder_available", lambda ts: False)
    monkeypatch.setattr(dicom_pixels, "_decoder_available", lambda ts: False)
    with caplog.at_level(logging.WARNING):
        arr, _ = read_dicom(path)
    np.testing.assert_array_equal(arr, pixels.T)
    assert "decoder_fallback" in caplog.text and "pylibjpeg-rle" in caplog.text


def test_series_warnings_are_reported_once(tmp_path):
    files, _ = write_series(tmp_path / "us")
    for path in files:
        ds = pydicom.dcmread(path)
        ds.BurnedInAnnotation = "YES"
        ds.save_as(path)
    [problem] = check_dicom(tmp_path / "us")
    assert problem.check == "burned_in_annotation" and problem.severity == Severity.WARNING
    assert problem.message.startswith("5 of 5 files")


def test_non_dicom_files_next_to_a_series_are_skipped(tmp_path):
    write_series(tmp_path / "ct")
    (tmp_path / "ct" / "README.txt").write_text("exported by PACS")
    (tmp_path / "ct" / ".DS_Store").write_bytes(b"\x00\x01")
    assert tuple(load_image(tmp_path / "ct").shape) == (16, 12, 5)


# ------------------------------------------------------------------------------------ conversion


def test_convert_round_trip_keeps_voxels_and_geometry_and_no_identifiers(tmp_path, caplog):
    folder = tmp_path / "DOE_JANE_input"  # the input path may hold anything; outputs must not
    _, expected = write_series(folder, orientation=OBLIQUE, origin=(3.0, -4.0, 5.0))
    caplog.set_level(logging.DEBUG)
    [out] = convert_dicom(folder, tmp_path / "out" / "ct.nii.gz")
    assert out == tmp_path / "out" / "ct.nii.gz" and sorted(p.name for p in out.parent.iterdir()) == ["ct.nii.gz"]
    img = nib.load(out)
    np.testing.assert_array_equal(np.asarray(img.dataobj), expected)
    np.testing.assert_allclose(img.header.get_zooms(), [0.7, 0.8, 2.5], rtol=1e-6)
    np.testing.assert_allclose(img.affine, expected_affine(OBLIQUE, (3.0, -4.0, 5.0)), atol=1e-5)
    converted, reference = sitk.ReadImage(str(out)), sitk_series(folder)
    np.testing.assert_allclose(converted.GetSpacing(), reference.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(converted.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(converted.GetDirection(), reference.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(converted), sitk.GetArrayFromImage(reference))
    raw = out.read_bytes()
    assert_no_planted(raw)
    assert_no_planted(gzip.decompress(raw))
    assert_no_planted(caplog.text.replace(str(folder), "<input>"))
    assert "wrote" in caplog.text


def test_convert_folder_writes_one_hashed_file_per_series(tmp_path):
    _two_series(tmp_path)
    written = convert_dicom(tmp_path / "mixed", tmp_path / "nifti")
    assert len(written) == 2 and all(p.name.startswith("series-") and p.name.endswith(".nii.gz") for p in written)
    uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID) for f in (tmp_path / "mixed").iterdir()}
    assert {p.name for p in written} == {series_file_name(uid) for uid in uids}
    assert sorted(nib.load(p).shape[2] for p in written) == [3, 5]
    with pytest.raises(DicomError) as info:
        convert_dicom(tmp_path / "mixed", tmp_path / "one.nii.gz")
    assert info.value.checks == {"mixed_series"} and "output folder" in str(info.value)


def test_convert_single_2d_file(tmp_path):
    pixels = slice_pixels(6, 8, 1)
    path = save(make_dataset(pixels, series_uid=generate_uid(), rescale=(1.0, -1024.0)), tmp_path / "x.dcm")
    [out] = convert_dicom(path, tmp_path / "x.nii.gz")
    img = nib.load(out)
    assert img.shape == (8, 6, 1) and img.get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asarray(img.dataobj)[:, :, 0], pixels.T - 1024)
    np.testing.assert_allclose(img.header.get_zooms(), [0.7, 0.8, 2.5])


def test_convert_is_atomic(tmp_path, monkeypatch):
    write_series(tmp_path / "ct")

    def broken_fsync(fd):  # the temp file holds the NIfTI bytes, then the disk fails
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        convert_dicom(tmp_path / "ct", tmp_path / "out" / "ct.nii.gz")
    assert list((tmp_path / "out").iterdir()) == []


def test_convert_refuses_bad_input_before_writing(tmp_path):
    folder, _ = _missing_slice(tmp_path)
    with pytest.raises(DicomError, match="missing_slices"):
        convert_dicom(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ de-identification


def test_deidentify_dataset_blanks_removes_and_remaps(tmp_path):
    ds = make_dataset(slice_pixels(4, 4, 0), series_uid="1.2.826.0.1.3680043.8.498.77")
    ds.add_new((0x0009, 0x0010), "LO", "ACME PRIVATE")
    ds.add_new((0x0009, 0x1001), "LO", "SECRET123")
    item = Dataset()
    item.PerformingPhysicianName = "DOE^JANE"
    item.ScheduledProcedureStepStartDate = "20240102"
    ds.RequestAttributesSequence = [item]
    ds.ContentDate = "20240102"
    ds.AcquisitionTime = "101010"
    second = make_dataset(slice_pixels(4, 4, 1), series_uid="1.2.826.0.1.3680043.8.498.77")
    out = deidentify_dataset(ds, salt="s1")
    deidentify_dataset(second, salt="s1")
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "StudyDate"):
        assert keyword in out and out.data_element(keyword).value in ("", None)
    for keyword in ("InstitutionName", "OtherPatientIDs", "SeriesDescription", "RequestAttributesSequence"):
        assert keyword not in out
    assert out.ContentDate == "" and out.AcquisitionTime == ""
    assert (0x0009, 0x1001) not in out
    assert out.SeriesInstanceUID != "1.2.826.0.1.3680043.8.498.77"
    assert out.SeriesInstanceUID == second.SeriesInstanceUID  # one series stays one series
    assert out.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"  # standard UIDs kept
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert out.PatientIdentityRemoved == "YES"
    path = save(out, tmp_path / "anon.dcm")
    assert_no_planted(path.read_bytes())
    assert np.array_equal(pydicom.dcmread(path).pixel_array, slice_pixels(4, 4, 0))


def test_deidentify_profile_names_are_dicom_keywords():
    for keyword in dicom_deidentify._BLANK + dicom_deidentify._REMOVE:
        assert pydicom.datadict.tag_for_keyword(keyword) is not None, keyword


# --------------------------------------------------------------------------------------- real data

D = "dicom"
REAL_FILES = {  # name -> expected shape (MONAI layout) or the specific error check
    "693_J2KR.dcm": (512, 512),
    "CT_small.dcm": (128, 128),
    "ExplVR_BigEnd.dcm": (80, 60, 3),
    "JPEG2000.dcm": (256, 1024),
    "JPGLosslessP14SV1_1s_1f_8b.dcm": (1024, 768),
    "MR-SIEMENS-DICOM-WithOverlays.dcm": (484, 484),
    "MR2_J2KI.dcm": (1024, 1024),
    "MR_small.dcm": (64, 64),
    "OBXXXX1A.dcm": (800, 600, 3),
    "OBXXXX1A_rle_2frame.dcm": (800, 600, 2, 3),
    "RG1_J2KI.dcm": (1841, 1955),
    "RG3_J2KI.dcm": (1760, 1760),
    "US1_J2KR.dcm": (640, 480, 3),
    "color-pl.dcm": (256, 120, 3),
    "eCT_Supplemental.dcm": (512, 512, 2),
    "emri_small.dcm": (64, 64, 10),
    "examples_ybr_color.dcm": (320, 240, 30, 3),
    "gdcm-US-ALOKA-16.dcm": (640, 480, 3),
    "liver.dcm": "dicom_seg",
    "nibabel_siemens_mosaic_dwi_0.dcm": "siemens_mosaic",
}


@pytest.mark.shared_data
def test_real_dicom_folder_has_the_expected_files(shared_data):
    assert sorted(p.name for p in (shared_data / D).glob("*.dcm")) == sorted(REAL_FILES)


@pytest.mark.shared_data
@pytest.mark.parametrize("name", sorted(REAL_FILES))
def test_real_dicom_file_loads_or_gives_its_specific_error(shared_data, name):
    path = shared_data / D / name
    expected = REAL_FILES[name]
    if isinstance(expected, str):
        with pytest.raises(DicomError) as info:
            load_image(path)
        assert info.value.checks == {expected} and name in str(info.value)
        return
    image = load_image(path)
    arr = np.asarray(image)
    assert arr.shape == expected
    assert np.isfinite(arr).all() and arr.max() > arr.min()
    assert np.isfinite(image.affine.numpy()).all() and (image.meta["spacing"] > 0).all()
    if image.meta["dicom_has_geometry"]:  # same geometry as SimpleITK (GDCM) reports
        reference = sitk_ras_affine(sitk.ReadImage(str(path)))
        n = min(3, arr.ndim)
        np.testing.assert_allclose(image.affine.numpy()[:, :n], reference[:, :n], atol=1e-4)


@pytest.mark.shared_data
def test_real_palette_and_monochrome1_match_simpleitk(shared_data):
    for name in ("OBXXXX1A.dcm", "gdcm-US-ALOKA-16.dcm", "RG3_J2KI.dcm", "US1_J2KR.dcm"):
        ours = np.asarray(load_image(shared_data / D / name))
        theirs = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_data / D / name)))[0]
        np.testing.assert_array_equal(ours, np.swapaxes(theirs, 0, 1), err_msg=name)


@pytest.mark.shared_data
def test_real_seg_reads_as_label_on_request(shared_data):
    image = LoadImage(image_only=True)(shared_data / D / "liver.dcm", reader=MedmtlDicomReader(seg="label"))
    assert tuple(image.shape) == (512, 512, 3, 1) and set(np.unique(np.asarray(image))) <= {0.0, 1.0}


@pytest.mark.shared_data
def test_real_knee_series_is_one_volume(shared_data):
    folder = shared_data / "knee" / "pykneer_subject01_DESS_echo1_dicom"
    image = load_image(folder)
    assert tuple(image.shape) == (512, 512, 80)
    np.testing.assert_allclose(image.meta["spacing"], [0.3125, 0.3125, 1.5], atol=1e-4)
    np.testing.assert_allclose(image.affine.numpy(), sitk_ras_affine(sitk_series(folder)), atol=1e-4)
    assert check_dicom(folder) == []
