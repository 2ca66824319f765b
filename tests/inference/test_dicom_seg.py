"""DICOM-SEG output: masks on medmtl's DICOM grid round-trip through highdicom, slice by slice."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

hd = pytest.importorskip("highdicom")

from dicom_factory import make_dataset, save, write_series  # noqa: E402
from monai.data import MetaTensor  # noqa: E402
from monai.transforms import Compose, Orientation, Orientationd  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from medmtl.data.dicom import read_dicom  # noqa: E402
from medmtl.data.readers import MedmtlLoadImaged, make_loader  # noqa: E402
from medmtl.data.task_keys import pred_key  # noqa: E402
from medmtl.data.tasks import Task  # noqa: E402
from medmtl.inference import MultiTaskPredictionWriter, write_dicom_seg  # noqa: E402
from medmtl.inference.dicom_failures import DICOM_FAILED_FILE, read_dicom_failures  # noqa: E402

ROWS, COLS, SLICES = 16, 20, 6
TASK = Task(name="lesion", kind="segmentation", classes=["background", "lesion", "edema"])
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _asymmetric_mask(shape: tuple[int, ...]) -> np.ndarray:
    """Class indices in medmtl's (columns, rows, slices) layout that no flip or transpose maps onto itself."""
    mask = np.zeros(shape, dtype=np.uint8)
    mask[1:6, 2:4, 1:3] = 1  # near column 0, slices 1-2
    mask[12:19, 9:15, 3] = 2  # far corner, slice 3 only
    mask[7, 1, 4] = 1  # one voxel, slice 4
    return mask  # slices 0 and 5 stay empty


def _series(tmp_path: Path, orientation=(1, 0, 0, 0, 1, 0)) -> tuple[Path, list[Path]]:
    folder = tmp_path / "dicom"
    # instance numbers run against the slice order and file names are shuffled: only positions sort right
    files, _ = write_series(
        folder, n=SLICES, rows=ROWS, cols=COLS, orientation=orientation, reverse_instance_numbers=True
    )
    return folder, files


def _slice_of_file(volume: np.ndarray, files: list[Path]) -> dict[str, int]:
    """SOPInstanceUID -> slice index of ``volume``, found from each file's own pixels (not from any sorting)."""
    out = {}
    for f in files:
        ds = pydicom.dcmread(f)
        match = [k for k in range(volume.shape[2]) if np.array_equal(volume[:, :, k], ds.pixel_array.T)]
        assert len(match) == 1
        out[str(ds.SOPInstanceUID)] = match[0]
    return out


@pytest.mark.parametrize(
    "orientation",
    [(1, 0, 0, 0, 1, 0), (0, 1, 0, 0, 0, -1), (0.8, 0.6, 0, -0.6, 0.8, 0)],
    ids=["axial", "sagittal", "oblique"],
)
def test_round_trip_slice_by_slice(tmp_path, orientation):
    folder, files = _series(tmp_path, orientation)
    volume, meta = read_dicom(folder)
    assert volume.shape == (COLS, ROWS, SLICES)
    mask = _asymmetric_mask(volume.shape)

    out = write_dicom_seg(mask, folder, tmp_path / "out" / "case1_seg.dcm", TASK, affine=meta["affine"])

    assert out == tmp_path / "out" / "case1_seg.dcm" and out.is_file()
    assert not [p for p in out.parent.iterdir() if p != out]  # no temporary left behind
    seg = hd.seg.segread(out)
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.SeriesDescription == "medmtl lesion"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["lesion", "edema"]
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == [1, 2]
    assert seg.SegmentSequence[0].SegmentAlgorithmName == "medmtl"
    # frames reference the source instances: each source slice gets back exactly its mask slice
    slice_of = _slice_of_file(volume, files)
    uids = list(slice_of)
    frames = seg.get_pixels_by_source_instance(uids, combine_segments=True, assert_missing_frames_are_empty=True)
    assert frames.shape == (SLICES, ROWS, COLS)  # highdicom's (frames, rows, columns)
    for uid, frame in zip(uids, frames, strict=True):
        np.testing.assert_array_equal(frame, mask[:, :, slice_of[uid]].T)

    # and the SEG's own geometry puts every labelled pixel where the mask has it in patient space
    seg_volume = seg.get_volume(combine_segments=True)
    index = np.stack(np.meshgrid(*map(np.arange, seg_volume.array.shape), indexing="ij"), -1).reshape(-1, 3)
    world_lps = np.c_[index, np.ones(len(index))] @ seg_volume.affine.T
    ours = np.rint(world_lps @ LPS_TO_RAS.T @ np.linalg.inv(meta["affine"]).T)[:, :3].astype(int)
    np.testing.assert_array_equal(seg_volume.array.reshape(-1), mask[tuple(ours.T)])


def test_patient_identity_is_copied_into_the_seg_only(tmp_path):
    """The SEG goes back to the PACS: the standard makes it carry the source's patient and study."""
    folder, files = _series(tmp_path)
    mask = _asymmetric_mask((COLS, ROWS, SLICES))
    out = write_dicom_seg(torch.as_tensor(mask)[None], folder, tmp_path / "case7_seg.dcm", TASK)
    seg = pydicom.dcmread(out)
    source = pydicom.dcmread(files[0])
    assert seg.PatientID == source.PatientID and seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    assert out.name == "case7_seg.dcm"


def test_single_image_source(tmp_path):
    pixels = np.arange(ROWS * COLS, dtype=np.int16).reshape(ROWS, COLS)
    path = save(make_dataset(pixels, series_uid=generate_uid()), tmp_path / "xray.dcm")
    image, _ = read_dicom(path)
    assert image.shape == (COLS, ROWS)
    mask = np.zeros(image.shape, dtype=np.uint8)
    mask[2:5, 1:3] = 1
    mask[15, 12] = 2

    seg = hd.seg.segread(write_dicom_seg(mask, path, tmp_path / "seg.dcm", TASK))

    uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    frame = seg.get_pixels_by_source_instance([uid], combine_segments=True)[0]
    np.testing.assert_array_equal(frame, mask.T)


def test_rejects_masks_that_do_not_fit(tmp_path):
    folder, _ = _series(tmp_path)
    _, meta = read_dicom(folder)
    mask = _asymmetric_mask((COLS, ROWS, SLICES))
    out = tmp_path / "x_seg.dcm"
    with pytest.raises(ValueError, match=r"shape \(16, 20, 6\).*\(20, 16, 6\)"):
        write_dicom_seg(mask.transpose(1, 0, 2), folder, out, TASK)  # (rows, cols, slices): the wrong order
    with pytest.raises(ValueError, match=r"values \[3\] outside"):
        write_dicom_seg(np.where(mask == 2, 3, mask), folder, out, TASK)
    with pytest.raises(ValueError, match="fractional"):
        write_dicom_seg(mask * 0.5, folder, out, TASK)
    flipped = meta["affine"] @ np.diag([-1.0, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="affine differs"):
        write_dicom_seg(mask, folder, out, TASK, affine=flipped)
    with pytest.raises(ValueError, match="segmentation task"):
        write_dicom_seg(mask, folder, out, Task(name="malignant", kind="binary"))
    with pytest.raises(ValueError, match="not foreground classes"):
        write_dicom_seg(mask, folder, out, TASK, segment_codes={"tumour": (None, None)})
    assert not out.exists()


def test_prediction_writer_option(tmp_path, caplog):
    folder, files = _series(tmp_path)
    image = make_loader(ensure_channel_first=True)(folder)  # filename_or_obj: the series folder
    assert image.shape == (1, COLS, ROWS, SLICES)
    mask = _asymmetric_mask(image.shape[1:])
    logits = torch.nn.functional.one_hot(torch.as_tensor(mask).long(), 3).permute(3, 0, 1, 2).float() * 4.0
    nifti_image = image.clone()
    nifti_image.meta["filename_or_obj"] = str(tmp_path / "other.nii.gz")
    writer = MultiTaskPredictionWriter([TASK], tmp_path / "pred", dicom_seg=True)

    writer.rows.append(writer.write_sample({"case_id": "case007", "image": image, pred_key("lesion"): logits}))
    with caplog.at_level(logging.WARNING):
        writer.rows.append(
            writer.write_sample({"case_id": "case008", "image": nifti_image, pred_key("lesion"): logits})
        )
    table = writer.write_table()

    seg_path = tmp_path / "pred" / "lesion" / "case007_seg.dcm"
    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0]["lesion_dicom_seg"] == "lesion/case007_seg.dcm" and rows[1]["lesion_dicom_seg"] == ""
    assert "case008 was not read from DICOM" in caplog.text
    assert not (tmp_path / "pred" / "lesion" / "case008_seg.dcm").exists()
    seg = hd.seg.segread(seg_path)
    volume, _ = read_dicom(folder)
    slice_of = _slice_of_file(volume, files)
    frames = seg.get_pixels_by_source_instance(list(slice_of), combine_segments=True)
    for uid, frame in zip(slice_of, frames, strict=True):
        np.testing.assert_array_equal(frame, mask[:, :, slice_of[uid]].T)


def test_prediction_writer_refuses_a_mask_off_the_source_grid(tmp_path, caplog):
    """Without invert_transform, a reoriented image's mask is not on the series' grid: no silent misplaced SEG.
    The case's mask, SR and row are still written, the next case too; the SEG's failure is logged with the
    case id and listed in dicom_failed.csv (which medmtl predict reads)."""
    folder, _ = _series(tmp_path)
    good = make_loader(ensure_channel_first=True)(folder)
    image = good.clone()
    image.affine = image.affine @ torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0], dtype=image.affine.dtype))
    logits = torch.zeros((3, *image.shape[1:]))
    logits[1, 2:5, 3:6, 1:3] = 5.0
    writer = MultiTaskPredictionWriter([TASK], tmp_path / "pred", dicom_seg=True, dicom_sr=True)
    with caplog.at_level(logging.ERROR):
        writer.rows.append(writer.write_sample({"case_id": "c1", "image": image, pred_key("lesion"): logits}))
    writer.rows.append(writer.write_sample({"case_id": "c2", "image": good, pred_key("lesion"): logits}))
    table = writer.write_table()

    with open(table, newline="") as handle:
        rows = {r["case_id"]: r for r in csv.DictReader(handle)}
    assert rows["c1"]["lesion_dicom_seg"] == "" and rows["c1"]["lesion_voxels"] == "18"
    assert (tmp_path / "pred" / rows["c1"]["lesion_file"]).is_file()  # the mask, in the input's geometry
    assert pydicom.dcmread(tmp_path / "pred" / rows["c1"]["dicom_sr"]).Modality == "SR"  # its findings still
    assert not (tmp_path / "pred" / "lesion" / "c1_seg.dcm").exists()
    assert rows["c2"]["lesion_dicom_seg"] == "lesion/c2_seg.dcm" and rows["c2"]["dicom_sr"]  # the next case
    (failure,) = read_dicom_failures(tmp_path / "pred" / DICOM_FAILED_FILE)
    assert (failure.case_id, failure.output) == ("c1", "lesion DICOM SEG")
    assert failure.reason.startswith("ValueError: ") and "affine differs" in failure.reason
    assert "case c1: lesion DICOM SEG not written (ValueError: " in caplog.text

    writer = MultiTaskPredictionWriter([TASK], tmp_path / "pred", dicom_seg=True)  # again, nothing failing:
    writer.rows.append(writer.write_sample({"case_id": "c2", "image": good, pred_key("lesion"): logits}))
    writer.write_table()
    assert not (tmp_path / "pred" / DICOM_FAILED_FILE).exists()  # no stale table of failures


@pytest.mark.parametrize("mask_resampling", ["interpolate", "nearest"])
def test_prediction_writer_inverts_the_preprocessing_first(tmp_path, mask_resampling):
    """Predicted on a reoriented grid (RAS flips the DICOM's LPS columns and rows), written back on the source's.

    A reorientation moves voxels without resampling: both ways of mapping masks back give the same SEG.
    """
    folder, files = _series(tmp_path)
    preprocess = Compose(
        [MedmtlLoadImaged(keys="image", ensure_channel_first=True), Orientationd(keys="image", axcodes="RAS")]
    )
    image = preprocess({"image": str(folder)})["image"]
    source_volume, meta = read_dicom(folder)
    mask = _asymmetric_mask(source_volume.shape)
    oriented = Orientation(axcodes="RAS")(MetaTensor(torch.as_tensor(mask)[None], affine=meta["affine"]))
    assert not np.array_equal(np.asarray(oriented[0]), mask)  # the grid really changed
    logits = torch.nn.functional.one_hot(oriented[0].as_tensor().long(), 3).permute(3, 0, 1, 2).float()
    writer = MultiTaskPredictionWriter(
        [TASK], tmp_path / "pred", dicom_seg=True, invert_transform=preprocess, mask_resampling=mask_resampling
    )

    row = writer.write_sample({"case_id": "c2", "image": image, pred_key("lesion"): logits})

    seg = hd.seg.segread(tmp_path / "pred" / row["lesion_dicom_seg"])
    slice_of = _slice_of_file(source_volume, files)
    frames = seg.get_pixels_by_source_instance(list(slice_of), combine_segments=True)
    for uid, frame in zip(slice_of, frames, strict=True):
        np.testing.assert_array_equal(frame, mask[:, :, slice_of[uid]].T)
