"""The shipped data specs against their datasets' real on-disk layouts, and the spec machinery.

Each spec in ``data_specs/`` is loaded with ``root=`` pointing at a small copy of its dataset
written by :mod:`layouts` (exact folder structure, file names, formats and label tables) and must
find the right cases, inputs, labels, presence flags and splits; images and masks must load
through the readers with matching grids. The generic tests check stratification, patient grouping,
k-fold, seeding and spec errors on a CSV-listed dataset.
"""

from __future__ import annotations

import csv
import math
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import layouts
import numpy as np
import pytest
import yaml
from monai.transforms import LoadImage
from PIL import Image

from medmtl.data import readers
from medmtl.data.raw_reader import RawImageReader
from medmtl.data.spec import SpecError, load_spec
from medmtl.data.tasks import present_key

SPECS = Path(__file__).resolve().parents[2] / "data_specs"
SHIPPED = {  # spec file stem -> data root under MEDMTL_DATA_DIR
    "breast_ultrasound": "busi/Dataset_BUSI_with_GT",
    "mrnet": "mrnet/MRNet-v1.0",
    "mura": "mura/MURA-v1.1",
    "jsrt": "jsrt",
    "nerve_us": "ultrasound-nerve-segmentation",
    "brain_nifti": "brain_nifti",
}
SPEC_NAMES = {"breast_ultrasound": "busi"}  # the dataset's own name where the file says what it holds


def _by_id(cases: list[dict]) -> dict[str, dict]:
    return {c["case_id"]: c for c in cases}


def _csv_rows(path: Path) -> list[list[str]]:
    return list(csv.reader(path.read_text().splitlines()))


def _rel(path: str, root: Path) -> str:
    return Path(path).relative_to(root).as_posix()


def _groups_never_cross(cases: list[dict]) -> None:
    splits = defaultdict(set)
    for case in cases:
        if case["split"] != "unlabelled":
            splits[case["group"]].add(case["split"])
    crossing = {g: s for g, s in splits.items() if len(s) > 1}
    assert not crossing, f"groups in several splits: {crossing}"


def test_readers_load_tiff_and_gif(tmp_path):
    for suffix in ("tif", "gif"):
        path = tmp_path / f"mask.{suffix}"
        Image.fromarray(np.full((3, 4), 255, np.uint8)).convert("P" if suffix == "gif" else "L").save(path)
        assert readers.load_image(str(path)).shape == (4, 3)


# ---------------------------------------------------------------------------------------------
# every shipped spec


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_spec_loads_and_root_follows_env(name, monkeypatch, tmp_path):
    monkeypatch.setenv("MEDMTL_DATA_DIR", str(tmp_path))
    spec = load_spec(SPECS / f"{name}.yaml")
    assert spec.name == SPEC_NAMES.get(name, name)
    assert spec.resolved_root() == (tmp_path / SHIPPED[name]).resolve()
    assert all(t.description for t in spec.tasks), "every task needs a description"
    assert spec.splits.stratify is not None
    monkeypatch.delenv("MEDMTL_DATA_DIR")
    assert spec.resolved_root() == (SPECS / "../../shared/data" / SHIPPED[name]).resolve()


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_spec_on_missing_root_reports_it(name, tmp_path):
    table = load_spec(SPECS / f"{name}.yaml", root=str(tmp_path / "absent")).build_cases()
    assert [p.check for p in table.errors] == ["missing_root"]


# ---------------------------------------------------------------------------------------------
# BUSI


@pytest.fixture(scope="module")
def busi_root(tmp_path_factory) -> Path:
    return layouts.write_busi(tmp_path_factory.mktemp("busi"))


def test_busi_cases_labels_and_multi_masks(busi_root):
    table = load_spec(SPECS / "breast_ultrasound.yaml", root=str(busi_root)).build_cases()
    assert table.errors == []
    cases = _by_id(table.cases)
    assert sorted(cases) == sorted(
        [f"benign_{i}" for i in range(1, 7)]
        + [f"malignant_{i}" for i in range(1, 5)]
        + ["normal_1", "normal_2", "normal_3"]
    )
    assert table.label_counts()["diagnosis"] == {
        "labelled": 13,
        "missing": 0,
        "normal": 3,
        "benign": 6,
        "malignant": 4,
    }
    assert _rel(cases["benign_1"]["image"], busi_root) == "benign/benign (1).png"
    assert _rel(cases["benign_1"]["lesion"], busi_root) == "benign/benign (1)_mask.png"
    assert [_rel(p, busi_root) for p in cases["benign_2"]["lesion"]] == [
        "benign/benign (2)_mask.png",
        "benign/benign (2)_mask_1.png",
    ]
    assert len(cases["malignant_3"]["lesion"]) == 3
    assert cases["normal_2"]["diagnosis"] == 0 and cases["normal_2"]["lesion_present"] == 1  # all-black mask
    assert sum(isinstance(c["lesion"], list) for c in table.cases) == 2


def test_busi_image_and_masks_load_on_one_grid(busi_root):
    case = _by_id(load_spec(SPECS / "breast_ultrasound.yaml").datalist(root=busi_root))["benign_2"]
    image = readers.load_image(case["image"])
    masks = [readers.load_image(p) for p in case["lesion"]]
    assert image.shape == (20, 18)  # PIL axes reversed: (width, height)
    assert all(m.shape == image.shape for m in masks)
    assert {int(v) for m in masks for v in np.unique(m)} == {0, 255}


# ---------------------------------------------------------------------------------------------
# MRNet


@pytest.fixture(scope="module")
def mrnet_root(tmp_path_factory) -> Path:
    return layouts.write_mrnet(tmp_path_factory.mktemp("mrnet"))


def test_mrnet_cases_views_labels_and_splits(mrnet_root):
    table = load_spec(SPECS / "mrnet.yaml", root=str(mrnet_root)).build_cases()
    assert table.errors == []
    cases = _by_id(table.cases)
    train_ids, valid_ids = list(layouts.MRNET_LABELS["train"]), list(layouts.MRNET_LABELS["valid"])
    assert sorted(cases) == train_ids + valid_ids
    assert _rel(cases["0007"]["coronal"], mrnet_root) == "train/coronal/0007.npy"
    assert _rel(cases["1132"]["sagittal"], mrnet_root) == "valid/sagittal/1132.npy"
    assert "image" not in cases["0007"]
    for split in ("train", "valid"):
        for case_id, (abnormal, acl, meniscus) in layouts.MRNET_LABELS[split].items():
            assert (cases[case_id]["abnormal"], cases[case_id]["acl"], cases[case_id]["meniscus"]) == (
                abnormal,
                acl,
                meniscus,
            )
    assert {cases[i]["split"] for i in valid_ids} == {"test"}
    assert {cases[i]["split"] for i in train_ids} == {"train", "val"}
    carved = sum(cases[i]["split"] == "val" for i in train_ids)  # val_fraction 0.1 of 12, hashed per case
    assert 1 <= carved <= 12 * 0.1 + 3 * math.sqrt(12 * 0.1 * 0.9)
    # pos_weight "auto": negatives / positives on the train split (after the val carve-out)
    train = [c for c in table.cases if c["split"] == "train"]
    expected = {t: [sum(1 - c[t] for c in train) / sum(c[t] for c in train)] for t in ("abnormal", "acl", "meniscus")}
    weights = table.pos_weights()
    assert weights.keys() == expected.keys()
    assert all(weights[t] == pytest.approx(expected[t]) for t in expected)


def test_mrnet_pos_weight_auto_counts_training_labels(mrnet_root):
    no_carve_out = {"method": "field", "values": {"train": "train", "valid": "test"}}
    table = load_spec(SPECS / "mrnet.yaml", root=str(mrnet_root), splits=no_carve_out).build_cases()
    # train: abnormal 9 of 12, acl 3 of 12, meniscus 5 of 12
    assert table.pos_weights() == {"abnormal": [3 / 9], "acl": [9 / 3], "meniscus": [7 / 5]}
    assert table.split_counts() == {"train": 12, "test": 4}


def test_mrnet_keys_match_with_or_without_zero_padding(mrnet_root, tmp_path):
    root = Path(shutil.copytree(mrnet_root, tmp_path / "MRNet-v1.0"))
    rows = _csv_rows(root / "train-acl.csv")
    assert rows[7] == ["0007", "0"] and rows[1] == ["0001", "1"]  # real files: zero-padded, no header
    with open(root / "train-acl.csv", "w", newline="") as handle:
        csv.writer(handle).writerows((str(int(k)), v) for k, v in rows)  # "7,0" as pandas would write it
    cases = _by_id(load_spec(SPECS / "mrnet.yaml").datalist(root=root))
    assert [cases[k]["acl"] for k in layouts.MRNET_LABELS["train"]] == [
        v[1] for v in layouts.MRNET_LABELS["train"].values()
    ]
    assert cases["0001"]["acl"] == 1 and cases["0010"]["acl"] == 0


def test_mrnet_a_case_missing_from_a_label_table_lacks_only_that_label(mrnet_root, tmp_path):
    root = Path(shutil.copytree(mrnet_root, tmp_path / "MRNet-v1.0"))
    lines = (root / "valid-meniscus.csv").read_text().splitlines()
    (root / "valid-meniscus.csv").write_text("\n".join(line for line in lines if not line.startswith("1131")) + "\n")
    case = _by_id(load_spec(SPECS / "mrnet.yaml").datalist(root=root))["1131"]
    assert case["meniscus_present"] == 0 and "meniscus" not in case
    assert case["abnormal_present"] == 1 and case["acl_present"] == 1


def test_mrnet_views_load_with_their_own_slice_counts(mrnet_root):
    case = _by_id(load_spec(SPECS / "mrnet.yaml").datalist(root=mrnet_root))["0004"]
    shapes = {view: tuple(readers.load_image(case[view]).shape) for view in ("axial", "coronal", "sagittal")}
    assert shapes == {view: (layouts.mrnet_slices("0004", view), 32, 32) for view in shapes}
    assert len({s[0] for s in shapes.values()}) == 3  # the three views differ
    assert str(readers.load_image(case["axial"]).meta["filename_or_obj"]).endswith("train/axial/0004.npy")


# ---------------------------------------------------------------------------------------------
# MURA


@pytest.fixture(scope="module")
def mura_root(tmp_path_factory) -> Path:
    return layouts.write_mura(tmp_path_factory.mktemp("mura"))


def test_mura_cases_are_exactly_the_official_image_list(mura_root):
    table = load_spec(SPECS / "mura.yaml", root=str(mura_root)).build_cases()
    assert table.errors == []
    assert all((mura_root / p).is_file() for p in layouts.MURA_APPLEDOUBLE)  # present on disk, ...
    found = sorted(_rel(c["image"], mura_root) for c in table.cases)
    listed = sorted(
        line.removeprefix("MURA-v1.1/")
        for split in ("train", "valid")
        for line in (mura_root / f"{split}_image_paths.csv").read_text().split()
    )
    assert found == listed  # ... but not cases
    assert len(found) == 17


def test_mura_labels_from_folders_match_the_study_table(mura_root):
    cases = _by_id(load_spec(SPECS / "mura.yaml").datalist(root=mura_root))
    studies = {
        row[0].removeprefix("MURA-v1.1/"): int(row[1])
        for split in ("train", "valid")
        for row in _csv_rows(mura_root / f"{split}_labeled_studies.csv")
    }
    for case in cases.values():
        assert case["abnormal"] == studies[_rel(str(Path(case["image"]).parent), mura_root) + "/"]
    humerus = cases["HUMERUS_patient00001_study1_image1"]
    assert (humerus["abnormal"], humerus["body_part"], humerus["group"]) == (0, 4, "patient00001")
    classes = load_spec(SPECS / "mura.yaml").task("body_part").classes
    parts = Counter(classes[c["body_part"]] for c in cases.values())
    assert parts == {"shoulder": 5, "humerus": 1, "wrist": 5, "elbow": 1, "finger": 1, "forearm": 2, "hand": 2}
    assert Counter(c["abnormal"] for c in cases.values()) == {1: 8, 0: 9}


def test_mura_patients_stay_in_one_split_and_valid_is_test(mura_root):
    splits = {**load_spec(SPECS / "mura.yaml").splits.model_dump(), "val_fraction": 0.3}  # 7 train patients
    table = load_spec(SPECS / "mura.yaml", root=str(mura_root), splits=splits).build_cases()
    _groups_never_cross(table.cases)
    by_split = defaultdict(set)
    for case in table.cases:
        by_split[case["split"]].add(case["group"])
    assert by_split["test"] == {"patient11185", "patient11186"}
    assert len([c for c in table.cases if c["group"] == "patient00001"]) == 4  # two body parts, one patient
    assert by_split["train"] and by_split["val"]


def test_mura_images_load(mura_root):
    case = _by_id(load_spec(SPECS / "mura.yaml").datalist(root=mura_root))["WRIST_patient00003_study2_image2"]
    assert readers.load_image(case["image"]).shape == (20, 24)


# ---------------------------------------------------------------------------------------------
# JSRT + SCR


@pytest.fixture(scope="module")
def jsrt_root(tmp_path_factory) -> Path:
    return layouts.write_jsrt(tmp_path_factory.mktemp("jsrt"), size=64)


def test_jsrt_cases_nodule_and_scr_masks(jsrt_root):
    table = load_spec(SPECS / "jsrt.yaml", root=str(jsrt_root)).build_cases()
    assert table.errors == []
    cases = _by_id(table.cases)
    assert sorted(cases) == layouts.JSRT_CASES
    assert {k: cases[k]["nodule"] for k in ("JPCLN001", "JPCLN006", "JPCNN001", "JPCNN004")} == {
        "JPCLN001": 1,
        "JPCLN006": 1,
        "JPCNN001": 0,
        "JPCNN004": 0,
    }
    assert _rel(cases["JPCLN003"]["image"], jsrt_root) == "All247images/JPCLN003.IMG"
    assert [_rel(p, jsrt_root) for p in cases["JPCLN003"]["lungs"]] == [
        "scratch/fold1/masks/left lung/JPCLN003.gif",
        "scratch/fold1/masks/right lung/JPCLN003.gif",
    ]
    assert [_rel(p, jsrt_root) for p in cases["JPCNN002"]["clavicles"]] == [
        "scratch/fold2/masks/left clavicle/JPCNN002.gif",
        "scratch/fold2/masks/right clavicle/JPCNN002.gif",
    ]
    assert _rel(cases["JPCNN002"]["heart"], jsrt_root) == "scratch/fold2/masks/heart/JPCNN002.gif"
    assert table.label_counts()["nodule"] == {"labelled": 10, "missing": 0, "no_nodule": 4, "nodule": 6}


def test_jsrt_case_without_scr_masks_lacks_the_segmentations(jsrt_root, tmp_path):
    root = Path(shutil.copytree(jsrt_root, tmp_path / "jsrt"))
    for mask in root.glob("scratch/*/masks/*/JPCNN003.gif"):
        mask.unlink()
    case = _by_id(load_spec(SPECS / "jsrt.yaml").datalist(root=root))["JPCNN003"]
    assert [case[present_key(t)] for t in ("lungs", "heart", "clavicles", "nodule")] == [0, 0, 0, 1]
    assert "lungs" not in case


def test_jsrt_image_and_half_size_masks_line_up(jsrt_root):
    case = _by_id(load_spec(SPECS / "jsrt.yaml").datalist(root=jsrt_root))["JPCLN002"]
    image = LoadImage(reader=RawImageReader(shape=(64, 64)), image_only=True)(case["image"])
    assert image.shape == (64, 64)
    assert image.pixdim.tolist() == pytest.approx([0.175, 0.175])
    assert int(image.max()) == layouts.JSRT_HEART and int(image.min()) >= 0
    heart = readers.load_image(case["heart"])
    lungs = np.maximum(*[np.asarray(readers.load_image(p)) for p in case["lungs"]])
    assert heart.shape == lungs.shape == (32, 32)  # SCR masks: half the image size, as documented
    half = np.asarray(image)[::2, ::2]
    np.testing.assert_array_equal(half == layouts.JSRT_HEART, np.asarray(heart) > 0)
    heart_free = np.asarray(heart) == 0
    assert np.all(half[(lungs > 0) & heart_free] == 501) and np.all(half[(lungs == 0) & heart_free] == 3000)


def test_raw_reader_full_size_jsrt_file(tmp_path):
    pixels = (np.arange(2048 * 2048) % 4096).astype(">u2").reshape(2048, 2048)
    path = tmp_path / "JPCNN001.IMG"
    pixels.tofile(path)
    reader = RawImageReader()
    assert reader.verify_suffix(str(path)) and reader.verify_suffix(str(tmp_path / "x.img"))
    loader = LoadImage(image_only=True)
    loader.register(reader)  # registered like medmtl.data.readers will: picked by suffix and size
    image = loader(str(path))
    assert image.shape == (2048, 2048) and image.pixdim.tolist() == pytest.approx([0.175, 0.175])
    assert float(image[5, 0]) == 5.0 and float(image[0, 1]) == 2048 % 4096  # (column, row) order like PIL
    assert image.meta["spatial_shape"].tolist() == [2048, 2048]
    stacked = LoadImage(reader=reader, image_only=True, ensure_channel_first=True)([str(path), str(path)])
    assert stacked.shape == (2, 2048, 2048)


def test_raw_reader_refuses_what_it_cannot_describe(tmp_path):
    small = tmp_path / "JPCLN001.IMG"
    np.zeros((64, 64), ">u2").tofile(small)
    reader = RawImageReader()
    assert not reader.verify_suffix(str(small))  # 8 KiB, not 2048 x 2048 x 2 bytes
    with pytest.raises(ValueError, match="8192 bytes.*8388608"):
        reader.read(str(small))
    analyze = tmp_path / "brain.img"
    np.zeros((64, 64), ">u2").tofile(analyze)
    (tmp_path / "brain.hdr").write_bytes(bytes(348))
    assert not RawImageReader(shape=(64, 64)).verify_suffix(str(analyze))  # Analyze pair, not raw
    assert not reader.verify_suffix(str(tmp_path / "a.png"))
    with pytest.raises(ValueError, match="spacing needs 2"):
        RawImageReader(spacing=(0.175,))
    with pytest.raises(ValueError, match="not a NumPy data type"):
        RawImageReader(dtype="bogus")


# ---------------------------------------------------------------------------------------------
# ultrasound nerve segmentation


@pytest.fixture(scope="module")
def nerve_root(tmp_path_factory) -> Path:
    return layouts.write_nerve_us(tmp_path_factory.mktemp("nerve"))


def test_nerve_cases_masks_visibility_and_unlabelled_test(nerve_root):
    table = load_spec(SPECS / "nerve_us.yaml", root=str(nerve_root)).build_cases()
    assert table.errors == []
    cases = _by_id(table.cases)
    train = {f"train_{s}_{i}": visible for (s, i), visible in layouts.NERVE_TRAIN.items()}
    assert sorted(cases) == sorted([*train, "test_1", "test_2", "test_3"])
    for case_id, visible in train.items():
        assert cases[case_id]["nerve_visible"] == int(visible), case_id
        assert cases[case_id]["nerve_present"] == 1  # an empty mask is a label ("no nerve"), not a missing one
    assert _rel(cases["train_10_2"]["nerve"], nerve_root) == "train/10_2_mask.tif"
    assert _rel(cases["train_10_2"]["image"], nerve_root) == "train/10_2.tif"
    for case_id in ("test_1", "test_2", "test_3"):
        case = cases[case_id]
        assert case["split"] == "unlabelled" and case["nerve_present"] == 0 and case["nerve_visible_present"] == 0
        assert "nerve" not in case and _rel(case["image"], nerve_root) == f"test/{case_id[5:]}.tif"
    assert cases["train_3_2"]["group"] == "3"
    _groups_never_cross(table.cases)
    assert len(table.datalist("unlabelled")) == 3 and len(table.datalist("labelled")) == 14
    train_rows = [c for c in table.cases if c["split"] == "train"]
    positives = sum(c["nerve_visible"] for c in train_rows)
    assert table.pos_weights() == {"nerve_visible": [(len(train_rows) - positives) / positives]}


def test_nerve_image_and_mask_load_on_one_grid(nerve_root):
    case = _by_id(load_spec(SPECS / "nerve_us.yaml").datalist(root=nerve_root))["train_1_3"]
    image, mask = readers.load_image(case["image"]), readers.load_image(case["nerve"])
    assert image.shape == mask.shape == (20, 14)  # (width, height), like the 580 x 420 originals
    assert {int(v) for v in np.unique(mask)} == {0, 255}


# ---------------------------------------------------------------------------------------------
# brain NIfTI (recommended hospital layout)


@pytest.fixture(scope="module")
def brain_root(tmp_path_factory) -> Path:
    return layouts.write_brain_nifti(tmp_path_factory.mktemp("brain"))


def test_brain_partial_labels_csv_groups_and_unlabelled(brain_root):
    table = load_spec(SPECS / "brain_nifti.yaml", root=str(brain_root)).build_cases()
    assert table.errors == []
    cases = _by_id(table.cases)
    assert sorted(cases) == ["P01_a", "P01_b", "P02_a", "P03_a", "P04_a", "P05_a", "X01", "X02"]
    assert _rel(cases["P05_a"]["image"], brain_root) == "imagesTr/P05_a_0000.nii.gz"  # nnU-Net channel suffix
    present = {k: [c[present_key(t)] for t in ("brain", "tissue", "abnormal")] for k, c in cases.items()}
    assert present == {
        "P01_a": [1, 1, 1],
        "P01_b": [1, 0, 1],
        "P02_a": [1, 1, 0],  # empty abnormal cell
        "P03_a": [1, 0, 1],
        "P04_a": [0, 0, 1],
        "P05_a": [0, 0, 0],  # no strong label, no CSV row
        "X01": [0, 0, 0],
        "X02": [0, 0, 0],
    }
    assert [cases[k]["abnormal"] for k in ("P01_a", "P01_b", "P03_a", "P04_a")] == [1, 0, 0, 1]
    assert _rel(cases["P01_a"]["brain"], brain_root) == "labelsTr/P01_a.nii.gz"
    groups = {k: c["group"] for k, c in cases.items()}
    assert groups == {
        "P01_a": "P01",
        "P01_b": "P01",
        "P02_a": "P02",
        "P03_a": "P03",
        "P04_a": "P04",
        "P05_a": "P05_a",  # no row in labels.csv: its own patient
        "X01": "X01",
        "X02": "X02",
    }
    assert {cases[k]["split"] for k in ("P05_a", "X01", "X02")} == {"unlabelled"}
    assert cases["P01_a"]["split"] == cases["P01_b"]["split"]
    _groups_never_cross(table.cases)


def test_brain_weak_labels_replace_only_the_tasks_that_have_them(brain_root):
    strong = _by_id(load_spec(SPECS / "brain_nifti.yaml").datalist(root=brain_root))
    weak = _by_id(load_spec(SPECS / "brain_nifti.yaml").datalist(root=brain_root, label_quality="weak"))
    for case_id in ("P01_a", "P01_b", "P02_a", "P03_a", "P04_a", "P05_a"):
        assert _rel(weak[case_id]["brain"], brain_root) == f"labelsWeak/{case_id}.nii.gz"
        assert weak[case_id]["tissue_present"] == strong[case_id]["tissue_present"]
        assert weak[case_id].get("abnormal") == strong[case_id].get("abnormal")
    table = load_spec(SPECS / "brain_nifti.yaml").build_cases(root=brain_root, label_quality="weak")
    assert _by_id(table.cases)["P05_a"]["split"] != "unlabelled"  # a weak mask makes it usable
    assert {_by_id(table.cases)[k]["split"] for k in ("X01", "X02")} == {"unlabelled"}


def test_brain_volumes_and_masks_load_on_one_grid(brain_root):
    case = _by_id(load_spec(SPECS / "brain_nifti.yaml").datalist(root=brain_root))["P01_a"]
    image = readers.load_image(case["image"])
    weak = readers.load_image(str(brain_root / "labelsWeak" / "P01_a.nii.gz"))
    for volume in (image, readers.load_image(case["brain"]), readers.load_image(case["tissue"]), weak):
        assert tuple(volume.shape) == layouts.BRAIN_SHAPE
        assert volume.pixdim.tolist() == pytest.approx(list(layouts.BRAIN_SPACING))
    assert sorted(np.unique(weak).tolist()) == [0, 2, 3]  # k-means classes: binarized by the spec


# ---------------------------------------------------------------------------------------------
# the spec machinery on a CSV-listed dataset


def _generic_spec(root: Path, tmp_path: Path, **splits) -> Path:
    spec = {
        "name": "generic",
        "root": str(root),
        "cases": {"csv": "labels.csv"},
        "case_id": "{case}",
        "group": "{patient}",
        "inputs": {"image": "images/{case}.png"},
        "tasks": [{"name": "grade", "kind": "multiclass", "classes": ["a", "b", "c"], "label": {"field": "label"}}],
        "splits": {"stratify": "grade", **splits},
    }
    path = tmp_path / "generic.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


LABELS = [0] * 30 + [1] * 18 + [2] * 12


def _binomial_spread(total: int, fraction: float) -> float:
    """Splits are hashed per case/patient: a class keeps its proportion within binomial noise (3.5 sd)."""
    return 3.5 * math.sqrt(total * fraction * (1 - fraction))


def test_fractions_keep_class_proportions(tmp_path):
    root = layouts.write_csv_dataset(tmp_path, LABELS)
    fractions = {"train": 0.6, "val": 0.2, "test": 0.2}
    table = load_spec(_generic_spec(root, tmp_path, fractions=fractions)).build_cases()
    assert table.errors == []
    per_split = Counter((c["split"], c["grade"]) for c in table.cases)
    for split, fraction in fractions.items():
        for grade, total in Counter(LABELS).items():
            assert abs(per_split[split, grade] - fraction * total) <= _binomial_spread(total, fraction), per_split
    assert sum(per_split.values()) == 60


def test_patients_never_cross_splits(tmp_path):
    patients = [f"pat{i // 3 if i < 30 else i:03d}" for i in range(60)]  # 10 patients with 3 images each
    root = layouts.write_csv_dataset(tmp_path, LABELS, patients)
    table = load_spec(_generic_spec(root, tmp_path)).build_cases()
    assert table.errors == []
    _groups_never_cross(table.cases)
    counts = table.split_counts()
    assert set(counts) == {"train", "val", "test"} and counts["train"] > counts["val"] + counts["test"]


def test_a_split_column_that_separates_a_patient_is_reported(tmp_path):
    root = layouts.write_csv_dataset(tmp_path, [0, 1, 0, 1], ["p1", "p1", "p2", "p3"])
    rows = _csv_rows(root / "labels.csv")
    rows[0].append("split")
    for row, split in zip(rows[1:], ["train", "test", "train", "test"], strict=True):
        row.append(split)
    with open(root / "labels.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    table = load_spec(_generic_spec(root, tmp_path, method="field")).build_cases()
    assert [(p.check, p.message) for p in table.errors] == [
        ("group_crosses_splits", "patient/group 'p1' has cases in ['test', 'train']")
    ]


def test_kfold_puts_each_case_in_exactly_one_balanced_val_fold(tmp_path):
    root = layouts.write_csv_dataset(tmp_path, LABELS)
    val_folds: dict[str, list[int]] = defaultdict(list)
    for fold in range(5):
        table = load_spec(_generic_spec(root, tmp_path, method="kfold", folds=5, fold=fold)).build_cases()
        val = [c for c in table.cases if c["split"] == "val"]
        assert abs(len(val) - 12) <= _binomial_spread(60, 0.2) and len(table.cases) == 60
        grades = Counter(c["grade"] for c in val)
        assert all(abs(grades[g] - n / 5) <= _binomial_spread(n, 0.2) for g, n in Counter(LABELS).items()), grades
        assert {c["fold"] for c in val} == {fold}
        for case in val:
            val_folds[case["case_id"]].append(fold)
    assert len(val_folds) == 60 and all(len(folds) == 1 for folds in val_folds.values())


def test_kfold_with_patients_keeps_each_patient_in_one_fold(tmp_path):
    patients = [f"pat{i // 4:02d}" for i in range(60)]
    root = layouts.write_csv_dataset(tmp_path, LABELS, patients)
    table = load_spec(_generic_spec(root, tmp_path, method="kfold", folds=3)).build_cases()
    folds = defaultdict(set)
    for case in table.cases:
        folds[case["group"]].add(case["fold"])
    assert all(len(f) == 1 for f in folds.values())
    per_fold = Counter(next(iter(f)) for f in folds.values())  # 15 patients, hashed into 3 folds
    assert set(per_fold) == {0, 1, 2} and all(abs(n - 5) <= _binomial_spread(15, 1 / 3) for n in per_fold.values())


def test_splits_are_seeded(tmp_path):
    root = layouts.write_csv_dataset(tmp_path, LABELS)

    def assignment(seed: int) -> dict[str, str]:
        table = load_spec(_generic_spec(root, tmp_path, seed=seed)).build_cases()
        return {c["case_id"]: c["split"] for c in table.cases}

    assert assignment(3) == assignment(3)
    assert assignment(3) != assignment(4)
    assert set(assignment(3).values()) == set(assignment(4).values()) == {"train", "val", "test"}


def test_spec_errors_are_reported_all_at_once_with_the_file_name(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "broken",
                "colour": "red",  # unknown key
                "cases": {"glob": "*.png"},
                "tasks": [
                    {
                        "name": "lesion",
                        "kind": "segmentation",
                        "classes": ["bg", "lesion"],
                        "label": {"binarize": True},
                    },
                    {"name": "grade", "classes": ["a", "b"], "label": {"field": "grade"}},  # no kind
                ],
                "splits": {"seed": "abc", "stratify": "malignant"},  # wrong type, unknown task
            }
        )
    )
    with pytest.raises(SpecError) as info:
        load_spec(path)
    problems = info.value.problems
    messages = "\n".join(p.message for p in problems)
    assert len(problems) == 5, messages
    assert {p.path for p in problems} == {str(path)}
    assert "broken.yaml" in str(info.value)
    assert sorted(p.check for p in problems) == [
        "invalid_value",
        "invalid_value",
        "invalid_value",
        "missing_key",
        "unknown_key",
    ]
    assert "unknown key 'colour'" in messages
    assert "'tasks.1.kind' is missing" in messages
    assert "'splits.seed'" in messages and "'abc'" in messages
    assert "exactly one of mask / field / csv / mask_nonempty" in messages
    assert "'malignant', which is not one of ['lesion', 'grade']" in messages


def test_stratify_by_unknown_or_segmentation_task_alone(tmp_path):
    root = layouts.write_csv_dataset(tmp_path, [0, 1])
    path = _generic_spec(root, tmp_path)
    with pytest.raises(SpecError, match="splits.stratify names task 'nope'"):
        load_spec(path, splits={"stratify": "nope"})
    segmentation = {"name": "lesion", "kind": "segmentation", "classes": ["bg", "fg"], "label": {"mask": "{case}.png"}}
    with pytest.raises(SpecError, match="cannot stratify by segmentation task 'lesion'"):
        load_spec(path, tasks=[segmentation], splits={"stratify": "lesion"})


# ---------------------------------------------------------------------------------------------
# real data


@pytest.mark.shared_data
def test_busi_real_data(shared_data):
    root = shared_data / "busi" / "Dataset_BUSI_with_GT"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    table = load_spec(SPECS / "breast_ultrasound.yaml", root=str(root)).build_cases()
    assert table.errors == []
    assert len(table.cases) == 780
    counts = table.label_counts()["diagnosis"]
    assert (counts["normal"], counts["benign"], counts["malignant"]) == (133, 437, 210)
    assert sum(isinstance(c["lesion"], list) for c in table.cases) == 17
    assert all(c["lesion_present"] for c in table.cases)
    per_split = Counter((c["split"], c["diagnosis"]) for c in table.cases)
    for split, fraction in {"train": 0.7, "val": 0.15, "test": 0.15}.items():
        for grade, total in enumerate((133, 437, 210)):
            assert abs(per_split[split, grade] - fraction * total) <= _binomial_spread(total, fraction)
