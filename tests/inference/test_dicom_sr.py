"""DICOM SR output: a case's findings written as a TID 1500 measurement report, read back with highdicom
and pydicom: the source study and series as evidence, probabilities and decisions as in the table, the
segmentation volumes as counted independently, the SEG's segments referenced."""

from __future__ import annotations

import csv

import numpy as np
import pydicom
import pytest
import torch

hd = pytest.importorskip("highdicom")

from dicom_factory import PLANTED, make_dataset, save, write_series  # noqa: E402
from pydicom.sr.codedict import codes  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from medmtl.data.dicom import read_dicom  # noqa: E402
from medmtl.data.readers import make_loader  # noqa: E402
from medmtl.data.task_keys import pred_key  # noqa: E402
from medmtl.data.tasks import Task  # noqa: E402
from medmtl.inference import MultiTaskPredictionWriter, write_dicom_seg  # noqa: E402
from medmtl.inference.dicom_sr import (  # noqa: E402
    CODING_SCHEME,
    SegmentFinding,
    image_level_finding,
    write_dicom_sr,
)

ROWS, COLS, SLICES = 12, 16, 5
VOXEL_MM3 = 0.8 * 0.7 * 2.5  # write_series' pixel spacing and slice spacing
LESION = Task(name="lesion", kind="segmentation", classes=["background", "lesion", "edema"])
ABNORMAL = Task(name="abnormal", kind="binary", classes=["normal", "abnormal"])
DIAGNOSIS = Task(name="diagnosis", kind="multiclass", classes=["benign", "malignant", "other"])
FINDINGS = Task(name="findings", kind="multilabel", classes=["acl", "meniscus"])


def _groups(sr) -> dict[str, object]:
    """Measurement groups by their finding type's meaning (the class name)."""
    content = sr.content
    groups = content.get_image_measurement_groups() + content.get_volumetric_roi_measurement_groups()
    groups += content.get_planar_roi_measurement_groups()
    return {g.finding_type.meaning: g for g in groups}


def _measurements(group) -> dict[str, float]:
    return {m.name.meaning: m.value for m in group.get_measurements()}


def _decision(group) -> str:
    (found,) = [q for q in group.get_qualitative_evaluations() if q.name.scheme_designator == CODING_SCHEME and
                q.name.meaning == group.finding_type.meaning]  # fmt: skip
    return found.value.meaning


def test_findings_and_volumes_round_trip_with_references(tmp_path) -> None:
    files, _ = write_series(tmp_path / "series", n=SLICES, rows=ROWS, cols=COLS)
    _, meta = read_dicom(tmp_path / "series")
    mask = np.zeros((COLS, ROWS, SLICES), dtype=np.uint8)
    mask[2:6, 3:5, 1:4] = 1  # 24 voxels of class 1; class 2 empty
    seg_path = write_dicom_seg(mask, tmp_path / "series", tmp_path / "c_seg.dcm", LESION, affine=meta["affine"])
    row = {
        "abnormal_probability": 0.731, "abnormal": 1, "abnormal_threshold": 0.42,
        "diagnosis": "other", "diagnosis_p_benign": 0.2, "diagnosis_p_malignant": 0.3, "diagnosis_p_other": 0.5,
        "findings_acl_probability": 0.1, "findings_acl": 0, "findings_acl_threshold": 0.5,
        "findings_meniscus_probability": 0.9, "findings_meniscus": 1, "findings_meniscus_threshold": 0.5,
    }  # fmt: skip
    findings = [image_level_finding(t, row) for t in (ABNORMAL, DIAGNOSIS, FINDINGS)]
    segments = [SegmentFinding(LESION, 1, int((mask == 1).sum()), seg_path), SegmentFinding(LESION, 2, 0, seg_path)]

    out = write_dicom_sr(tmp_path / "series", tmp_path / "sr" / "c_sr.dcm", findings, segments, model_name="brain v1")

    assert [p.name for p in out.parent.iterdir()] == ["c_sr.dcm"]  # no temporary left
    sr = hd.sr.srread(out)
    source, seg = pydicom.dcmread(files[0]), pydicom.dcmread(seg_path)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.SeriesInstanceUID != source.SeriesInstanceUID
    assert sr.PatientID == PLANTED["PatientID"]  # the patient module, as the standard requires
    (evidence,) = sr.CurrentRequestedProcedureEvidenceSequence
    assert evidence.StudyInstanceUID == source.StudyInstanceUID
    referenced = {s.SeriesInstanceUID: {i.ReferencedSOPInstanceUID for i in s.ReferencedSOPSequence}
                  for s in evidence.ReferencedSeriesSequence}  # fmt: skip
    assert referenced == {
        source.SeriesInstanceUID: {pydicom.dcmread(f).SOPInstanceUID for f in files},
        seg.SeriesInstanceUID: {seg.SOPInstanceUID},
    }
    assert CODING_SCHEME in [item.CodingSchemeDesignator for item in sr.CodingSchemeIdentificationSequence]
    assert sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "UNVERIFIED"
    assert "brain v1" in str(pydicom.dcmread(out))  # the device observer and the algorithm name

    groups = _groups(sr)
    assert set(groups) == {"abnormal", "benign", "malignant", "other", "acl", "meniscus", "lesion", "edema"}
    assert _measurements(groups["abnormal"]) == {"Probability": 0.731, "Decision threshold": 0.42}
    assert _decision(groups["abnormal"]) == "Present"
    assert [_measurements(groups[c])["Probability"] for c in ("benign", "malignant", "other")] == [0.2, 0.3, 0.5]
    assert [_decision(groups[c]) for c in ("benign", "malignant", "other")] == ["Absent", "Absent", "Present"]
    assert [_decision(groups[c]) for c in ("acl", "meniscus")] == ["Absent", "Present"]
    prob = next(m for m in groups["abnormal"].get_measurements() if m.name.meaning == "Probability")
    assert prob.name == codes.DCM.Probability and prob.unit == codes.UCUM.NoUnits
    assert groups["abnormal"].finding_type.value == "abnormal:abnormal"

    lesion = groups["lesion"]
    assert isinstance(lesion, hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations)
    assert _measurements(lesion) == pytest.approx({"Voxel count": 24.0, "Volume": 24 * VOXEL_MM3})
    reference = lesion.referenced_segment
    assert reference.referenced_sop_instance_uid == seg.SOPInstanceUID
    assert list(reference.referenced_segment_numbers) == [1]
    assert _measurements(groups["edema"]) == {"Voxel count": 0.0, "Volume": 0.0}
    assert _decision(groups["edema"]) == "Absent"


def test_single_image_area_and_errors(tmp_path) -> None:
    pixels = np.arange(ROWS * COLS, dtype=np.int16).reshape(ROWS, COLS)
    path = save(make_dataset(pixels, series_uid=generate_uid(), pixel_spacing=(0.5, 0.25)), tmp_path / "xr.dcm")
    mask = np.zeros((COLS, ROWS), dtype=np.uint8)
    mask[1:4, 2:7] = 2
    seg_path = write_dicom_seg(mask, path, tmp_path / "seg.dcm", LESION)
    segments = [SegmentFinding(LESION, 1, 0, seg_path), SegmentFinding(LESION, 2, 15, seg_path)]
    sr = hd.sr.srread(write_dicom_sr(path, tmp_path / "sr.dcm", segments=segments))
    edema = _groups(sr)["edema"]
    assert isinstance(edema, hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations)
    assert _measurements(edema) == pytest.approx({"Voxel count": 15.0, "Area": 15 * 0.5 * 0.25})
    reference = edema.referenced_segmentation_frame
    assert reference.referenced_sop_instance_uid == pydicom.dcmread(seg_path).SOPInstanceUID
    assert list(reference.referenced_segment_numbers) == [2]
    with pytest.raises(ValueError, match="nothing to report"):
        write_dicom_sr(path, tmp_path / "empty.dcm")
    with pytest.raises(ValueError, match="has no column 'abnormal_threshold'"):
        image_level_finding(ABNORMAL, {"abnormal_probability": 0.3, "abnormal": 0})
    assert not (tmp_path / "empty.dcm").exists()


def test_prediction_writer_writes_the_table_values_into_the_sr(tmp_path) -> None:
    files, _ = write_series(tmp_path / "series", n=SLICES, rows=ROWS, cols=COLS)
    image = make_loader(ensure_channel_first=True)(tmp_path / "series")
    mask = torch.zeros(image.shape[1:], dtype=torch.long)
    mask[4:9, 2:6, 0:2] = 2
    sample = {
        "case_id": "case1",
        "image": image,
        pred_key("lesion"): torch.nn.functional.one_hot(mask, 3).permute(3, 0, 1, 2).float() * 3.0,
        pred_key("abnormal"): torch.tensor([0.8]),
        pred_key("diagnosis"): torch.tensor([0.1, 1.3, -0.4]),
    }
    writer = MultiTaskPredictionWriter([LESION, ABNORMAL, DIAGNOSIS], tmp_path / "pred", dicom_seg=True, dicom_sr=True)
    writer.rows.append(writer.write_sample(sample))
    with open(writer.write_table(), newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["dicom_sr"] == "dicom_sr/case1_sr.dcm" and row["lesion_dicom_seg"] == "lesion/case1_seg.dcm"
    sr = hd.sr.srread(tmp_path / "pred" / row["dicom_sr"])
    groups = _groups(sr)
    assert _measurements(groups["abnormal"])["Probability"] == float(row["abnormal_probability"])
    expected = torch.softmax(sample[pred_key("diagnosis")], 0).tolist()
    for name, p in zip(DIAGNOSIS.class_names, expected, strict=True):
        assert _measurements(groups[name])["Probability"] == float(row[f"diagnosis_p_{name}"]) == round(p, 6)
    assert _decision(groups[row["diagnosis"]]) == "Present" and row["diagnosis"] == "malignant"
    assert _measurements(groups["edema"])["Voxel count"] == int(row["lesion_voxels"]) == 5 * 4 * 2
    assert _measurements(groups["edema"])["Volume"] == pytest.approx(40 * VOXEL_MM3)
    seg = pydicom.dcmread(tmp_path / "pred" / row["lesion_dicom_seg"])
    assert groups["edema"].referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
