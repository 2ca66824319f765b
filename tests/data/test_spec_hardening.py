"""Spec and label-table hardening (issue 18): reserved names, label tables re-read when edited, tables
outside the root or unreadable, foreign delimiters, repeated findings, and per-case missing-mask warnings.

The corpus (:mod:`bad_inputs`) checks that each of these reaches the report through the library, the
CLI and ``require_valid_dataset``; these tests pin the rules behind them on small real files.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import layouts
import pytest
import torch
import yaml
from monai.utils import CommonKeys, PostFix

from medmtl.data.spec import SpecError, load_spec
from medmtl.data.task_keys import RESERVED_NAMES, label_key, pred_key, present_key, reserved_name_error
from medmtl.data.tasks import Task, as_tasks
from medmtl.data.validate import validate_dataset
from medmtl.engines.prepare_batch import FlattenTaskOutputsd

_GRADE = {"name": "grade", "kind": "multiclass", "classes": ["a", "b", "c"], "label": {"field": "label"}}


def _spec(tmp_path: Path, root: Path, **changes) -> Path:
    spec = {
        "name": "generic",
        "root": str(root),
        "cases": {"csv": "labels.csv"},
        "case_id": "{case}",
        "group": "{patient}",
        "inputs": {"image": "images/{case}.png"},
        "tasks": [_GRADE],
        "splits": {"method": "none"},
        **changes,
    }
    path = tmp_path / "generic.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _problems(path: Path) -> list:
    with pytest.raises(SpecError) as info:
        load_spec(path)
    return info.value.problems


# ---------------------------------------------------------------------------------------------
# reserved names


@pytest.mark.parametrize(
    "name",
    [
        "fold",
        "case_id",
        "split",
        "group",
        "image",
        "label",
        "pred",
        "loss",
        "lesion_present",
        "pred_lesion",
        "label_lesion",
        "loss_lesion",
        "prob_lesion",
        "image_meta_dict",
        "image_transforms",
        "supervised",
        "pseudo_label",
        "consistency",
    ],
)
def test_a_task_named_like_a_medmtl_key_is_refused_with_the_reserved_names(tmp_path, name):
    task = {"name": name, "kind": "binary", "label": {"field": "label"}}
    path = _spec(tmp_path, tmp_path, tasks=[_GRADE, task], splits={"method": "kfold", "folds": 2}, colour="red")
    problems = _problems(path)
    clash = ["name_clash"] if name == "image" else []  # also the default input's name
    assert sorted(p.check for p in problems) == [*clash, "reserved_name", "unknown_key"]  # all at once
    reserved = next(p for p in problems if p.check == "reserved_name")
    assert f"'tasks.1.name' (task '{name}'): task name '{name}' is one of medmtl's own keys" in reserved.message
    assert "reserved: case_id, split, group, fold, image, label, pred, loss" in reserved.message
    assert "starting with pred_ / label_ / prob_ / loss_" in reserved.message
    assert "ending in _present / _meta_dict / _transforms" in reserved.message
    assert reserved.fix.startswith("rename the task") and reserved.path == str(path)
    with pytest.raises(ValueError, match=f"task name '{name}' is one of medmtl's own keys"):
        as_tasks([{"name": name, "kind": "binary"}], owner="MultiTaskNet")  # bundle configs too


@pytest.mark.parametrize("name", ["case_id", "split", "group", "fold", "label", "pred_x", "label_x", "x_present"])
def test_an_input_named_like_a_medmtl_key_is_refused(tmp_path, name):
    path = _spec(tmp_path, tmp_path, inputs={"image": "images/{case}.png", name: "images/{case}.png"})
    [problem] = _problems(path)
    assert problem.check == "reserved_name"
    assert problem.message.startswith(f"'inputs.{name}': input name '{name}' is one of medmtl's own keys")
    assert "reserved: case_id, split, group, fold, label" in problem.message and "image" not in problem.message
    assert problem.fix.startswith("rename the input")


def test_ordinary_names_and_the_image_input_are_accepted(tmp_path):
    root = layouts.write_csv_dataset(tmp_path, [0, 1, 2])
    task = {"name": "folder_grade", "kind": "binary", "label": {"field": "label", "map": {"0": 0, "1": 1, "2": 1}}}
    inputs = {"image": "images/{case}.png", "predicted_view": "images/{case}.png"}
    table = load_spec(_spec(tmp_path, root, tasks=[_GRADE, task], inputs=inputs)).build_cases()
    assert table.errors == []
    assert [c["folder_grade"] for c in table.cases] == [0, 1, 1]


def test_an_input_and_a_task_sharing_a_name_is_reported_with_the_other_errors(tmp_path):
    alone = _problems(_spec(tmp_path, tmp_path, inputs={"image": "x", "grade": "y"}))
    assert [(p.check, p.message) for p in alone] == [
        ("name_clash", "'grade' is both an input name and a task name: a case holds one value per name")
    ]
    together = _problems(_spec(tmp_path, tmp_path, inputs={"image": "x", "grade": "y"}, spatial_dims=4))
    assert sorted(p.check for p in together) == ["invalid_value", "name_clash"]


def test_every_key_medmtl_writes_is_reserved(tmp_path):
    """The reserved list against the keys the code writes: case tables, batches, evaluator outputs."""
    root = layouts.write_csv_dataset(tmp_path, [0, 1, 2, 0, 1, 2])
    table = load_spec(_spec(tmp_path, root, splits={"method": "kfold", "folds": 2})).build_cases()
    written = {k for case in table.cases for k in case} - {"grade", "image"}
    assert written == {"case_id", "group", "split", "fold", present_key("grade")}
    sample = {
        CommonKeys.PRED: {"grade": torch.zeros(3)},
        CommonKeys.LABEL: {"grade": torch.tensor(1), present_key("grade"): torch.tensor([1])},
    }
    flat = FlattenTaskOutputsd([Task(name="grade", kind="multiclass", classes=["a", "b", "c"])])(sample)
    written |= set(flat) - {"grade"}
    written |= {pred_key("grade"), label_key("grade"), "loss_grade", CommonKeys.IMAGE, CommonKeys.LOSS}
    written |= {PostFix.meta("image"), PostFix.transforms("image")}
    assert sorted(k for k in written if reserved_name_error(k) is None) == []
    # a task whose loss_<task> would overwrite a semi-supervised loss of the engine output
    assert all(reserved_name_error(name) for name in ("supervised", "pseudo_label", "consistency"))
    assert reserved_name_error("image", "input") is None and "image" in RESERVED_NAMES


# ---------------------------------------------------------------------------------------------
# label tables


def test_a_label_table_edited_between_two_validations_is_read_again(tmp_path):
    root = layouts.write_csv_dataset(tmp_path, [0, 1, 2])
    spec = _spec(
        tmp_path,
        root,
        tasks=[{**_GRADE, "label": {"csv": {"file": "grades.csv", "key_column": "case", "value_column": "grade"}}}],
    )
    grades = root / "grades.csv"
    grades.write_text("case,grade\ncase_000,a\ncase_001,b\ncase_002,c\n")
    before = os.stat(grades)
    first = {c["case_id"]: c["grade"] for c in load_spec(spec).build_cases().cases}
    grades.write_text("case,grade\ncase_000,c\ncase_001,b\ncase_002,a\n")  # same size, within the same tick
    os.utime(grades, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the same modification time
    second = {c["case_id"]: c["grade"] for c in load_spec(spec).build_cases().cases}
    assert first == {"case_000": 0, "case_001": 1, "case_002": 2}
    assert second == {"case_000": 2, "case_001": 1, "case_002": 0}
    grades.write_text("case,grade\ncase_000,a\ncase_001,z\ncase_002,c\n")
    report = validate_dataset(spec, workers=1, check_files=False)
    assert [(p.check, p.case_id) for p in report.errors] == [("invalid_label", "case_001")]


def test_label_tables_outside_the_root_are_refused_like_images(tmp_path):
    root = layouts.write_csv_dataset(tmp_path, [0, 1])
    (tmp_path / "elsewhere.csv").write_text("case,grade\ncase_000,a\ncase_001,b\n")
    (tmp_path / "cases_elsewhere.csv").write_text((root / "labels.csv").read_text())
    lookup = {"csv": {"file": "../elsewhere.csv", "key_column": "case"}}
    spec = _spec(tmp_path, root, cases={"csv": "../cases_elsewhere.csv"}, tasks=[{**_GRADE, "label": lookup}])
    table = load_spec(spec).build_cases()
    assert [(p.check, Path(p.path).name) for p in table.errors] == [("path_outside_root", "cases_elsewhere.csv")]
    spec = _spec(tmp_path, root, tasks=[{**_GRADE, "label": lookup}])
    problems = load_spec(spec).build_cases().problems
    assert len(problems) == 1  # read once for both cases
    assert problems[0].check == "path_outside_root" and problems[0].path == str(root / "../elsewhere.csv")
    assert f"resolves to {tmp_path / 'elsewhere.csv'}, outside the data root {root}" in problems[0].message
    assert problems[0].fix == "copy the file under the data root (symlinks and '..' may not leave it)"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_an_unreadable_label_table_is_named(tmp_path):
    root = layouts.write_csv_dataset(tmp_path, [0, 1])
    (root / "labels.csv").chmod(0)
    [problem] = load_spec(_spec(tmp_path, root)).build_cases().problems
    assert problem.check == "unreadable_file" and "Permission denied" in problem.message
    assert "chmod" in problem.fix


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


@pytest.mark.parametrize(
    ("delimiter", "header", "found"),
    [(";", True, "semicolons (';')"), ("\t", True, "tabs ('\\t')"), (";", False, "semicolons (';')")],
)
def test_a_foreign_delimiter_gives_one_error_instead_of_one_per_row(tmp_path, delimiter, header, found):
    root = layouts.write_csv_dataset(tmp_path, [0] * 30)
    rows = _rows(root / "labels.csv")[(0 if header else 1) :]
    with open(root / "labels.csv", "w", newline="") as handle:
        csv.writer(handle, delimiter=delimiter).writerows(rows)
    names = ("case", "patient", "label") if header else ("col0", "col1", "col2")
    spec = _spec(
        tmp_path,
        root,
        cases={"csv": "labels.csv", "header": header},
        case_id=f"{{{names[0]}}}",
        group=f"{{{names[1]}}}",
        inputs={"image": f"images/{{{names[0]}}}.png"},
        tasks=[{**_GRADE, "label": {"field": names[2]}}],
    )
    [problem] = load_spec(spec).build_cases().problems
    assert problem.check == "csv_delimiter" and problem.path == str(root / "labels.csv")
    assert found in problem.message and "reads as a single column" in problem.message
    assert "comma-separated" in problem.fix


def test_comma_files_with_other_delimiters_inside_are_read_as_before(tmp_path):
    root = layouts.write_csv_dataset(tmp_path, [0, 1, 2])
    rows = _rows(root / "labels.csv")
    rows[1][1] = "p;0"  # a value holding a semicolon
    with open(root / "labels.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    table = load_spec(_spec(tmp_path, root)).build_cases()
    assert table.problems == [] and table.cases[0]["group"] == "p;0"
    (root / "labels.csv").write_text("case\ncase_000\ncase_001;x\n")  # one column: no delimiter in the header
    problems = load_spec(_spec(tmp_path, root, group=None)).build_cases().problems
    assert problems and "csv_delimiter" not in {p.check for p in problems}


def test_identical_problems_are_reported_once_with_their_count(tmp_path):
    root = layouts.write_csv_dataset(tmp_path, [0] * 30)
    [problem] = load_spec(_spec(tmp_path, root, case_id="{patient_id}")).build_cases().problems
    assert problem.check == "unknown_field"
    assert problem.message.endswith(
        "uses field 'patient_id' but the case has only ['case', 'label', 'patient'] (30 records)"
    )


# ---------------------------------------------------------------------------------------------
# a case without the mask its layout normally has


def _masked_dataset(tmp_path: Path, cases: int, without: set[int], weak: set[int] = frozenset()) -> Path:
    """``cases`` images (empty placeholders: building never opens them), masks for all but ``without``."""
    root = layouts.write_csv_dataset(tmp_path, [0] * cases)
    (root / "masks").mkdir()
    (root / "weak").mkdir()
    for i in range(cases):
        if i not in without:
            (root / "masks" / f"case_{i:03d}.png").touch()
        if i in weak:
            (root / "weak" / f"case_{i:03d}.png").touch()
    lesion = {
        "name": "lesion",
        "kind": "segmentation",
        "classes": ["bg", "lesion"],
        "label": {"mask": "masks/{case}.png"},
        "weak_label": {"mask": "weak/{case}.png", "quality": "weak"},
    }
    return _spec(tmp_path, root, tasks=[_GRADE, lesion])


def _missing(spec: Path) -> list:
    return [p for p in load_spec(spec).build_cases().problems if p.check == "missing_mask"]


def test_an_unreadable_case_table_does_not_call_every_mask_stray(tmp_path):
    spec = _masked_dataset(tmp_path, 5, set())
    root = tmp_path / "generic"
    assert len(load_spec(spec).build_cases().cases) == 5
    (root / "labels.csv").unlink()
    (root / "labels.csv").mkdir()  # e.g. a table that cannot be read
    problems = load_spec(spec).build_cases().problems
    assert [p.check for p in problems] == ["not_a_file"]  # no "delete the stray mask" for the 5 masks


def test_a_case_without_the_mask_every_other_case_has_is_named(tmp_path):
    [problem] = _missing(_masked_dataset(tmp_path, 20, {7}))
    assert problem.case_id == "case_007" and problem.severity.value == "warning"
    assert problem.message == "task 'lesion': no label file (masks/case_007.png), although 19 of 20 cases have one"
    assert problem.path.endswith("masks/case_007.png") and problem.fix.startswith("restore the case's mask")


def test_partly_labelled_data_and_weakly_labelled_cases_get_no_per_case_warning(tmp_path):
    assert _missing(_masked_dataset(tmp_path / "a", 20, {1, 5, 9})) == []  # 15 %: partly labelled on purpose
    weakly_labelled = _masked_dataset(tmp_path / "b", 20, {1, 5, 9}, weak={1, 5})  # case_009 alone lost it
    assert [p.case_id for p in _missing(weakly_labelled)] == ["case_009"]


def test_many_cases_without_a_usual_mask_are_listed_up_to_a_limit(tmp_path):
    without = set(range(0, 250, 10))  # 25 of 250
    problems = _missing(_masked_dataset(tmp_path, 250, without))
    assert [p.case_id for p in problems[:20]] == [f"case_{i:03d}" for i in sorted(without)[:20]]
    assert problems[20].case_id is None
    assert problems[20].message.startswith("... and 5 more cases without a label file of task 'lesion'")
    assert len(problems) == 21


def test_ids_that_are_empty_or_hold_control_characters_are_refused_on_one_line(tmp_path):
    root = layouts.write_csv_dataset(tmp_path, [0, 1])
    with open(root / "labels.csv", "a", newline="") as handle:
        csv.writer(handle).writerows([("  ", "p8", "0"), ("x\r\ny", "p9", "1"), ("z\x85", "p9", "1")])
    table = load_spec(_spec(tmp_path, root)).build_cases()
    assert [c["case_id"] for c in table.cases] == ["case_000", "case_001"]
    assert [p.check for p in table.problems] == ["invalid_case_id"] * 3
    assert ["\n" in str(p) or "\r" in str(p) or "\x85" in str(p) for p in table.problems] == [False] * 3
    assert "case id '  ' from 'labels.csv line 4' is empty" in table.problems[0].message
    assert "U+000D (carriage return)" in table.problems[1].message
    assert "U+0085 (next line)" in table.problems[2].message
