"""build_transforms on the generated demo data (2D PNG, 3D NIfTI), BUSI-like masks and multi-view inputs."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset, MetaTensor
from monai.transforms import Compose, Invertd
from PIL import Image

from medmtl.data.demo import DEMO_3D_AFFINE, generate_demo_data
from medmtl.data.spec import DatasetSpec, load_spec
from medmtl.transforms import EnsureTaskLabelsd, build_transforms, transform_keys

SPECS = Path(__file__).resolve().parents[2] / "data_specs"
RAS_AFFINE = np.array([[1.5, 0, 0, -23.25], [0, 1.5, 0, -23.25], [0, 0, 1.5, -23.25], [0, 0, 0, 1]])


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    return generate_demo_data(tmp_path_factory.mktemp("demo"), seed=0)


@pytest.fixture(scope="module")
def spec2d(demo) -> DatasetSpec:
    return load_spec(SPECS / "demo.yaml", root=demo["demo2d"]["root"])


@pytest.fixture(scope="module")
def spec3d(demo) -> DatasetSpec:
    return load_spec(SPECS / "demo3d.yaml", root=demo["demo3d"]["root"])


def _batches(datalist: list[dict], transform: Compose, seed: int = 0) -> list[dict]:
    transform.set_random_state(seed=seed)
    return list(DataLoader(Dataset(datalist, transform), batch_size=4, num_workers=0, shuffle=False))


def _samples(batches: list[dict]) -> list[dict]:
    """Per-sample views of collated batches (tensors indexed, lists of strings picked)."""
    out = []
    for batch in batches:
        for i in range(len(batch["case_id"])):
            out.append({k: v[i] for k, v in batch.items()})
    return out


def test_keys_and_modes_come_from_the_spec(spec2d, spec3d):
    keys = transform_keys(spec2d)
    assert keys.images == ("image",) and keys.masks == ("lesion",)
    assert keys.spatial == ("image", "lesion") and keys.modes == ("bilinear", "nearest")
    assert transform_keys(spec3d).masks == ("blob",)
    steps = build_transforms(spec2d, 64, train=True).transforms
    assert isinstance(steps[-1], EnsureTaskLabelsd)
    names = [type(t).__name__ for t in steps]
    first_random = next(i for i, n in enumerate(names) if n.startswith("Rand"))
    assert all(not n.startswith("Rand") for n in names[:first_random])  # deterministic prefix, cacheable
    assert all(n.startswith("Rand") for n in names[first_random:-1])
    affine = next(t for t in steps if type(t).__name__ == "RandAffined")
    assert tuple(affine.mode) == ("bilinear", "nearest")


def test_batch_augment_leaves_a_fully_deterministic_chain(spec2d):
    """With batch_augment the train chain is the eval chain: TrainingCacheDataset caches all of it."""
    from monai.transforms import Randomizable

    from medmtl.data.datasets import TrainingCacheDataset, unpack

    chain = build_transforms(spec2d, 32, train=True, batch_augment=True)
    assert [type(t) for t in chain.transforms] == [type(t) for t in build_transforms(spec2d, 32).transforms]
    assert not any(isinstance(t, Randomizable) for t in chain.transforms)
    ds = TrainingCacheDataset(spec2d.datalist("train")[:3], chain, cache_rate=1.0, progress=False, compact=False)
    assert ds[0]["image"] is ds._cache[0]["image"]  # served from the cache, no transform runs per item
    packed = TrainingCacheDataset(spec2d.datalist("train")[:3], chain, cache_rate=1.0, progress=False)
    assert torch.equal(packed[0]["image"], unpack(packed._cache[0])["image"])  # only unpacked
    with pytest.raises(ValueError, match="flip_axes has axis 2"):  # the options are still checked
        build_transforms(spec2d, 64, train=True, batch_augment=True, flip_axes=(2,))


@pytest.mark.parametrize("train", [False, True])
def test_2d_batches(spec2d, train):
    datalist = spec2d.datalist("all")
    by_id = {c["case_id"]: c for c in datalist}
    batches = _batches(datalist, build_transforms(spec2d, 64, train=train))
    assert len(batches) == 15
    first = batches[0]
    assert isinstance(first["image"], MetaTensor) and first["image"].shape == (4, 1, 64, 64)
    assert first["image"].dtype == torch.float32
    assert first["lesion"].shape == (4, 1, 64, 64) and first["lesion"].dtype == torch.float32
    assert first["malignant"].shape == (4, 1) and first["malignant"].dtype == torch.float32
    assert first["lesion_present"].dtype == torch.bool and first["lesion_present"].shape == (4,)
    samples = _samples(batches)
    assert sorted(s["case_id"] for s in samples) == sorted(by_id)
    missing = {"lesion": 0, "malignant": 0}
    for sample in samples:
        case = by_id[sample["case_id"]]
        for task in ("lesion", "malignant"):
            assert bool(sample[f"{task}_present"]) == bool(case[f"{task}_present"])
            if not case[f"{task}_present"]:
                missing[task] += 1
                assert not sample[task].any()  # placeholder
        if case["malignant_present"]:
            assert sample["malignant"].item() == case["malignant"]
        assert set(torch.unique(sample["lesion"]).tolist()) <= {0.0, 1.0}
        if not train:
            assert sample["image"].min() >= 0.0 and sample["image"].max() <= 1.0
    assert missing["lesion"] == 13 and missing["malignant"] == 13


@pytest.mark.parametrize("train", [False, True])
def test_2d_image_and_mask_stay_aligned(spec2d, train):
    """Lesions are dark: inside the (transformed) mask the (transformed) image must be darker."""
    datalist = [c for c in spec2d.datalist("all") if c["lesion_present"]]
    gaps = []
    for seed in (0, 1):
        for sample in _samples(_batches(datalist, build_transforms(spec2d, 48, train=train), seed)):
            mask = sample["lesion"][0] > 0
            if mask.sum() > 10:
                image = sample["image"][0]
                gaps.append(float(image[~mask].mean() - image[mask].mean()))
    assert len(gaps) > 40
    assert min(gaps) > 0.1, gaps


def test_random_spatial_transforms_move_image_and_mask_together(spec2d):
    """Image replaced by its own mask: after random flips/affine, thresholded image == mask."""
    datalist = [
        {**c, "image": c["lesion"]}
        for c in spec2d.datalist("all")
        if c["lesion_present"] and np.asarray(Image.open(c["lesion"])).any()
    ]
    plain = _samples(_batches(datalist, build_transforms(spec2d, 64, train=False)))
    moved = _samples(_batches(datalist, build_transforms(spec2d, 64, train=True, noise_std=0.0, aug_prob=1.0)))
    changed = 0
    for before, after in zip(plain, moved, strict=True):
        image, mask = after["image"][0] > 0.5, after["lesion"][0] > 0
        iou = (image & mask).sum() / (image | mask).sum()
        assert iou > 0.85, (after["case_id"], float(iou))
        changed += int(not torch.equal(before["lesion"], after["lesion"]))
    assert changed >= len(plain) - 2  # the random transforms did move things


def test_3d_batches_geometry_and_alignment(spec3d, demo):
    datalist = spec3d.datalist("all")
    by_id = {c["case_id"]: c for c in datalist}
    batches = _batches(datalist, build_transforms(spec3d, 32, train=False))
    first = batches[0]
    assert first["image"].shape == (4, 1, 32, 32, 32) and first["blob"].shape == (4, 1, 32, 32, 32)
    assert first["large"].shape == (4, 1) and first["large_present"].dtype == torch.bool
    for batch in batches:
        for i in range(len(batch["case_id"])):
            # reoriented to RAS, geometry kept for images, masks and placeholders alike
            np.testing.assert_allclose(batch["image"].affine[i].numpy(), RAS_AFFINE, atol=1e-6)
            np.testing.assert_allclose(batch["blob"].affine[i].numpy(), RAS_AFFINE, atol=1e-6)
            np.testing.assert_allclose(batch["image"].meta["original_affine"][i].numpy(), DEMO_3D_AFFINE)
    samples = _samples(batches)
    for sample in samples:
        case = by_id[sample["case_id"]]
        assert bool(sample["blob_present"]) == bool(case["blob_present"])
        assert bool(sample["large_present"]) == bool(case["large_present"])
        if not case["blob_present"]:
            assert not sample["blob"].any()
        assert set(torch.unique(sample["blob"]).tolist()) <= {0.0, 1.0}
    # voxels really reordered LPS -> RAS (axes 0 and 1 flipped), then z-scored inside the brain
    case = samples[0]
    raw = np.asarray(nib.load(by_id[case["case_id"]]["image"]).dataobj)[::-1, ::-1, :]
    image = case["image"][0].numpy()
    brain = raw > 0
    assert (image[~brain] == 0).all() and np.corrcoef(raw[brain], image[brain])[0, 1] > 0.999
    assert abs(image[raw > 0].mean()) < 1e-3 and abs(image[raw > 0].std() - 1) < 1e-2
    # the lesion is bright, in the original and after random spatial transforms
    for train in (False, True):
        for sample in _samples(_batches(datalist, build_transforms(spec3d, 32, train=train), seed=1)):
            mask = sample["blob"][0] > 0
            if mask.sum() > 20:
                image = sample["image"][0]
                assert image[mask].mean() > image[(~mask) & (image != 0)].mean() + 1.0


def test_3d_resampling_and_weak_labels(spec3d):
    weak = spec3d.datalist("train", label_quality="weak")
    transform = build_transforms(spec3d, 16, train=True, pixdim=3.0, label_quality="weak")
    samples = _samples(_batches(weak, transform))
    assert samples[0]["image"].shape == (1, 16, 16, 16)
    assert np.allclose(np.abs(np.diag(samples[0]["image"].affine.numpy())[:3]), 3.0, atol=0.5)  # ~3 mm voxels
    assert [bool(s["blob_present"]) for s in samples] == [bool(c["blob_present"]) for c in weak]
    assert sum(bool(s["blob_present"]) for s in samples) == len(weak)  # every labelled case has a weak mask
    # invertible: a transformed mask goes back to the file's grid (Invertd, as inference will do)
    case = next(c for c in spec3d.datalist("all") if c["blob_present"] and "labelsTr" in c["blob"])
    transform = build_transforms(spec3d, 16, train=True, pixdim=3.0)
    transform.set_random_state(seed=1)
    inverted = Invertd("blob", transform=transform, orig_keys="blob", nearest_interp=True)(transform(case))["blob"]
    assert inverted.shape == (1, 32, 32, 32)
    np.testing.assert_allclose(inverted.affine.numpy(), DEMO_3D_AFFINE, atol=1e-5)
    back, truth = inverted[0].numpy() > 0.5, np.asarray(nib.load(case["blob"]).dataobj) > 0
    assert 2 * (back & truth).sum() / (back.sum() + truth.sum()) > 0.6


def _write_busi(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """A tiny BUSI tree: RGB grey images, one image with two masks (saved as RGB)."""
    rng = np.random.default_rng(0)
    first = np.zeros((40, 50), np.uint8)
    first[5:15, 5:20] = 255
    second = np.zeros((40, 50), np.uint8)
    second[25:35, 30:45] = 255
    layout = {
        "benign": [first, second],
        "malignant": [second],
        "normal": [np.zeros((40, 50), np.uint8)],
    }
    for cls, masks in layout.items():
        (root / cls).mkdir(parents=True)
        grey = rng.integers(0, 256, (40, 50), dtype=np.uint8)
        Image.fromarray(np.stack([grey] * 3, -1)).save(root / cls / f"{cls} (1).png")
        for k, mask in enumerate(masks):
            suffix = "_mask" if k == 0 else f"_mask_{k}"
            data = np.stack([mask] * 3, -1) if cls == "benign" else mask  # RGB masks (all of a list alike)
            Image.fromarray(data).save(root / cls / f"{cls} (1){suffix}.png")
    return first, second


def test_busi_like_masks_are_or_ed(tmp_path):
    first, second = _write_busi(tmp_path)
    spec = load_spec(SPECS / "breast_ultrasound.yaml", root=str(tmp_path))
    datalist = spec.datalist("all")
    benign = next(c for c in datalist if c["case_id"] == "benign_1")
    assert isinstance(benign["lesion"], list) and len(benign["lesion"]) == 2
    samples = _samples(_batches(datalist, build_transforms(spec, (50, 40), train=False)))
    by_id = {s["case_id"]: s for s in samples}
    assert by_id["benign_1"]["image"].shape == (1, 50, 40)  # RGB -> one grey channel, PIL's (W, H)
    expected = ((first > 0) | (second > 0)).T.astype(np.float32)
    np.testing.assert_array_equal(by_id["benign_1"]["lesion"][0].numpy(), expected)
    np.testing.assert_array_equal(by_id["malignant_1"]["lesion"][0].numpy(), (second > 0).T.astype(np.float32))
    assert by_id["normal_1"]["lesion_present"] and not by_id["normal_1"]["lesion"].any()
    assert [int(by_id[c]["diagnosis"]) for c in ("normal_1", "benign_1", "malignant_1")] == [0, 1, 2]
    assert by_id["benign_1"]["diagnosis"].dtype == torch.int64


def test_multi_view_inputs_do_not_break(tmp_path):
    """MRNet-like named views with different slice counts: each view is resized, batches collate."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        np.save(tmp_path / f"{i:04d}_axial.npy", rng.random((5 + i, 16, 16)).astype(np.float32))
        np.save(tmp_path / f"{i:04d}_coronal.npy", rng.random((9 - i, 16, 16)).astype(np.float32))
        rows.append([f"{i:04d}", i % 2 if i != 3 else ""])
    with open(tmp_path / "labels.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["case", "abnormal"], *rows])
    spec = DatasetSpec.model_validate(
        {
            "name": "views",
            "root": str(tmp_path),
            "spatial_dims": 3,
            "cases": {"csv": "labels.csv"},
            "case_id": "{case}",
            "inputs": {"axial": "{case}_axial.npy", "coronal": "{case}_coronal.npy"},
            "tasks": [{"name": "abnormal", "kind": "binary", "label": {"field": "abnormal"}}],
            "splits": {"method": "none"},
        }
    )
    transform = build_transforms(spec, (8, 16, 16), train=True, resize="resize")
    batch = _batches(spec.datalist("all"), transform)[0]
    assert batch["axial"].shape == batch["coronal"].shape == (4, 1, 8, 16, 16)
    assert batch["abnormal_present"].tolist() == [True, True, True, False]


def test_bundle_style_config(spec2d, demo, monkeypatch):
    monkeypatch.setenv("MEDMTL_DEMO_DIR", demo["out"])
    config = {
        "transforms": {
            "_target_": "medmtl.transforms.build_transforms",
            "spec": str(SPECS / "demo.yaml"),
            "spatial_size": [32, 32],
            "train": True,
        }
    }
    transform = ConfigParser(config).get_parsed_content("transforms")
    assert isinstance(transform, Compose)
    case = load_spec(SPECS / "demo.yaml").datalist("all")[0]
    out = transform(case)
    assert out["image"].shape == (1, 32, 32) and out["lesion"].shape == (1, 32, 32)


def test_bad_arguments_are_clear_errors(spec2d):
    with pytest.raises(ValueError, match=r"spatial_size=\(64, 64, 64\).*2D spec"):
        build_transforms(spec2d, (64, 64, 64))
    with pytest.raises(ValueError, match="intensity='fancy' is not one of"):
        build_transforms(spec2d, 64, intensity="fancy")
    with pytest.raises(ValueError, match="flip_axes has axis 2"):
        build_transforms(spec2d, 64, train=True, flip_axes=(2,))
    with pytest.raises(ValueError, match="spec must be"):
        build_transforms(42, 64)


@pytest.mark.shared_data
def test_real_busi_multi_mask_cases(shared_data):
    spec = load_spec(SPECS / "breast_ultrasound.yaml", root=str(shared_data / "busi" / "Dataset_BUSI_with_GT"))
    datalist = spec.datalist("all")
    multi = [c for c in datalist if isinstance(c.get("lesion"), list)][:3]
    normal = [c for c in datalist if c["case_id"].startswith("normal")][:1]
    assert multi and normal
    samples = _samples(_batches(multi + normal, build_transforms(spec, 64, train=True)))
    for sample, case in zip(samples, multi + normal, strict=True):
        assert sample["image"].shape == (1, 64, 64) and sample["lesion"].shape == (1, 64, 64)
        assert set(torch.unique(sample["lesion"]).tolist()) <= {0.0, 1.0}
        assert int(sample["diagnosis"]) == case["diagnosis"]
    # no resizing: the merged mask is exactly the union of the files
    case = multi[0]
    width, height = Image.open(case["image"]).size
    merged = build_transforms(spec, (width, height))(case)["lesion"][0].numpy()
    union = np.any([np.asarray(Image.open(p)) > 0 for p in case["lesion"]], axis=0).T
    np.testing.assert_array_equal(merged > 0, union)
