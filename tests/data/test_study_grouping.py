"""``aggregate_by``: the study of each case on the MURA layout, template errors, mixed-label studies as warnings."""

from __future__ import annotations

import shutil
from pathlib import Path

import layouts
import pytest

from medmtl.data.problems import Severity
from medmtl.data.spec import SpecError, load_spec
from medmtl.data.validate import validate_dataset
from medmtl.data.validate.studies import MAX_STUDIES_LISTED, mixed_label_studies

MURA = Path(__file__).resolve().parents[2] / "data_specs" / "mura.yaml"


@pytest.fixture(scope="module")
def mura_root(tmp_path_factory) -> Path:
    return layouts.write_mura(tmp_path_factory.mktemp("mura"))


def test_every_case_carries_its_study_and_study_of_maps_one_split(mura_root):
    table = load_spec(MURA, root=str(mura_root)).build_cases()
    expected = {  # from the layout's own table: one study per (part, patient, study) row
        f"{part}_{patient}_{study}": count for _, part, patient, study, _, count in layouts.MURA_STUDIES
    }
    found: dict[str, int] = {}
    for case in table.cases:
        assert case["case_id"].startswith(case["study"] + "_image")
        found[case["study"]] = found.get(case["study"], 0) + 1
    assert found == expected
    test = table.study_of("test")
    assert set(test) == {c["case_id"] for c in table.datalist("test")}
    assert sorted(set(test.values())) == ["HAND_patient11186_study1", "WRIST_patient11185_study1"]
    without = load_spec(MURA, root=str(mura_root), aggregate_by=None).build_cases()
    assert without.study_of("test") is None and all("study" not in c for c in without.cases)


def test_unknown_fields_in_aggregate_by_are_one_error_naming_the_file_and_the_fields():
    with pytest.raises(SpecError) as err:
        load_spec(MURA, aggregate_by="{part}_{patient}_{exam}", aggregate="median")
    text = str(err.value)
    assert str(MURA) in text or "mura.yaml" in text
    assert "['exam']" in text and "'patient'" in text and "'study'" in text  # the field, and the ones it has
    assert "aggregate" in text and "median" in text  # reported with it, in the same error
    with pytest.raises(SpecError, match="names no field"):
        load_spec(MURA, aggregate_by="study")


def test_a_study_with_mixed_labels_is_a_warning_naming_the_study_and_its_images(tmp_path):
    root = layouts.write_mura(tmp_path)
    positive = root / "train/XR_WRIST/patient00003/study1_positive/image1.png"
    copy = root / "train/XR_WRIST/patient00003/study1_negative/image2.png"  # same study, filed as negative
    copy.parent.mkdir()
    shutil.copy(positive, copy)
    report = validate_dataset(MURA, root=root, check_files=False)
    mixed = [p for p in report.problems if p.check == "mixed_study_labels"]
    assert len(mixed) == 1 and mixed[0].severity == Severity.WARNING and report.ok
    assert "study 'WRIST_patient00003_study1'" in mixed[0].message and "'abnormal'" in mixed[0].message
    assert "WRIST_patient00003_study1_image1 (abnormal)" in mixed[0].message
    assert "WRIST_patient00003_study1_image2 (normal)" in mixed[0].message
    clean = validate_dataset(MURA, root=layouts.write_mura(tmp_path / "clean"), check_files=False)
    assert not [p for p in clean.problems if p.check == "mixed_study_labels"]


def test_many_mixed_studies_are_capped_with_a_count():
    spec = load_spec(MURA)
    cases = [
        {"case_id": f"s{s}_i{i}", "study": f"s{s}", "abnormal": i % 2, "abnormal_present": 1, "body_part_present": 0}
        for s in range(MAX_STUDIES_LISTED + 7)
        for i in range(2)
    ]
    problems = mixed_label_studies(spec, cases)
    assert len(problems) == MAX_STUDIES_LISTED + 1
    assert (
        "7 more studies" in problems[-1].message and f"{MAX_STUDIES_LISTED + 7} studies in all" in problems[-1].message
    )
