"""DICOM study folders for medmtl predict: files grouped by study and series from their headers, series
scored against the rules stored with the model, the choice logged in series.csv, cases a reader can read."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from dicom_factory import PLANTED_STRINGS, make_dataset, save
from dicom_study_factory import write_pacs_export, write_volume_series
from pydicom.uid import generate_uid

from medmtl.data.dicom import read_dicom, scan_dicom
from medmtl.data.dicom.studies import group_studies
from medmtl.data.spec import SpecError, load_spec
from medmtl.data.spec_model import DicomSeriesRules
from medmtl.deploy.inputs import find_inputs, read_input_list
from medmtl.deploy.predict import PredictError, predict
from medmtl.deploy.series_choice import (
    choose_series,
    dicom_cases,
    effective_rules,
    score_series,
    write_series_table,
)
from medmtl.resources import resolve_resource

PLANES = ("axial", "coronal", "sagittal")  # the inputs of data_specs/mrnet.yaml

VOLUME = np.random.default_rng(0).uniform(0, 50, (10, 8, 6)).round(2)  # (columns, rows, slices)


@pytest.fixture
def export(tmp_path):
    return write_pacs_export(tmp_path / "in", VOLUME)


def _studies(export):
    studies, problems = group_studies(c.path for c in find_inputs(export.root))
    assert not problems
    return studies


def test_files_are_grouped_into_studies_and_series_from_their_headers(export) -> None:
    studies = _studies(export)
    assert [s.uid for s in studies] == export.studies
    by_uid = {s.series_uid: s for study in studies for s in study.series}
    localizer, mr, screen, ct = (by_uid[export.series[n]] for n in ("localizer", "mr", "screen", "ct"))
    assert [s.series_uid for s in studies[0].series] == [localizer.series_uid, mr.series_uid, screen.series_uid]
    assert (localizer.orientation, localizer.slices, localizer.image_type[-1]) == ("mixed", 3, "LOCALIZER")
    assert (mr.orientation, mr.slices, mr.modality, mr.number) == ("axial", VOLUME.shape[2], "MR", 2)
    assert mr.files == tuple(export.mr_files)  # by instance number
    assert (screen.orientation, screen.modality) == ("unknown", "OT")
    assert (ct.modality, ct.slices) == ("CT", 4) and studies[1].folder == export.root / "EXPORT" / "S2" / "SE1"


def test_each_rule_is_scored_and_named_when_it_fails(export) -> None:
    mr = next(s for s in _studies(export)[0].series if s.modality == "MR" and s.orientation == "axial")
    assert score_series(mr, effective_rules(None, "MR"), 3).matched
    strict = DicomSeriesRules(
        modality=["mr"],
        image_type=["ORIGINAL", "DERIVED"],
        orientation="sagittal",
        min_slices=7,
        max_slices=9,
        series_description="^sag",
    )
    score = score_series(mr, strict, 3)
    failed = {name for name, ok, _ in score.checks if not ok}
    assert failed == {"image_type", "orientation", "min_slices", "series_description"}
    assert score.score == pytest.approx(4 / 8)  # images, modality, volume and max_slices pass
    assert "orientation axial, expected sagittal" in score.reasons
    assert "6 image(s), expected at least 7" in score.reasons
    assert not score_series(mr, effective_rules(None, "CT"), 3).matched
    screen = next(s for s in _studies(export)[0].series if s.modality == "OT")  # no position, no orientation
    assert score_series(screen, effective_rules(None, "OT"), 3).reasons == ["no patient geometry, expected a volume"]
    assert score_series(screen, effective_rules(None, "OT"), 2).matched
    # the spec's modality is the default rule; radiographs are CR or DX
    assert effective_rules(None, "CR").modality == ("CR", "DX")
    assert effective_rules(DicomSeriesRules(modality=["MG"]), "CR").modality == ("MG",)
    assert effective_rules(None, "").modality is None


def test_series_table_and_cases_of_a_3d_model(export, tmp_path) -> None:
    rules = effective_rules(None, "MR")
    choices = choose_series(_studies(export), rules, 3)
    table = write_series_table(choices, tmp_path / "series.csv")
    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    chosen = [r for r in rows if r["chosen"] == "yes"]
    assert [(r["series_uid"], r["case_id"]) for r in chosen] == [(export.series["mr"], "study01_series2")]
    reasons = {r["series_uid"]: r["reason"] for r in rows}
    assert "several orientations (a localizer)" in reasons[export.series["localizer"]]
    assert "modality OT, expected MR" in reasons[export.series["screen"]]
    assert "modality CT, expected MR" in reasons[export.series["ct"]]
    text = table.read_text()
    assert not [s for s in PLANTED_STRINGS if s.lower() in text.lower()]  # UIDs only, no patient data

    (case,) = dicom_cases(choices, 3, tmp_path / "links")
    # the MR series shares its folder with the screen capture: it is read from a folder of links
    assert case.case_id == "study01_series2" and case.path == tmp_path / "links" / "study01_series2"
    assert scan_dicom(case.path).series_uid == export.series["mr"]
    volume, _ = read_dicom(case.path)
    np.testing.assert_allclose(volume, VOLUME, atol=1e-6)

    (case,) = dicom_cases(choose_series(_studies(export), effective_rules(None, "CT"), 3), 3, tmp_path / "l2")
    assert case.path == export.root / "EXPORT" / "S2" / "SE1"  # a series with a folder of its own: as it is

    # a 2D model takes the single-frame images of the localizer and of the volume; "one": the series with most
    assert [c.chosen for c in choose_series(_studies(export), effective_rules(None, "MR"), 2)] == [(0, 1), ()]
    one = choose_series(_studies(export), DicomSeriesRules(modality=["MR"], choose="one"), 2)
    assert [c.chosen for c in one] == [(1,), ()]
    cases = dicom_cases(one, 2, tmp_path / "l3")
    assert [c.case_id for c in cases] == [f"study01_series2_{k:03d}" for k in range(1, 7)]
    assert [c.path for c in cases] == export.mr_files


def test_cases_of_a_2d_model_are_single_images(tmp_path) -> None:
    study, series = generate_uid(), generate_uid()
    for k in range(3):
        ds = make_dataset(np.full((6, 5), k, dtype=np.uint16), series_uid=series, instance=3 - k, modality="DX")
        ds.StudyInstanceUID, ds.SeriesNumber = study, 4
        save(ds, tmp_path / "xr" / f"view{k}.dcm")
    cine = make_dataset(np.zeros((4, 6, 5), dtype=np.uint8), series_uid=generate_uid(), modality="DX")
    cine.StudyInstanceUID, cine.SeriesNumber = study, 5
    save(cine, tmp_path / "xr" / "cine.dcm")
    studies, _ = group_studies(c.path for c in find_inputs(tmp_path / "xr"))
    choices = choose_series(studies, effective_rules(None, "CR"), 2)
    cases = dicom_cases(choices, 2, tmp_path / "links")
    # by instance number: view2 is instance 1
    assert [(c.case_id, c.path.name) for c in cases] == [
        ("study01_series4_001", "view2.dcm"),
        ("study01_series4_002", "view1.dcm"),
        ("study01_series4_003", "view0.dcm"),
    ]
    assert "multi-frame, expected 2D images" in choices[0].scores[1].reasons
    assert not (tmp_path / "links").exists()


def test_spec_rules_are_validated() -> None:
    spec = load_spec(resolve_resource("data_specs/demo3d.yaml"), dicom_series={"modality": ["mr"], "min_slices": 20})
    assert spec.dicom_series.modality == ("MR",) and spec.dicom_series.min_slices == 20
    with pytest.raises(SpecError, match="is not a regular expression"):
        load_spec(resolve_resource("data_specs/demo3d.yaml"), dicom_series={"series_description": "(t1"})
    with pytest.raises(SpecError, match="above max_slices"):
        load_spec(resolve_resource("data_specs/demo3d.yaml"), dicom_series={"min_slices": 9, "max_slices": 2})
    with pytest.raises(SpecError, match="did you mean 'orientation'"):
        load_spec(resolve_resource("data_specs/demo3d.yaml"), dicom_series={"orientaton": "axial"})


def test_predict_on_a_pacs_export_chooses_series_and_lists_the_rest(export, tmp_path) -> None:
    """Up to the bundle's inference (the runner receives its command): series.csv, failed.csv, inputs.json."""
    run = tmp_path / "run"
    run.mkdir()
    record = {"format": "medmtl.run_config/1", "bundle": "brain_mri_mtl", "settings": {"data": {}, "model": {}}}
    (run / "run_config.json").write_text(json.dumps(record))
    (export.root / "EXPORT" / "S2" / "broken.dcm").write_bytes(b"\x00" * 200)
    calls = []
    result = predict(
        export.root,
        tmp_path / "out",
        run,
        data_spec=str(resolve_resource("data_specs/demo3d.yaml")),
        runner=lambda argv: calls.append(argv) or 0,
    )
    out = tmp_path / "out"
    assert [c.case_id for c in result.predicted] == ["study01_series2"]
    (argv,) = calls
    assert argv[argv.index("--dicom_seg") + 1] == "True" and argv[argv.index("--dicom_sr") + 1] == "True"
    (entry,) = read_input_list(out / "inputs.json")
    assert entry["case_id"] == "study01_series2" and entry["image"] == str(
        (out / "dicom_series" / "study01_series2").resolve()
    )
    with open(out / "failed.csv", newline="") as handle:
        failed = {r["case_id"]: r for r in csv.DictReader(handle)}
    assert set(failed) == {"EXPORT/S2/broken", "study02"}
    assert "not a readable DICOM file" in failed["EXPORT/S2/broken"]["reason"]
    assert "expected a 3D volume (2 or more slices in one orientation), modality MR" in failed["study02"]["reason"]
    assert "series 1 CT 'CT HEAD': modality CT, expected MR" in failed["study02"]["reason"]
    assert failed["study02"]["path"] == str(export.root / "EXPORT" / "S2" / "SE1")
    assert (out / "series.csv").is_file()
    # again with --overwrite: the links are made afresh, nothing of the first run is taken for input
    again = predict(
        export.root,
        out,
        run,
        data_spec=str(resolve_resource("data_specs/demo3d.yaml")),
        overwrite=True,
        runner=lambda argv: 0,
    )
    assert [c.case_id for c in again.predicted] == ["study01_series2"]


def test_a_model_with_several_inputs_gets_one_series_per_input_of_each_study(tmp_path) -> None:
    """Rules per input (``dicom_series.inputs``, here the knee spec's planes by orientation): a study with the
    three planes is one case with a series per input; a study lacking the coronal one is a row of failed.csv
    naming that input's rules; series.csv gives the choice per input. Up to the bundle's inference."""
    root, planes = tmp_path / "in", {"sagittal": 3, "coronal": 4, "axial": 5}  # plane: series number
    studies = [generate_uid(), generate_uid()]
    for k, (study, present) in enumerate(zip(studies, [planes, {"sagittal": 3, "axial": 5}], strict=True), start=1):
        for plane, number in present.items():
            write_volume_series(
                root / f"S{k}" / f"SE{number}", VOLUME, study_uid=study, series_uid=generate_uid(), number=number,
                plane=plane, description=f"PD {plane}",
            )  # fmt: skip
    rules = {"modality": ["MR"], "inputs": {plane: {"orientation": plane} for plane in planes}}
    spec = str(resolve_resource("data_specs/mrnet.yaml"))
    volumes = {plane: f"{{split}}/{plane}/{{id}}.nii.gz" for plane in planes}  # a model trained on volumes, not arrays
    settings = {"data": {"data_spec": spec, "spec_overrides": {"dicom_series": rules, "inputs": volumes}}, "model": {}}
    run = tmp_path / "run"
    run.mkdir()
    (run / "run_config.json").write_text(
        json.dumps({"format": "medmtl.run_config/1", "bundle": "knee_mri_mtl", "settings": settings})
    )
    out, calls = tmp_path / "out", []
    result = predict(root, out, run, runner=lambda argv: calls.append(argv) or 0)
    assert [c.case_id for c in result.predicted] == ["study01"] and len(calls) == 1
    (entry,) = read_input_list(out / "inputs.json")
    assert entry == {"case_id": "study01"} | {
        plane: str((root / "S1" / f"SE{number}").resolve()) for plane, number in planes.items()
    }
    with open(out / "failed.csv", newline="") as handle:
        (failed,) = list(csv.DictReader(handle))
    assert failed["case_id"] == "study02" and failed["path"] == str(root / "S2")
    assert failed["reason"].startswith(
        "input coronal: no series of this study matches the model's series rules (the data spec's "
        "dicom_series.inputs.coronal): expected a 3D volume (2 or more slices in one orientation), modality MR, "
        "coronal slices; found series 3 MR 'PD sagittal': orientation sagittal, expected coronal"
    )
    with open(out / "series.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    chosen = {(r["input"], r["study"]): r["description"] for r in rows if r["chosen"] == "yes"}
    assert chosen == {(plane, "study01"): f"PD {plane}" for plane in planes}  # study02 is no case
    matched = {r["input"]: r for r in rows if r["study"] == "study02" and r["description"] == f"PD {r['input']}"}
    assert sorted(matched) == ["axial", "sagittal"] and all(r["case_id"] == "" for r in matched.values())
    assert matched["axial"]["reason"].startswith("matches, but the study is not predicted: input coronal: no series")
    texts = [(out / n).read_text() for n in ("series.csv", "failed.csv", "inputs.json")]
    assert not [s for s in PLANTED_STRINGS if any(s.lower() in t.lower() for t in texts)]


def test_rules_per_input_are_checked_against_the_spec_inputs() -> None:
    mrnet = resolve_resource("data_specs/mrnet.yaml")
    rules = DicomSeriesRules(min_slices=20, inputs={"axial": {"orientation": "axial", "max_slices": 40}})
    assert rules.for_input("axial").model_dump() == {
        **DicomSeriesRules().model_dump(), "min_slices": 20, "max_slices": 40, "orientation": "axial"
    }  # fmt: skip
    assert rules.for_input("coronal") == DicomSeriesRules(min_slices=20)
    with pytest.raises(SpecError, match=r"dicom_series.inputs gives rules for \['axial'\]; the spec's inputs are"):
        load_spec(mrnet, dicom_series=rules.model_dump(exclude_unset=True))
    with pytest.raises(SpecError, match="min_slices 20 is above max_slices 10"):
        load_spec(mrnet, dicom_series={"min_slices": 20, "inputs": {p: {"max_slices": 10} for p in PLANES}})


def test_a_2d_model_with_several_inputs_refuses_a_series_of_many_images(tmp_path) -> None:
    """A 2D model with several inputs takes one image per input: series of several slices chosen by its rules
    make the study a failed.csv row saying so, instead of silently keeping each series' first slice."""
    root, planes = tmp_path / "in", {"sagittal": 3, "coronal": 4, "axial": 5}
    study = generate_uid()
    for plane, number in planes.items():
        write_volume_series(
            root / "S1" / f"SE{number}", VOLUME, study_uid=study, series_uid=generate_uid(), number=number,
            plane=plane, description=f"PD {plane}",
        )  # fmt: skip
    rules = {"modality": ["MR"], "inputs": {plane: {"orientation": plane} for plane in planes}}
    images = {plane: f"{{split}}/{plane}/{{id}}.png" for plane in planes}
    overrides = {"dicom_series": rules, "inputs": images, "spatial_dims": 2}
    settings = {"data": {"data_spec": str(resolve_resource("data_specs/mrnet.yaml")), "spec_overrides": overrides}}
    run = tmp_path / "run"
    run.mkdir()
    (run / "run_config.json").write_text(
        json.dumps({"format": "medmtl.run_config/1", "bundle": "knee_mri_mtl", "settings": {**settings, "model": {}}})
    )
    calls: list = []
    with pytest.raises(PredictError, match="none of the 18 inputs can be predicted"):  # 3 series of 6 files
        predict(root, tmp_path / "out", run, runner=calls.append)
    with open(tmp_path / "out" / "failed.csv", newline="") as handle:
        (failed,) = list(csv.DictReader(handle))
    assert failed["case_id"] == "study01" and not calls
    assert "do not make one image each; a model with several inputs takes one image per input" in failed["reason"]
