"""The dataset fingerprint on small datasets written here in the real layouts, checked against numpy.

BUSI-style PNGs (lesions of known size, one image with two lesions in two mask files, one with two
lesions in one mask, an empty "normal" mask, an RGB-saved grey image), brain-style NIfTI volumes with
known non-1 spacings and orientations (one stored with permuted axes, one unlabelled), MRNet's
multi-view ``.npy`` stacks; the cache (nothing read again, a changed file read again, a changed label
table taken afresh), unreadable files, and the real BUSI data when present.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from layouts import MRNET_LABELS, MRNET_SIZE, MRNET_VIEWS, mrnet_slices, write_mrnet
from PIL import Image

import medmtl.planning.case_stats as case_stats
from medmtl.data.problems import DataError
from medmtl.planning import (
    FINGERPRINT_VERSION,
    FingerprintError,
    compute_fingerprint,
    read_fingerprint,
    write_fingerprint,
)

ROWS, COLS = 40, 50


def _expected(values: np.ndarray) -> dict[str, float]:
    values = np.asarray(values, dtype=np.float64).ravel()
    low, mid, high = np.percentile(values, [0.5, 50, 99.5])
    return {
        "p00_5": low,
        "p50": mid,
        "p99_5": high,
        "mean": values.mean(),
        "std": values.std(),
        "min": values.min(),
        "max": values.max(),
    }


def _assert_stats(found: dict, values: np.ndarray) -> None:
    for key, value in _expected(values).items():
        assert found[key] == pytest.approx(value, rel=1e-5, abs=1e-4), key


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _box(rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros((ROWS, COLS), np.uint8)
    mask[rows, cols] = 255
    return mask


# ---------------------------------------------------------------------------------------------
# BUSI layout: 2D PNG


@pytest.fixture
def busi(tmp_path: Path) -> tuple[Path, dict]:
    """Four cases; per case the grey image (rows, cols) and the union mask the fingerprint must find."""
    root = tmp_path / "Dataset_BUSI_with_GT"
    rng = np.random.default_rng(0)
    masks = {
        "benign (1)": [_box(slice(5, 15), slice(10, 18))],  # one lesion, 10 x 8 = 80 px
        "benign (2)": [_box(slice(2, 6), slice(2, 6)), _box(slice(30, 35), slice(40, 46))],  # two files
        "malignant (1)": [_box(slice(5, 10), slice(5, 10)) | _box(slice(20, 30), slice(30, 40))],  # 2 in 1 file
        "normal (1)": [np.zeros((ROWS, COLS), np.uint8)],
    }
    truth = {}
    for stem, files in masks.items():
        cls = stem.split()[0]
        image = rng.integers(0, 256, size=(ROWS, COLS), dtype=np.uint8)
        stored = np.repeat(image[..., None], 3, axis=-1) if cls == "malignant" else image  # grey saved as RGB
        _png(root / cls / f"{stem}.png", stored)
        for index, mask in enumerate(files):
            _png(root / cls / f"{stem}_mask{'' if index == 0 else f'_{index}'}.png", mask)
        case_id = f"{cls}_{stem.split('(')[1].rstrip(')')}"
        truth[case_id] = {"image": image, "mask": np.logical_or.reduce(files) > 0}
    return root, truth


def _busi_fingerprint(specs_dir: Path, root: Path, **kwargs) -> dict:
    return compute_fingerprint(specs_dir / "breast_ultrasound.yaml", root, workers=1, progress=False, **kwargs)


def test_busi_cases_match_numpy(busi, specs_dir: Path) -> None:
    root, truth = busi
    fp = _busi_fingerprint(specs_dir, root)
    assert fp["version"] == FINGERPRINT_VERSION
    assert fp["num_cases"] == 4 and set(fp["cases"]) == set(truth)
    assert fp["spec"]["modality"] == "US" and fp["spec"]["spatial_dims"] == 2
    assert fp["root"] == str(root.resolve())
    for case_id, known in truth.items():
        case = fp["cases"][case_id]
        image = case["inputs"]["image"]
        assert image["shape"] == [COLS, ROWS]  # MONAI layout: (width, height)
        assert image["spacing"] == [1.0, 1.0] and image["orientation"] is None
        assert image["channels"] == 1
        assert image["stored_channels"] == (3 if case_id.startswith("malignant") else 1)
        _assert_stats(image["intensity_image"], known["image"])
        if known["mask"].any():
            assert image["intensity"]["region"] == "foreground"
            _assert_stats(image["intensity"], known["image"][known["mask"]])
        else:
            assert image["intensity"]["region"] == "image"
            _assert_stats(image["intensity"], known["image"])
        lesion = case["tasks"]["lesion"]
        voxels = int(known["mask"].sum())
        assert lesion["labelled"] is True
        assert lesion["foreground_voxels"] == voxels
        assert lesion["foreground_fraction"] == pytest.approx(voxels / (ROWS * COLS))
        assert lesion["class_voxels"] == [ROWS * COLS - voxels, voxels]
        assert lesion["classes"] == ([0, 1] if voxels else [0])
    tasks = fp["cases"]
    assert [tasks[c]["tasks"]["lesion"]["components"] for c in ("benign_1", "benign_2", "malignant_1", "normal_1")] == [
        1,
        2,
        2,
        0,
    ]
    assert fp["cases"]["benign_2"]["tasks"]["diagnosis"] == {"labelled": True, "label": 1}
    assert len(fp["cases"]["benign_2"]["files"]) == 3  # image and both mask files, by digest
    # the summary
    summary = fp["inputs"]["image"]
    assert summary["median_shape"] == [COLS, ROWS] and summary["median_spacing"] == [1.0, 1.0]
    assert summary["orientations"] == {"none": 4} and summary["anisotropy"] == 1.0
    lesioned = [c for c in truth if truth[c]["mask"].any()]
    assert summary["intensity"]["region"] == "foreground" and summary["intensity"]["cases"] == 3
    assert summary["intensity"]["p50"] == pytest.approx(
        np.median([np.median(truth[c]["image"][truth[c]["mask"]]) for c in lesioned])
    )
    assert summary["intensity"]["max"] == max(truth[c]["image"][truth[c]["mask"]].max() for c in lesioned)
    lesion = fp["tasks"]["lesion"]
    assert lesion["labelled"] == 4 and lesion["class_counts"] == [4, 3] and lesion["empty"] == 1
    assert lesion["components"] == {"median": 2.0, "max": 2}
    fractions = [truth[c]["mask"].mean() for c in lesioned]
    assert lesion["foreground_fraction"]["median"] == pytest.approx(np.median(fractions))
    assert lesion["foreground_fraction"]["p05"] == pytest.approx(np.percentile(fractions, 5))
    diagnosis = fp["tasks"]["diagnosis"]
    assert diagnosis["class_counts"] == [1, 2, 1] and diagnosis["num_classes"] == 3 and diagnosis["labelled"] == 4
    assert sum(fp["splits"].values()) == 4


def test_cache_reads_nothing_unchanged_and_rereads_a_changed_file(busi, specs_dir: Path, tmp_path, monkeypatch) -> None:
    root, truth = busi
    first = _busi_fingerprint(specs_dir, root)
    path = write_fingerprint(first, tmp_path / "out" / "fingerprint.json")
    assert read_fingerprint(path) == json.loads(json.dumps(first))
    read: list[tuple[str, ...]] = []
    real_load = case_stats._load

    def spy(paths):
        read.append(paths)
        return real_load(paths)

    monkeypatch.setattr(case_stats, "_load", spy)
    second = _busi_fingerprint(specs_dir, root, cache=path)
    assert read == [] and second["cache"] == {"reused": 4, "read": 0}
    assert second["cases"] == first["cases"] and second["inputs"] == first["inputs"]
    assert second["tasks"] == first["tasks"]
    # one image changes: only its case is read again, and its figures follow the new pixels
    brighter = np.full((ROWS, COLS), 200, np.uint8)
    _png(root / "benign" / "benign (1).png", brighter)
    third = _busi_fingerprint(specs_dir, root, cache=path)
    assert third["cache"] == {"reused": 3, "read": 1}
    assert sorted(Path(p[0]).name for p in read) == ["benign (1).png", "benign (1)_mask.png"]
    assert third["cases"]["benign_1"]["inputs"]["image"]["intensity"]["p50"] == 200.0
    assert third["cases"]["benign_2"] == first["cases"]["benign_2"]
    # a cache written by another version is not used
    stale = {**first, "version": FINGERPRINT_VERSION + 1}
    (tmp_path / "stale.json").write_text(json.dumps(stale))
    read.clear()
    assert _busi_fingerprint(specs_dir, root, cache=tmp_path / "stale.json")["cache"]["reused"] == 0
    assert sum(len(paths) for paths in read) == 9  # 4 images and 5 mask files


def test_unreadable_files_are_all_reported(busi, specs_dir: Path) -> None:
    root, _ = busi
    image = root / "benign" / "benign (2).png"
    image.write_bytes(image.read_bytes()[:60])  # truncated
    (root / "normal" / "normal (1)_mask.png").write_bytes(b"")
    with pytest.raises(DataError) as caught:
        _busi_fingerprint(specs_dir, root)
    problems = caught.value.problems
    assert {p.case_id for p in problems} == {"benign_2", "normal_1"}
    assert {Path(p.path).name for p in problems} == {"benign (2).png", "normal (1)_mask.png"}
    assert "cannot read input 'image'" in str(caught.value)


def test_read_fingerprint_refuses_other_files(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(FingerprintError, match="cannot read"):
        read_fingerprint(tmp_path / "bad.json")
    (tmp_path / "old.json").write_text(json.dumps({"version": 0, "cases": {}}))
    with pytest.raises(FingerprintError, match="version 0"):
        read_fingerprint(tmp_path / "old.json")
    with pytest.raises(FingerprintError, match="not found"):
        read_fingerprint(tmp_path / "absent.json")


# ---------------------------------------------------------------------------------------------
# brain NIfTI layout: 3D, non-1 spacing, orientations, partial labels, an unlabelled case

SHAPE = (12, 10, 6)  # RAS order (x, y, z) of every case


def _nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)


@pytest.fixture
def brain(tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "brain_nifti"
    rng = np.random.default_rng(1)
    box = np.zeros(SHAPE, np.uint8)
    box[2:8, 3:7, 1:4] = 1  # 6 x 4 x 3 = 72 voxels
    tissue = box * 2
    tissue[2:4, 3:5, 1:2] = 3
    cases = {  # case: (spacing, stored with permuted axes)
        "a": ((0.8, 0.8, 2.5), False),
        "b": ((0.8, 0.8, 2.5), True),
        "c": ((1.0, 1.2, 3.0), False),
    }
    truth = {}
    for name, (spacing, permuted) in cases.items():
        image = rng.normal(100, 20, SHAPE).astype(np.float32)
        if permuted:  # file axes (z, x, y): the affine maps them back to RAS (code "SRA")
            affine = np.zeros((4, 4))
            affine[2, 0], affine[0, 1], affine[1, 2], affine[3, 3] = spacing[2], spacing[0], spacing[1], 1
            stored, mask = np.transpose(image, (2, 0, 1)), np.transpose(box, (2, 0, 1))
        else:
            affine, stored, mask = np.diag([*spacing, 1.0]), image, box
        _nifti(root / "imagesTr" / f"{name}.nii.gz", stored, affine)
        _nifti(root / "labelsTr" / f"{name}.nii.gz", mask, affine)
        truth[name] = {"image": image, "spacing": spacing, "orientation": "SRA" if permuted else "RAS"}
    _nifti(root / "labelsTissue" / "a.nii.gz", tissue, np.diag([0.8, 0.8, 2.5, 1.0]))
    unlabelled = rng.normal(50, 5, SHAPE).astype(np.float32)
    _nifti(root / "imagesTs" / "u.nii.gz", unlabelled, np.diag([0.8, 0.8, 2.5, 1.0]))
    truth["u"] = {"image": unlabelled, "spacing": (0.8, 0.8, 2.5), "orientation": "RAS"}
    (root / "labels.csv").write_text("case_id,patient_id,abnormal\na,p1,1\nb,p2,0\nc,p3,\n")
    return root, {"cases": truth, "box": box > 0, "tissue": tissue}


def test_nifti_geometry_and_labels(brain, specs_dir: Path) -> None:
    root, known = brain
    fp = compute_fingerprint(specs_dir / "brain_nifti.yaml", root, workers=1, progress=False)
    assert fp["num_cases"] == 4 and fp["spec"]["modality"] == "MR"
    for name, truth in known["cases"].items():
        image = fp["cases"][name]["inputs"]["image"]
        assert image["shape"] == list(SHAPE)  # in RAS order, also for the case stored with permuted axes
        assert image["spacing"] == pytest.approx(truth["spacing"])
        assert image["orientation"] == truth["orientation"]
        labelled = name != "u"
        assert image["intensity"]["region"] == ("foreground" if labelled else "image")
        _assert_stats(image["intensity"], truth["image"][known["box"]] if labelled else truth["image"])
        _assert_stats(image["intensity_image"], truth["image"])
    summary = fp["inputs"]["image"]
    assert summary["median_shape"] == list(SHAPE)
    assert summary["median_spacing"] == pytest.approx([0.8, 0.8, 2.5])
    assert summary["max_spacing"] == pytest.approx([1.0, 1.2, 3.0])
    assert summary["anisotropy"] == pytest.approx(2.5 / 0.8)
    assert summary["orientations"] == {"RAS": 3, "SRA": 1}
    assert summary["intensity"]["cases"] == 3
    brain_task = fp["tasks"]["brain"]
    assert brain_task["labelled"] == 3 and brain_task["missing"] == 1
    assert brain_task["class_counts"] == [3, 3] and brain_task["components"] == {"median": 1.0, "max": 1}
    assert brain_task["foreground_fraction"]["median"] == pytest.approx(72 / np.prod(SHAPE))
    tissue = fp["tasks"]["tissue"]
    assert tissue["labelled"] == 1 and tissue["class_counts"] == [1, 0, 1, 1]
    assert tissue["class_voxels"] == np.bincount(known["tissue"].ravel(), minlength=4).tolist()
    assert fp["tasks"]["abnormal"]["class_counts"] == [1, 1] and fp["tasks"]["abnormal"]["labelled"] == 2
    assert fp["cases"]["u"]["split"] == "unlabelled" and fp["cases"]["u"]["tasks"]["brain"] == {"labelled": False}


def test_cache_takes_labels_afresh(brain, specs_dir: Path, tmp_path: Path) -> None:
    root, _ = brain
    spec = specs_dir / "brain_nifti.yaml"
    path = write_fingerprint(compute_fingerprint(spec, root, workers=1, progress=False), tmp_path / "fp.json")
    (root / "labels.csv").write_text("case_id,patient_id,abnormal\na,p1,1\nb,p2,1\nc,p3,1\n")
    again = compute_fingerprint(spec, root, workers=1, progress=False, cache=path)
    assert again["cache"] == {"reused": 4, "read": 0}
    assert again["tasks"]["abnormal"]["class_counts"] == [0, 3]
    assert again["cases"]["c"]["tasks"]["abnormal"] == {"labelled": True, "label": 1}


# ---------------------------------------------------------------------------------------------
# MRNet layout: three views of different slice counts, .npy without geometry


def test_multi_view_npy(tmp_path: Path, specs_dir: Path) -> None:
    root = write_mrnet(tmp_path)
    fp = compute_fingerprint(specs_dir / "mrnet.yaml", root, workers=1, progress=False)
    cases = [c for labels in MRNET_LABELS.values() for c in labels]
    assert fp["num_cases"] == len(cases) and set(fp["inputs"]) == set(MRNET_VIEWS)
    for case_id in cases:
        for view in MRNET_VIEWS:
            record = fp["cases"][case_id]["inputs"][view]
            assert record["shape"] == [mrnet_slices(case_id, view), MRNET_SIZE, MRNET_SIZE]
            assert record["orientation"] is None and record["spacing"] == [1.0, 1.0, 1.0]
            volume = np.load(next(root.glob(f"*/{view}/{case_id}.npy")))
            _assert_stats(record["intensity"], volume)
    slices = [mrnet_slices(c, "axial") for c in cases]
    assert fp["inputs"]["axial"]["min_shape"][0] == min(slices)
    assert fp["inputs"]["axial"]["median_shape"][0] == pytest.approx(np.median(slices))
    positives = sum(v[1] for labels in MRNET_LABELS.values() for v in labels.values())
    assert fp["tasks"]["acl"]["class_counts"] == [len(cases) - positives, positives]


# ---------------------------------------------------------------------------------------------
# the real BUSI data


@pytest.mark.shared_data
def test_busi_real_counts_and_cache(shared_data: Path, specs_dir: Path, tmp_path: Path) -> None:
    root = shared_data / "busi" / "Dataset_BUSI_with_GT"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    fp = _busi_fingerprint(specs_dir, root)
    assert fp["num_cases"] == 780 and sum(fp["splits"].values()) == 780
    assert fp["tasks"]["diagnosis"]["class_counts"] == [133, 437, 210]
    lesion = fp["tasks"]["lesion"]
    assert lesion["labelled"] == 780 and lesion["empty"] == 133 and lesion["class_counts"] == [780, 647]
    assert fp["inputs"]["image"]["intensity"]["region"] == "foreground"
    path = write_fingerprint(fp, tmp_path / "fingerprint.json")
    start = time.perf_counter()
    again = _busi_fingerprint(specs_dir, root, cache=path)
    assert again["cache"] == {"reused": 780, "read": 0}, f"cached run took {time.perf_counter() - start:.1f} s"
    assert again["inputs"] == fp["inputs"] and again["tasks"] == fp["tasks"]
