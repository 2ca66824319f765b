"""validate_dataset: every planted fault is found in one run, clean data gives the label table."""

from __future__ import annotations

import json
import sys
import time
import types

import numpy as np
import pytest
import validate_fixtures as vf

import medmtl.data.validate.pool as validate_pool
from medmtl.data.problems import Problem, Severity
from medmtl.data.spec import load_spec
from medmtl.data.validate import ValidationReport, validate_dataset


def _find(report: ValidationReport, expected) -> list[Problem]:
    return [
        p
        for p in report.problems
        if p.check == expected.check
        and p.severity.value == expected.severity
        and (expected.case_id is None or p.case_id == expected.case_id)
        and (expected.path_end is None or (p.path or "").endswith(expected.path_end))
    ]


def _assert_all_found(report: ValidationReport, dataset) -> None:
    missing = [e for e in dataset.expected if not _find(report, e)]
    assert not missing, f"not reported: {missing}\nreport:\n{report.format()}"


def _keys(report: ValidationReport) -> set[tuple]:
    return {(p.severity.value, p.check, p.case_id, p.path) for p in report.problems}


def test_nifti_faults_all_reported_in_one_run(tmp_path):
    dataset = vf.nifti_dataset(tmp_path, faults=True)
    report = validate_dataset(dataset.spec, workers=1)
    assert not report.ok
    _assert_all_found(report, dataset)
    # the clean cases (and the one with a size-1 channel axis) have no problem at all
    assert not [p for p in report.problems if p.case_id == "f17"]
    # f01 is both clean and the duplicated id: only the duplicate is reported
    assert [p.check for p in report.problems if p.case_id == "f01"] == ["duplicate_case_id"]
    # exactly one finding per planted fault: nothing reported twice, nothing spurious
    assert len(report.problems) == len(dataset.expected), report.format()
    # every finding names its check, its file (where there is one) and a fix
    assert all(p.fix for p in report.problems)
    text = report.format()
    for p in report.problems:
        assert p.check in text
        if p.path:
            assert p.path in text
    assert "summary: " in text and "1 x spacing_mismatch (error)" in text and "2 x non_finite (error)" in text


def test_nifti_messages_give_values(tmp_path):
    dataset = vf.nifti_dataset(tmp_path, faults=True)
    report = validate_dataset(dataset.spec, workers=1)
    by_case = {(p.case_id, p.check): p.message for p in report.problems}
    assert "(8, 9, 7)" in by_case["f05", "shape_mismatch"] and "(8, 9, 10)" in by_case["f05", "shape_mismatch"]
    assert "[1.0, 1.0, 2.0]" in by_case["f06", "spacing_mismatch"]
    assert "[5.0, 0.0, 0.0]" in by_case["f07", "affine_mismatch"]
    assert "3 (27 voxels)" in by_case["f09", "label_out_of_range"]
    assert "0.5" in by_case["f10", "non_integer_mask"]
    assert "1 NaN and 0 Inf" in by_case["f11", "non_finite"]
    assert "0 NaN and 1 Inf" in by_case["f12", "non_finite"]
    assert "(8, 9, 10, 2)" in by_case["f13", "wrong_rank"]
    assert "not gzip data" in by_case["f03", "unreadable_file"]


def test_png_faults_all_reported_in_one_run(tmp_path):
    dataset = vf.png_dataset(tmp_path, faults=True)
    report = validate_dataset(dataset.spec, workers=1)
    assert not report.ok
    _assert_all_found(report, dataset)
    assert len(report.problems) == len(dataset.expected), report.format()
    assert "not a PNG file" in _find(report, dataset.expected[2])[0].message
    # the RGB image and the OR-ed second mask are fine
    assert not [p for p in report.problems if p.case_id in ("benign_2", "malignant_1")]
    empty = _find(report, vf.Expected("empty_mask", severity="warning"))[0]
    assert "1 of" in empty.message and "normal_1" in empty.message
    assert report.empty_masks == {"lesion": ["normal_1"]}


def test_clean_nifti_label_table(tmp_path):
    dataset = vf.nifti_dataset(tmp_path)
    report = validate_dataset(dataset.spec, workers=1)
    assert report.ok, report.format()
    assert report.num_cases == 6 and report.files_checked == 11
    assert report.split_counts == {"train": 4, "val": 1, "test": 1}
    counts = report.label_counts
    assert counts["all"] == {
        "tumour": {"labelled": 5, "missing": 1, "background": 5, "tumour": 4},
        "grade": {"labelled": 6, "missing": 0, "low": 3, "high": 3},
        "malignant": {"labelled": 4, "missing": 2, "negative": 2, "positive": 2},
    }
    assert counts["train"] == {
        "tumour": {"labelled": 4, "missing": 0, "background": 4, "tumour": 3},
        "grade": {"labelled": 4, "missing": 0, "low": 2, "high": 2},
        "malignant": {"labelled": 3, "missing": 1, "negative": 1, "positive": 2},
    }
    assert counts["test"]["tumour"] == {"labelled": 0, "missing": 1, "background": 0, "tumour": 0}
    # only warning: the empty mask of c03
    assert [(p.check, p.severity) for p in report.problems] == [("empty_mask", Severity.WARNING)]
    text = report.format()
    assert "splits: train 4, val 1, test 1" in text
    lines = text.splitlines()
    start = lines.index("task malignant:")
    assert lines[start + 1].split() == ["split", "labelled", "missing", "negative", "positive"]
    assert lines[start + 2].split() == ["train", "3", "1", "1", "2"]
    assert lines[start + 5].split() == ["all", "4", "2", "2", "2"]
    assert text.splitlines()[-1] == "OK: no errors, 1 warning(s)"


def test_clean_png_label_table(tmp_path):
    dataset = vf.png_dataset(tmp_path)
    report = validate_dataset(dataset.spec, workers=1)
    assert report.ok, report.format()
    assert report.num_cases == 5 and report.files_checked == 11
    assert report.label_counts["all"] == {
        "lesion": {"labelled": 5, "missing": 0, "background": 5, "lesion": 4},
        "diagnosis": {"labelled": 5, "missing": 0, "normal": 1, "benign": 2, "malignant": 2},
    }


def test_process_pool_matches_in_process(tmp_path, monkeypatch):
    dataset = vf.nifti_dataset(tmp_path, faults=True)
    serial = validate_dataset(dataset.spec, workers=1, cache=False)
    monkeypatch.setattr(validate_pool, "_ADAPTIVE", False)  # every case through the spawned worker
    pooled = validate_dataset(dataset.spec, workers=2, cache=False)  # none from the result cache
    assert pooled.workers == 2
    assert _keys(pooled) == _keys(serial)
    assert pooled.files_checked == serial.files_checked


def test_spec_errors_all_reported_with_file(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(
        "name: bad\n"
        "spatial_dims: three\n"
        "colour: red\n"
        'cases: {glob: "*.png"}\n'
        "tasks:\n"
        "  - name: lesion\n"
        "    kind: segmentation\n"
        "    classes: [background, lesion]\n"
        '    label: {mask: "{stem}_mask.png", binarise: true}\n'
    )
    report = validate_dataset(spec, workers=1)
    assert not report.ok and report.dataset is None
    found = {(p.check, p.message.split(":")[0]) for p in report.problems}
    assert ("unknown_key", "unknown key 'colour'") in found
    assert ("unknown_key", "unknown key 'tasks.0.label.binarise'") in found
    assert ("invalid_value", "'spatial_dims'") in found
    assert all(p.path == str(spec) for p in report.problems)
    text = report.format()
    assert "the spec cannot be used" in text and "colour" in text and "spatial_dims" in text


def test_missing_spec_and_missing_root(tmp_path):
    report = validate_dataset(tmp_path / "nope.yaml", workers=1)
    assert [p.check for p in report.problems] == ["missing_file"]
    dataset = vf.png_dataset(tmp_path)
    report = validate_dataset(dataset.spec, root=tmp_path / "elsewhere", workers=1)
    assert [p.check for p in report.problems] == ["missing_root"]
    assert report.problems[0].path == str(tmp_path / "elsewhere")


def test_root_override_and_spec_object(tmp_path):
    dataset = vf.png_dataset(tmp_path)
    moved = tmp_path / "moved"
    dataset.root.rename(moved)
    report = validate_dataset(load_spec(dataset.spec), root=moved, workers=1)
    assert report.ok and report.root == str(moved) and report.num_cases == 5


def test_no_files_only_checks_structure(tmp_path):
    dataset = vf.nifti_dataset(tmp_path, faults=True)
    report = validate_dataset(dataset.spec, workers=1, check_files=False)
    assert report.files_checked == 0
    checks = {p.check for p in report.problems}
    assert checks == {"missing_file", "path_outside_root", "duplicate_case_id", "invalid_label", "missing_column"}


def test_rank_rules_2d(tmp_path):
    """2D spec: a channel axis of size 1 or RGB(A) 3/4 is fine, first or last; other extra axes are not."""
    spec = tmp_path / "flat.yaml"
    spec.write_text(
        'name: flat\nspatial_dims: 2\nroot: data\ncases: {glob: "*.nii.gz"}\n'
        "tasks:\n  - {name: abnormal, kind: binary, label: {field: stem, map: {a: 1, b: 0, c: 1, d: 0, e: 1}}}\n"
        "splits: {method: none}\n"
    )
    shapes = {"a": (24, 32), "b": (24, 32, 1), "c": (3, 24, 32), "d": (24, 32, 5), "e": (24, 32, 2, 2)}
    for name, shape in shapes.items():
        vf.write_nifti(tmp_path / "data" / f"{name}.nii.gz", np.zeros(shape, np.float32))
    report = validate_dataset(spec, workers=1)
    assert sorted((p.check, p.case_id) for p in report.problems) == [("wrong_rank", "d"), ("wrong_rank", "e")]
    assert "(24, 32, 5)" in next(p.message for p in report.problems if p.case_id == "d")


def test_empty_dicom_folder_reported(tmp_path):
    spec = tmp_path / "dicom.yaml"
    spec.write_text(
        'name: folders\nspatial_dims: 3\nroot: data\ncases: {glob: "*/series"}\ncase_id: "{parent}"\n'
        "tasks:\n  - {name: abnormal, kind: binary, label: {field: parent, map: {p1: 1, p2: 0}}}\n"
        "splits: {method: none}\n"
    )
    (tmp_path / "data" / "p1" / "series").mkdir(parents=True)
    report = validate_dataset(spec, workers=1)
    errors = [p for p in report.errors if p.case_id == "p1"]
    assert errors, report.format()
    assert errors[0].path == str(tmp_path / "data" / "p1" / "series")


def test_check_dicom_problems_are_merged(tmp_path, monkeypatch):
    """medmtl.data.dicom.check_dicom findings (mixed series...) reach the report with the case id."""
    calls = []

    def check_dicom(path):
        calls.append(path)
        return [Problem("dicom_mixed_series", "2 series in one folder", "split the folder", path=path)]

    fake = types.ModuleType("medmtl.data.dicom")
    fake.check_dicom = check_dicom
    monkeypatch.setitem(sys.modules, "medmtl.data.dicom", fake)
    spec = tmp_path / "dicom.yaml"
    spec.write_text(
        'name: folders\nspatial_dims: 3\nroot: data\ncases: {glob: "*/series"}\ncase_id: "{parent}"\n'
        "tasks:\n  - {name: abnormal, kind: binary, label: {field: parent, map: {p1: 1}}}\n"
        "splits: {method: none}\n"
    )
    folder = tmp_path / "data" / "p1" / "series"
    folder.mkdir(parents=True)
    (folder / "a.dcm").write_bytes(b"x")
    report = validate_dataset(spec, workers=1)
    assert calls == [str(folder)]
    assert [(p.check, p.case_id, p.path) for p in report.problems] == [("dicom_mixed_series", "p1", str(folder))]


def test_json_report_round_trips(tmp_path):
    dataset = vf.png_dataset(tmp_path, faults=True)
    data = json.loads(validate_dataset(dataset.spec, workers=1).to_json())
    assert data["ok"] is False and data["num_errors"] == len(dataset.expected) - 1
    assert data["check_counts"]["warning"] == {"empty_mask": 1}
    assert data["check_counts"]["error"]["unreadable_file"] == 2
    assert {p["check"] for p in data["problems"]} >= {"shape_mismatch", "mask_shape_mismatch", "label_out_of_range"}
    assert data["label_counts"]["all"]["diagnosis"]["benign"] == 5


@pytest.mark.shared_data
def test_busi_real_data_is_clean(shared_data, specs_dir):
    start = time.perf_counter()
    report = validate_dataset(
        specs_dir / "breast_ultrasound.yaml",
        root=shared_data / "busi" / "Dataset_BUSI_with_GT",
        workers=2,
        progress=False,
    )
    duration = time.perf_counter() - start
    assert report.ok, report.format()
    assert report.errors == []
    assert report.num_cases == 780
    diagnosis = report.label_counts["all"]["diagnosis"]
    assert (diagnosis["normal"], diagnosis["benign"], diagnosis["malignant"]) == (133, 437, 210)
    assert report.label_counts["all"]["lesion"]["labelled"] == 780
    assert report.empty_masks["lesion"] == [c for c in report.empty_masks["lesion"] if c.startswith("normal_")]
    assert len(report.empty_masks["lesion"]) == 133
    assert report.files_checked == 780 + 798  # every image and every mask (some images have 2-3 masks)
    print(f"BUSI validation: {duration:.1f} s with 2 workers")


def test_reader_specific_findings_reach_the_report(tmp_path) -> None:
    """A format no reader handles is reported as such (with the supported list), not as a generic failure."""
    from medmtl.data.spec import DatasetSpec
    from medmtl.data.validate import validate_dataset

    (tmp_path / "a.xyz").write_bytes(b"\x00" * 16)
    (tmp_path / "labels.csv").write_text("case_id,label\na,1\n")
    spec = DatasetSpec.model_validate(
        {
            "name": "odd",
            "root": str(tmp_path),
            "cases": {"csv": "labels.csv"},
            "case_id": "{case_id}",
            "inputs": {"image": "{case_id}.xyz"},
            "tasks": [{"name": "finding", "kind": "binary", "label": {"field": "label"}}],
            "splits": {"method": "none"},
        }
    )
    report = validate_dataset(spec, workers=1)
    assert not report.ok
    (problem,) = [p for p in report.errors if p.case_id == "a"]
    assert problem.check == "unsupported_format" and ".nii.gz" in problem.fix and problem.path.endswith("a.xyz")


def test_half_resolution_2d_masks_are_accepted_but_other_sizes_are_not(tmp_path) -> None:
    """JSRT declares its half-resolution SCR masks (scaled_mask): no shape error there, only there."""
    import layouts

    root = layouts.write_jsrt(tmp_path, size=2048)
    report = validate_dataset("data_specs/jsrt.yaml", root=root)
    assert report.ok, report.format()
    # a mask that is not a whole-number fraction of the image is still an error
    from PIL import Image

    gif = next((root / "scratch").glob("*/masks/heart/JPCLN001.gif"))
    Image.new("P", (1000, 1024)).save(gif)
    report = validate_dataset("data_specs/jsrt.yaml", root=root)
    assert [p.check for p in report.errors] == ["shape_mismatch"]
