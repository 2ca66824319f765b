"""Stable, frozen splits: a dataset that grows (or shrinks) never moves an earlier case.

Datasets are CSV-listed cases with placeholder images (splitting never opens them). Growth is
simulated by rewriting the case table with cases removed and new ones added (new patients, and new
images of existing patients); the fresh assignment and a run's ``splits.json`` must both keep every
earlier case where it was.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import yaml

from medmtl.cli import main
from medmtl.data.problems import DataError, Severity
from medmtl.data.spec import load_spec
from medmtl.data.splits import read_splits, record_splits

CLASSES = ("a", "b", "c")


def _write(root: Path, rows: list[tuple[str, str, str]], splits: dict[str, str] | None = None) -> Path:
    """``labels.csv`` (case, patient, label[, split]) + empty ``images/<case>.png``; label "" = unlabelled."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    with open(root / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("case", "patient", "label", *(("split",) if splits else ())))
        for case, patient, label in rows:
            (root / "images" / f"{case}.png").touch()
            writer.writerow((case, patient, label, *((splits[case],) if splits else ())))
    return root


def _spec(tmp_path: Path, root: Path, grouped: bool = True, **splits):
    spec = {
        "name": "growing",
        "root": str(root),
        "cases": {"csv": "labels.csv"},
        "case_id": "{case}",
        "inputs": {"image": "images/{case}.png"},
        "tasks": [{"name": "grade", "kind": "multiclass", "classes": list(CLASSES), "label": {"field": "label"}}],
        "splits": {"stratify": "grade", **splits},
    }
    if grouped:
        spec["group"] = "{patient}"
    path = tmp_path / "growing.yaml"
    path.write_text(yaml.safe_dump(spec))
    return load_spec(path)


def _rows(first: int, count: int, per_patient: int = 1, prefix: str = "c") -> list[tuple[str, str, str]]:
    """Cases ``<prefix>0000``...; classes cycle 5:3:2; ``per_patient`` images per patient."""
    pattern = "aaaaabbbcc"
    return [
        (f"{prefix}{i:04d}", f"p{prefix}{i // per_patient:04d}", pattern[(i // per_patient) % 10])
        for i in range(first, first + count)
    ]


def _assignment(table) -> dict[str, str]:
    return {c["case_id"]: c["split"] for c in table.cases}


SETTINGS = {
    "fractions": ({"method": "fractions", "fractions": {"train": 0.7, "val": 0.15, "test": 0.15}}, 1),
    "grouped": ({"method": "fractions", "fractions": {"train": 0.6, "val": 0.2, "test": 0.2}}, 3),
    "kfold": ({"method": "kfold", "folds": 5, "fold": 2}, 2),
    "field": ({"method": "field", "val_fraction": 0.2}, 2),
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_growing_and_shrinking_never_moves_an_earlier_case(tmp_path, name):
    """Without any splits file: the rule alone keeps every surviving case in its split (and fold)."""
    settings, per_patient = SETTINGS[name]
    rows = _rows(0, 150, per_patient)
    field = {
        case: ("test" if int(patient[2:]) % 4 == 0 else "train") for case, patient, _ in _rows(0, 400, per_patient)
    }
    splits = field if name == "field" else None
    root = _write(tmp_path / "before", rows, splits)
    before = _spec(tmp_path, root, **settings).build_cases()
    assert before.errors == []
    folds_before = {c["case_id"]: c.get("fold") for c in before.cases}
    # 20 cases removed, 60 added: new patients, and (grouped) new images of patients already there
    removed = {case for case, _, _ in rows[10:30]}
    grown = [r for r in rows if r[0] not in removed] + _rows(150, 60, per_patient)
    if per_patient > 1:
        grown.append(("late_image", rows[0][1], rows[0][2]))
        field["late_image"] = field[rows[0][0]]
    root = _write(tmp_path / "after", grown, splits)
    after = _spec(tmp_path, root, **settings).build_cases()
    assert after.errors == []
    now = _assignment(after)
    kept = {case: split for case, split in _assignment(before).items() if case not in removed}
    assert {case: now[case] for case in kept} == kept
    assert set(now.values()) == ({"train", "val"} if name == "kfold" else {"train", "val", "test"})
    if name == "kfold":
        assert all(c["fold"] == folds_before[c["case_id"]] for c in after.cases if c["case_id"] in kept)
    if per_patient > 1:
        assert now["late_image"] == now[rows[0][0]]
        patients = defaultdict(set)
        for case in after.cases:
            patients[case["group"]].add(case["split"])
        assert all(len(s) == 1 for s in patients.values())


def test_class_proportions_are_kept_within_binomial_noise(tmp_path):
    """600 patients (2 images each), 5:3:2 classes: every (split, class) count within 3.5 sd of n*f."""
    rows = _rows(0, 1200, per_patient=2)
    table = _spec(tmp_path, _write(tmp_path / "data", rows)).build_cases()
    fractions = {"train": 0.7, "val": 0.15, "test": 0.15}
    patients = {(c["group"], c["split"], c["grade"]) for c in table.cases}
    per_split = Counter((split, grade) for _, split, grade in patients)
    per_class = Counter(grade for _, _, grade in patients)
    assert sorted(per_class.values()) == [120, 180, 300]
    for split, fraction in fractions.items():
        for grade, total in per_class.items():
            spread = 3.5 * math.sqrt(total * fraction * (1 - fraction))
            assert abs(per_split[split, grade] - fraction * total) <= spread, (split, grade, per_split)


def test_kfold_folds_are_balanced_within_binomial_noise_and_disjoint(tmp_path):
    rows = _rows(0, 500)
    root = _write(tmp_path / "data", rows)
    val_of: dict[str, list[int]] = defaultdict(list)
    for fold in range(5):
        table = _spec(tmp_path, root, method="kfold", folds=5, fold=fold).build_cases()
        val = [c["case_id"] for c in table.cases if c["split"] == "val"]
        assert abs(len(val) - 100) <= 3.5 * math.sqrt(500 * 0.2 * 0.8)
        for case in val:
            val_of[case].append(fold)
    assert len(val_of) == 500 and all(len(folds) == 1 for folds in val_of.values())


def test_cv_folds_split_the_development_cases_and_never_touch_test(tmp_path):
    """``cv_folds``: every development case is validation in exactly one fold, patients stay whole, test is fixed."""
    rows = _rows(0, 600, per_patient=2)
    root = _write(tmp_path / "data", rows)
    base = {"method": "fractions", "fractions": {"train": 0.7, "val": 0.1, "test": 0.2}}
    plain = _assignment(_spec(tmp_path, root, **base).build_cases())
    test = {case for case, split in plain.items() if split == "test"}
    development = set(plain) - test
    val_of: dict[str, list[int]] = defaultdict(list)
    for fold in range(4):
        table = _spec(tmp_path, root, **base, cv_folds=4, cv_fold=fold).build_cases()
        assignment = _assignment(table)
        assert {case for case, split in assignment.items() if split == "test"} == test
        assert {split for case, split in assignment.items() if case in development} == {"train", "val"}
        val = [c for c in table.cases if c["split"] == "val"]
        assert all(c["fold"] == fold for c in val)
        assert abs(len(val) - len(development) / 4) <= 3.5 * math.sqrt(len(development) * 0.25 * 0.75)
        patients: dict[str, set[str]] = defaultdict(set)
        for c in table.cases:
            patients[c["group"]].add(c["split"])
        assert all(len(splits) == 1 for splits in patients.values())
        for c in val:
            val_of[c["case_id"]].append(fold)
    assert set(val_of) == development and all(len(folds) == 1 for folds in val_of.values())


def test_cv_folds_are_refused_with_kfold_and_out_of_range(tmp_path):
    root = _write(tmp_path / "data", _rows(0, 20))
    with pytest.raises(ValueError, match="method 'kfold' already folds"):
        _spec(tmp_path, root, method="kfold", cv_folds=3)
    with pytest.raises(ValueError, match="cv_fold 3 does not exist with 3 folds"):
        _spec(tmp_path, root, method="fractions", cv_folds=3, cv_fold=3)


@pytest.mark.parametrize("seed", range(6))
def test_a_tiny_dataset_still_gets_every_split(tmp_path, seed):
    """3 to 5 patients: the deterministic fallback fills a split the hash left empty, never emptying another."""
    for count in (3, 4, 5):
        rows = _rows(0, count)
        settings = {"seed": seed, "fractions": {"train": 0.6, "val": 0.2, "test": 0.2}}
        spec = _spec(tmp_path, _write(tmp_path / f"data{count}", rows), **settings)
        table = spec.build_cases()
        assert set(_assignment(table).values()) == {"train", "val", "test"}, (count, _assignment(table))
        assert _assignment(spec.build_cases()) == _assignment(table)


# ---------------------------------------------------------------------------------------------
# a run's splits.json is the source of truth


@pytest.fixture
def frozen(tmp_path):
    """A grouped dataset of 60 patients (2 images each) and the splits.json a first run wrote."""
    rows = _rows(0, 120, per_patient=2)
    root = _write(tmp_path / "data", rows)
    spec = _spec(tmp_path, root)
    splits_file = tmp_path / "run" / "splits.json"
    table = spec.build_cases(splits_file=splits_file)
    assert not splits_file.exists() and table.problems == []
    assert record_splits(table.cases, splits_file) == 120
    return {"rows": rows, "root": root, "spec": spec, "file": splits_file, "first": _assignment(table)}


def _grow(frozen, extra: list[tuple[str, str, str]], drop: int = 0) -> Path:
    """The dataset with its first ``drop`` cases removed and ``extra`` added, in a new folder (its root)."""
    frozen["version"] = frozen.get("version", 0) + 1
    return _write(frozen["root"].parent / f"v{frozen['version']}", frozen["rows"][drop:] + extra)


def test_recorded_splits_win_over_the_rule(frozen):
    """A file from an older medmtl (another rule) is kept case by case."""
    recorded = read_splits(frozen["file"])
    swapped = {"train": "test", "test": "train", "val": "val"}
    older = {case: swapped[split] for case, split in recorded.items()}
    frozen["file"].write_text(
        json.dumps({s: [c for c, x in older.items() if x == s] for s in ("train", "val", "test")})
    )
    table = frozen["spec"].build_cases(splits_file=frozen["file"])
    assert table.problems == []
    assert _assignment(table) == older


def test_new_cases_are_excluded_by_default_and_reported(frozen, caplog):
    root = _grow(frozen, _rows(200, 8, per_patient=2, prefix="n"), drop=4)
    before = frozen["file"].read_bytes()
    table = frozen["spec"].build_cases(root=root, splits_file=frozen["file"])
    now = _assignment(table)
    new_ids = sorted(c for c in now if c.startswith("n"))
    assert {now[c] for c in new_ids} == {"new"}
    assert {c: now[c] for c in now if c in frozen["first"]} == {c: s for c, s in frozen["first"].items() if c in now}
    warnings = {p.check: p for p in table.problems}
    assert set(warnings) == {"new_cases", "recorded_cases_missing"}
    assert all(p.severity == Severity.WARNING and p.path == str(frozen["file"]) for p in table.problems)
    assert "8 new labelled case(s)" in warnings["new_cases"].message and new_ids[0] in warnings["new_cases"].message
    assert "new_cases train" in warnings["new_cases"].fix
    assert "4 case(s) recorded" in warnings["recorded_cases_missing"].message
    assert "new_cases" in caplog.text  # bundles show it through the log
    assert [c["case_id"] for c in table.datalist("new")] == new_ids
    assert not {c["case_id"] for c in table.datalist("test")} & set(new_ids)
    assert len(table.datalist("all")) == len(now)
    assert record_splits(table.cases, frozen["file"]) == 0
    assert frozen["file"].read_bytes() == before  # vanished cases stay, excluded ones are not recorded


@pytest.mark.parametrize("option", ["train", "val", "test", "assign"])
def test_new_cases_go_where_the_user_says_and_extend_the_file(frozen, option):
    extra = _rows(200, 40, per_patient=2, prefix="n")
    root = _grow(frozen, extra, drop=6)
    table = frozen["spec"].build_cases(root=root, splits_file=frozen["file"], new_cases=option)
    now = _assignment(table)
    new = {c: now[c] for c, _, _ in extra}
    if option == "assign":
        assert set(new.values()) == {"train", "val", "test"}
    else:
        assert set(new.values()) == {option}
    message = next(p.message for p in table.problems if p.check == "new_cases")
    assert f"new_cases='{option}'" in message and "40 new labelled case(s)" in message
    assert record_splits(table.cases, frozen["file"]) == 40
    written = read_splits(frozen["file"])
    assert written == {**frozen["first"], **new}  # the 6 vanished cases are still there
    again = frozen["spec"].build_cases(root=root, splits_file=frozen["file"])  # default option: nothing new now
    assert [p for p in again.problems if p.check == "new_cases"] == []
    assert _assignment(again) == now


@pytest.mark.parametrize("option", ["exclude", "train"])
def test_a_new_image_of_a_recorded_patient_joins_its_patient(frozen, option):
    test_case = next(c for c, s in frozen["first"].items() if s == "test")
    patient = next(p for c, p, _ in frozen["rows"] if c == test_case)
    root = _grow(frozen, [("late_image", patient, "a")])
    table = frozen["spec"].build_cases(root=root, splits_file=frozen["file"], new_cases=option)
    assert _assignment(table)["late_image"] == "test"
    (problem,) = table.problems
    assert problem.check == "new_cases" and "join that patient's split" in problem.message
    assert "late_image -> test" in problem.message
    assert record_splits(table.cases, frozen["file"]) == 1 and read_splits(frozen["file"])["late_image"] == "test"


def test_a_recorded_unlabelled_case_that_gets_labels_is_new(tmp_path):
    rows = [*_rows(0, 30), ("u1", "pu1", ""), ("u2", "pu2", "")]
    root = _write(tmp_path / "data", rows)
    spec = _spec(tmp_path, root)
    splits_file = tmp_path / "splits.json"
    record_splits(spec.build_cases(splits_file=splits_file).cases, splits_file)
    assert read_splits(splits_file)["u1"] == "unlabelled"
    root = _write(tmp_path / "later", [*rows[:-2], ("u1", "pu1", "b"), ("u2", "pu2", ""), ("u3", "pu3", "")])
    table = spec.build_cases(root=root, splits_file=splits_file)
    now = _assignment(table)
    assert (now["u1"], now["u2"], now["u3"]) == ("new", "unlabelled", "unlabelled")
    assert "recorded as unlabelled and labelled since" in table.problems[0].message
    table = spec.build_cases(root=root, splits_file=splits_file, new_cases="val")
    assert record_splits(table.cases, splits_file) == 2  # u1 out of 'unlabelled', u3 recorded
    assert (read_splits(splits_file)["u1"], read_splits(splits_file)["u3"]) == ("val", "unlabelled")


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe junk", "not valid JSON"),
        (b'["c0000"]', "holds a JSON list"),
        (b'{"train": ["c0000"], "holdout": ["c0001"]}', "unknown split name(s) ['holdout']"),
        (
            b'{"train": ["c0000", "c0001"], "test": ["c0001"]}',
            "1 case id(s) in two splits (first: c0001 (train, test))",
        ),
        (b'{"train": "c0000"}', "split 'train' is not a list of case id strings"),
        (b'{"train": [1, 2]}', "split 'train' is not a list of case id strings"),
        (b'{"train": ["c0000"], "train": ["c0001"]}', "split 'train' appears twice"),
    ],
)
def test_a_malformed_splits_file_is_one_clear_error(tmp_path, content, says):
    spec = _spec(tmp_path, _write(tmp_path / "data", _rows(0, 10)))
    splits_file = tmp_path / "splits.json"
    splits_file.write_bytes(content)
    table = spec.build_cases(splits_file=splits_file)
    (error,) = table.errors
    assert error.check == "invalid_splits_file" and error.path == str(splits_file)
    assert says in error.message
    assert "delete it to assign splits afresh" in error.fix
    with pytest.raises(DataError, match="invalid_splits_file"):
        table.datalist("train")
    with pytest.raises(DataError, match=str(splits_file)):
        read_splits(splits_file)
    with pytest.raises(DataError):
        record_splits(table.cases, splits_file)
    assert splits_file.read_bytes() == content


def test_a_splits_file_that_is_a_folder_is_reported(tmp_path):
    spec = _spec(tmp_path, _write(tmp_path / "data", _rows(0, 10)))
    (tmp_path / "splits.json").mkdir()
    (error,) = spec.build_cases(splits_file=tmp_path / "splits.json").errors
    assert "cannot read the splits file" in error.message


def test_the_splits_file_is_readable_by_others_like_the_run_s_other_files(tmp_path):
    spec = _spec(tmp_path, _write(tmp_path / "data", _rows(0, 10)))
    splits_file = tmp_path / "run" / "splits.json"
    record_splits(spec.build_cases(splits_file=splits_file).cases, splits_file)
    assert splits_file.stat().st_mode & 0o777 == 0o644


def test_a_splits_file_that_is_a_pipe_is_refused_unopened(tmp_path):
    spec = _spec(tmp_path, _write(tmp_path / "data", _rows(0, 10)))
    os.mkfifo(tmp_path / "splits.json")  # opening it would wait for a writer forever
    (error,) = spec.build_cases(splits_file=tmp_path / "splits.json").errors
    assert error.check == "invalid_splits_file"
    assert "not a regular file (a pipe, device or socket), not opened" in error.message


def test_unknown_new_cases_option_and_conflicting_record_are_refused(frozen):
    with pytest.raises(ValueError, match="new_cases is 'later'"):
        frozen["spec"].build_cases(splits_file=frozen["file"], new_cases="later")
    other = _spec(frozen["file"].parent, frozen["root"], seed=7).build_cases()  # not built from the file
    with pytest.raises(DataError, match="splits_file_conflict"):
        record_splits(other.cases, frozen["file"])
    assert read_splits(frozen["file"]) == frozen["first"]


def test_make_splits_keeps_an_existing_file(frozen, capsys):
    spec_path = frozen["spec"].spec_path
    out = str(frozen["file"])
    root = str(_grow(frozen, _rows(200, 4, prefix="n")))
    assert main(["make-splits", str(spec_path), "--root", root, "--out", out]) == 0
    assert "kept" in capsys.readouterr().out
    assert read_splits(out) == frozen["first"]
    assert main(["make-splits", str(spec_path), "--root", root, "--out", out, "--new-cases", "train"]) == 0
    assert "added 4 case(s)" in capsys.readouterr().out
    assert read_splits(out) == {**frozen["first"], **{f"n{i:04d}": "train" for i in range(200, 204)}}
    frozen["file"].write_text("{broken")
    assert main(["make-splits", str(spec_path), "--root", root, "--out", out]) == 1
    assert "invalid_splits_file" in capsys.readouterr().err
