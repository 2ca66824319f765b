"""The demo-data generator: layout the demo specs describe, determinism, partial labels, real signal."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from medmtl.cli import main as cli_main
from medmtl.data.demo import (
    DEMO_2D_CASES,
    DEMO_3D_AFFINE,
    DEMO_3D_CASES,
    LARGE_LESION_ML,
    generate_demo_data,
)
from medmtl.data.spec import load_spec

SPECS = Path(__file__).resolve().parents[2] / "data_specs"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    return generate_demo_data(tmp_path_factory.mktemp("demo"), seed=0)


def _rows(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _nii(path: Path) -> nib.Nifti1Image:
    return nib.load(str(path))


def test_2d_layout(demo):
    root = Path(demo["demo2d"]["root"])
    rows = _rows(root / "labels.csv")
    assert list(rows[0]) == ["case_id", "patient_id", "malignant"]
    assert len(rows) == DEMO_2D_CASES == demo["demo2d"]["cases"]
    assert len({r["patient_id"] for r in rows}) == demo["demo2d"]["groups"] == DEMO_2D_CASES // 3
    image = _png(root / "images" / "case_000.png")
    assert image.shape == (64, 64) and image.dtype == np.uint8 and image.std() > 10  # textured, not flat
    masks = sorted((root / "masks").glob("*.png"))
    values = set(np.unique(np.concatenate([_png(m).ravel() for m in masks])).tolist())
    assert values == {0, 255}
    empty = [m for m in masks if not _png(m).any()]
    assert len(empty) == demo["demo2d"]["empty_masks"] > 0
    for m in empty:  # no lesion: class 0 wherever the class is known
        assert next(r for r in rows if r["case_id"] == m.stem)["malignant"] in ("0", "")
    missing_class = {r["case_id"] for r in rows if r["malignant"] == ""}
    missing_mask = {r["case_id"] for r in rows} - {m.stem for m in masks}
    assert missing_class and missing_mask and missing_class - missing_mask and missing_mask - missing_class
    assert len(missing_class & missing_mask) == demo["demo2d"]["unlabelled"] > 0


def test_3d_layout(demo):
    root = Path(demo["demo3d"]["root"])
    rows = _rows(root / "labels.csv")
    assert list(rows[0]) == ["case_id", "subject_id", "image", "large"]
    assert len(rows) == DEMO_3D_CASES == demo["demo3d"]["cases"]
    image = _nii(root / rows[0]["image"])
    assert image.shape == (32, 32, 32) and image.get_data_dtype() == np.float32
    np.testing.assert_allclose(image.affine, DEMO_3D_AFFINE)
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
    assert image.header.get_zooms() == (1.5, 1.5, 1.5)
    strong = sorted((root / "labelsTr").glob("*.nii.gz"))
    weak = sorted((root / "labelsWeak").glob("*.nii.gz"))
    assert 0 < len(strong) < len(weak) < len(rows)  # strong missing for some, weak for unlabelled only
    for path in strong[:3] + weak[:3]:
        mask = _nii(path)
        assert set(np.unique(np.asarray(mask.dataobj)).tolist()) <= {0, 1}
        np.testing.assert_allclose(mask.affine, DEMO_3D_AFFINE)
    # `large` is the strong mask's volume above LARGE_LESION_ML
    voxel_ml = 1.5**3 / 1000
    for row in rows:
        path = root / "labelsTr" / f"{row['case_id']}.nii.gz"
        if row["large"] != "" and path.exists():
            volume = float(np.asarray(_nii(path).dataobj).sum()) * voxel_ml
            assert int(row["large"]) == int(volume > LARGE_LESION_ML)


def test_same_seed_same_files_other_seed_differs(tmp_path):
    first = generate_demo_data(tmp_path / "a", num_cases=12, seed=3)
    second = generate_demo_data(tmp_path / "b", num_cases=12, seed=3)
    other = generate_demo_data(tmp_path / "c", num_cases=12, seed=4)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) > 40
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    image = Path("demo3d/imagesTr/case_000.nii.gz")
    a, b = (np.asarray(_nii(tmp_path / d / image).dataobj) for d in ("a", "b"))
    np.testing.assert_array_equal(a, b)
    png = Path("demo2d/images/case_000.png")
    assert not np.array_equal(_png(tmp_path / "a" / png), _png(tmp_path / "c" / png))
    assert first["demo2d"]["labels"] == second["demo2d"]["labels"]
    assert other["demo2d"]["cases"] == 12


def test_regenerating_replaces_old_files(tmp_path):
    generate_demo_data(tmp_path, num_cases=20)
    summary = generate_demo_data(tmp_path, num_cases=10)
    assert len(list((tmp_path / "demo2d" / "images").glob("*.png"))) == 10
    table = load_spec(SPECS / "demo3d.yaml", root=summary["demo3d"]["root"]).build_cases()
    assert not table.problems and len(table.cases) == 10


@pytest.mark.parametrize(
    ("name", "spec_file", "tasks"),
    [("demo2d", "demo.yaml", ["lesion", "malignant"]), ("demo3d", "demo3d.yaml", ["blob", "large"])],
)
def test_specs_build_without_problems(demo, name, spec_file, tasks):
    assert demo[name]["spec"] == str(SPECS / spec_file)
    spec = load_spec(demo[name]["spec"], root=demo[name]["root"])
    assert spec.task_names == tasks
    assert spec.task(tasks[0]).kind.value == "segmentation" and spec.task(tasks[1]).kind.value == "binary"
    assert spec.task(tasks[1]).pos_weight == "auto"
    table = spec.build_cases()
    assert table.problems == []
    assert table.label_counts() == demo[name]["labels"]
    splits = table.split_counts()
    assert splits["unlabelled"] == demo[name]["unlabelled"]
    assert {"train", "val", "test"} <= set(splits)
    counts = table.label_counts("train")[tasks[1]]  # splits are hashed per patient: classes in expectation
    assert counts["negative"] > 0 and counts["positive"] > 0, counts
    groups: dict[str, set[str]] = {}
    for case in table.cases:
        if case["split"] != "unlabelled":
            groups.setdefault(case["group"], set()).add(case["split"])
    assert all(len(s) == 1 for s in groups.values())
    assert max(len([c for c in table.cases if c["group"] == g]) for g in groups) > 1
    assert all(w > 0 for w in table.pos_weights()[tasks[1]])


def test_3d_weak_labels(demo):
    spec = load_spec(SPECS / "demo3d.yaml", root=demo["demo3d"]["root"])
    assert spec.task("blob").weak_label.quality.value == "weak"
    strong = spec.datalist("all")
    weak = spec.datalist("all", label_quality="weak")
    assert sum(c["blob_present"] for c in weak) > sum(c["blob_present"] for c in strong)
    assert all("labelsWeak" in c["blob"] for c in weak if c["blob_present"])
    # the weak label is noisy but informative: Dice with the strong one on lesion cases
    dices = []
    for case in strong:
        if case["blob_present"] and case["case_id"] in {c["case_id"] for c in weak if c["blob_present"]}:
            s = np.asarray(_nii(Path(case["blob"])).dataobj) > 0
            w = np.asarray(_nii(Path(case["blob"].replace("labelsTr", "labelsWeak"))).dataobj) > 0
            if s.any():
                dices.append(2 * (s & w).sum() / (s.sum() + w.sum()))
    assert len(dices) >= 5 and 0.6 < float(np.mean(dices)) < 0.98


def test_default_root_from_environment(demo, monkeypatch):
    monkeypatch.setenv("MEDMTL_DEMO_DIR", demo["out"])
    for name, spec_file in (("demo2d", "demo.yaml"), ("demo3d", "demo3d.yaml")):
        spec = load_spec(SPECS / spec_file)
        assert spec.resolved_root() == Path(demo[name]["root"])
    monkeypatch.delenv("MEDMTL_DEMO_DIR")
    assert load_spec(SPECS / "demo.yaml").resolved_root() == (SPECS.parent / "demo_data" / "demo2d").resolve()


def test_2d_labels_carry_signal(demo):
    """Hand-made features separate the classes: the images, not only the file names, hold the labels."""
    root = Path(demo["demo2d"]["root"])
    darkest, labels = [], []  # every case with a class label: image only
    contrast, contrast_labels = [], []  # ... that also has a mask: outside minus inside mean
    shape, shape_labels = [], []  # ... whose mask is not empty: perimeter^2 / area
    for row in _rows(root / "labels.csv"):
        if row["malignant"] == "":
            continue
        label = int(row["malignant"])
        image = _png(root / "images" / f"{row['case_id']}.png").astype(float)
        darkest.append(-np.percentile(ndimage.gaussian_filter(image, 2.0), 1))
        labels.append(label)
        mask_path = root / "masks" / f"{row['case_id']}.png"
        if not mask_path.exists():
            continue
        mask = _png(mask_path) > 0
        contrast.append(image[~mask].mean() - (image[mask].mean() if mask.any() else image.mean()))
        contrast_labels.append(label)
        if mask.any():
            border = mask & ~ndimage.binary_erosion(mask)
            shape.append(border.sum() ** 2 / mask.sum())
            shape_labels.append(label)
    for y, x in ((labels, darkest), (contrast_labels, contrast), (shape_labels, shape)):
        assert 0 < sum(y) < len(y) and len(y) >= 20
        assert roc_auc_score(y, x) > 0.8


def test_3d_labels_carry_signal(demo):
    root = Path(demo["demo3d"]["root"])
    feature, labels = [], []
    for row in _rows(root / "labels.csv"):
        if row["large"] == "":
            continue
        volume = np.asarray(_nii(root / row["image"]).dataobj)
        feature.append(int((ndimage.gaussian_filter(volume, 1.0) > 0.8).sum()))  # bright voxels
        labels.append(int(row["large"]))
    assert 0 < sum(labels) < len(labels)
    assert roc_auc_score(labels, feature) > 0.8


def test_too_few_cases_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="at least 8 cases"):
        generate_demo_data(tmp_path, num_cases=3)


def test_cli_demo_data(tmp_path, capsys):
    assert cli_main(["demo-data", str(tmp_path / "out"), "--cases", "9", "--seed", "1", "--json"]) == 0
    output = capsys.readouterr().out
    assert '"cases": 9' in output
    assert len(list((tmp_path / "out" / "demo3d" / "imagesTr").glob("*.nii.gz"))) == 9
