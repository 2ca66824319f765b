"""``medmtl validate``: exit codes, every problem printed, a label table on clean data, ``--json``."""

from __future__ import annotations

import json

import validate_fixtures as vf

from medmtl.cli import main


def test_errors_exit_1_and_print_every_problem(tmp_path, capsys):
    dataset = vf.nifti_dataset(tmp_path, faults=True)
    code = main(["validate", str(dataset.spec), "--workers", "1"])
    out = capsys.readouterr().out
    assert code == 1
    lines = out.splitlines()
    for expected in dataset.expected:
        matching = [
            line
            for line in lines
            if line.startswith(f"[{expected.severity}] {expected.check}:")
            and (expected.case_id is None or f"case {expected.case_id}" in line)
            and (expected.path_end is None or expected.path_end in line)
        ]
        assert matching, f"{expected} not printed:\n{out}"
    assert any(line.startswith("summary: ") and "2 x path_outside_root (error)" in line for line in lines)
    assert lines[-1].startswith("FAILED: 16 error(s), 1 warning(s)")
    assert "task tumour:" not in out  # no label table while there are errors


def test_clean_exit_0_with_label_table(tmp_path, capsys):
    dataset = vf.png_dataset(tmp_path)
    moved = tmp_path / "elsewhere"
    dataset.root.rename(moved)
    code = main(["validate", str(dataset.spec), "--root", str(moved), "--workers", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith(f"toy2d: 5 cases under {moved}, 11 files checked")
    start = lines.index("task diagnosis:")
    assert lines[start + 1].split() == ["split", "labelled", "missing", "normal", "benign", "malignant"]
    assert lines[start + 2].split() == ["train", "5", "0", "1", "2", "2"]
    assert lines[start + 3].split() == ["all", "5", "0", "1", "2", "2"]
    start = lines.index("task lesion:")
    assert lines[start + 3].split() == ["all", "5", "0", "5", "4"]
    assert lines[-1] == "OK: no errors, 1 warning(s)"


def test_json_parses(tmp_path, capsys):
    dataset = vf.png_dataset(tmp_path, faults=True)
    code = main(["validate", str(dataset.spec), "--workers", "1", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 1
    assert data["ok"] is False
    assert data["num_errors"] == len([e for e in dataset.expected if e.severity == "error"])
    checks = {(p["check"], p["case_id"]) for p in data["problems"]}
    assert ("shape_mismatch", "benign_5") in checks and ("mask_shape_mismatch", "malignant_3") in checks
    assert data["empty_masks"] == {"lesion": ["normal_1"]}


def test_spec_problems_exit_1(tmp_path, capsys):
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: bad\nspatial_dims: 4\nextra: 1\ncases: {glob: '*.png'}\ntasks: []\n")
    code = main(["validate", str(spec), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 1
    assert {p["check"] for p in data["problems"]} >= {"unknown_key", "invalid_value"}
    assert all(p["path"] == str(spec) for p in data["problems"])


def test_no_files_flag(tmp_path, capsys):
    dataset = vf.png_dataset(tmp_path, faults=True)
    code = main(["validate", str(dataset.spec), "--no-files"])
    out = capsys.readouterr().out
    assert code == 0, out  # the planted faults are all inside files
    assert "0 files checked" in out and "--no-files" in out
