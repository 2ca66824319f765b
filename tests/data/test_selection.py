"""A spec's ``select``: only the cases labelled with the named classes, each keeping its split; bad names refused."""

from __future__ import annotations

import layouts
import pytest

from medmtl.data import Task
from medmtl.data.problems import DataError
from medmtl.data.selection import select_cases
from medmtl.data.spec import SpecError, load_spec

MURA = "data_specs/mura.yaml"


@pytest.fixture(scope="module")
def mura_root(tmp_path_factory):
    return layouts.write_mura(tmp_path_factory.mktemp("mura"))


def _part_of(case_id: str) -> str:
    return case_id.split("_")[0].lower()


def test_select_keeps_the_cases_of_the_class_with_their_splits(mura_root) -> None:
    everything = {c["case_id"]: c["split"] for c in load_spec(MURA).build_cases(root=mura_root).cases}

    wrists = load_spec(MURA, select={"body_part": "wrist"}).build_cases(root=mura_root)
    expected = {case: split for case, split in everything.items() if _part_of(case) == "wrist"}
    assert {c["case_id"]: c["split"] for c in wrists.cases} == expected  # the folder says wrist; the split is kept
    images = sum(n for _, part, *_, n in layouts.MURA_STUDIES if part == "WRIST")
    assert len(expected) == images == 5
    assert wrists.label_counts()["body_part"]["wrist"] == images

    two = load_spec(MURA, select={"body_part": ["hand", "elbow"]}).build_cases(root=mura_root)
    assert {c["case_id"] for c in two.cases} == {c for c in everything if _part_of(c) in ("hand", "elbow")}

    both = load_spec(MURA, select={"body_part": "shoulder", "abnormal": "abnormal"}).build_cases(root=mura_root)
    assert {c["case_id"] for c in both.cases} == {
        f"SHOULDER_{patient}_{study}_image{i}"
        for _, part, patient, study, result, n in layouts.MURA_STUDIES
        if part == "SHOULDER" and result == "positive"
        for i in range(1, n + 1)
    }
    assert {c["abnormal"] for c in both.cases} == {1}


def test_select_keeping_no_case_is_an_error(mura_root) -> None:
    table = load_spec(MURA, select={"body_part": "forearm", "abnormal": "abnormal"}).build_cases(root=mura_root)
    assert not table.cases
    with pytest.raises(DataError, match="select_empty") as err:
        table.raise_for_errors()
    assert "forearm" in str(err.value)


def test_unknown_tasks_and_classes_are_all_named() -> None:
    with pytest.raises(SpecError) as err:
        load_spec(MURA, select={"body_part": ["wrist", "knee"], "organ": "liver"})
    text = str(err.value)
    assert "'select'" in text and "['knee']" in text and "'organ'" in text and "elbow" in text


def test_select_by_multilabel_and_segmentation_refused() -> None:
    findings = Task(name="findings", kind="multilabel", classes=["acl", "meniscus"])
    lesion = Task(name="lesion", kind="segmentation", classes=["background", "lesion"])
    cases = [
        {"case_id": "a", "findings": [1, 0], "findings_present": 1},
        {"case_id": "b", "findings": [0, 1], "findings_present": 1},
        {"case_id": "c", "findings": [1, 1], "findings_present": 1},
        {"case_id": "d", "findings": [0, 0], "findings_present": 0},  # no label: never selected
    ]
    assert [c["case_id"] for c in select_cases(cases, {"findings": "meniscus"}, [findings])] == ["b", "c"]
    assert [c["case_id"] for c in select_cases(cases, {"findings": ["acl", "meniscus"]}, [findings])] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="segmentation task 'lesion'"):
        select_cases(cases, {"lesion": "lesion"}, [findings, lesion])
