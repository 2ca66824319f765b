"""ToGrey / MergeMasks on files as MONAI loads them, and the EnsureTaskLabelsd batch contract."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor, list_data_collate
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
from PIL import Image

from medmtl.data.tasks import Task
from medmtl.transforms import EnsureTaskLabelsd, MergeMasks, MergeMasksd, ToGrey, ToGreyd, colour_layout


def _load(value):
    return Compose([LoadImaged("x", image_only=True), EnsureChannelFirstd("x")])({"x": value})["x"]


def _two_masks() -> tuple[np.ndarray, np.ndarray]:
    a = np.zeros((20, 30), np.uint8)
    a[2:6, 3:9] = 255
    b = np.zeros((20, 30), np.uint8)
    b[10:15, 20:25] = 255
    b[4:6, 8:12] = 255  # overlaps a
    return a, b


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA"])
def test_merge_two_mask_files_is_their_union(tmp_path, mode):
    a, b = _two_masks()
    paths = []
    for name, array in (("m.png", a), ("m_1.png", b)):
        bands = {"L": [array], "RGB": [array] * 3, "RGBA": [array] * 3 + [np.full_like(array, 255)]}
        bands["LA"] = [array, np.full_like(array, 255)]
        data = np.stack(bands[mode], -1) if mode != "L" else array
        Image.fromarray(data).save(tmp_path / name)
        paths.append(str(tmp_path / name))
    loaded = _load(paths)
    assert loaded.shape[0] == 2 * Image.getmodebands(mode)
    merged = MergeMasksd("x", binarize=True)({"x": loaded})["x"]
    assert isinstance(merged, MetaTensor) and merged.dtype == torch.float32
    expected = ((a > 0) | (b > 0)).T  # PIL reader gives (W, H)
    np.testing.assert_array_equal(merged[0].numpy(), expected.astype(np.float32))
    single = MergeMasks(values={255: 1})(_load(paths[0]))
    assert single.shape == (1, 30, 20)
    np.testing.assert_array_equal(single[0].numpy(), (a > 0).T.astype(np.float32))


def test_merge_masks_values_map_and_nifti_list(tmp_path):
    labels = np.zeros((6, 7, 8), np.uint8)
    labels[1:3, 1:3, 1:3] = 4
    labels[4, 4, 4] = 2
    other = np.zeros_like(labels)
    other[5, 6, 7] = 1
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    for name, array in (("a.nii.gz", labels), ("b.nii.gz", other)):
        nib.save(nib.Nifti1Image(array, affine), str(tmp_path / name))
    mapped = MergeMasks(values={4: 3})(_load(str(tmp_path / "a.nii.gz")))
    assert sorted(torch.unique(mapped).tolist()) == [0, 2, 3]  # 4 -> 3, unlisted 2 kept
    merged = MergeMasks(binarize=True)(_load([str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz")]))
    assert merged.shape == (1, 6, 7, 8) and int(merged.sum()) == 8 + 1 + 1
    np.testing.assert_allclose(merged.affine.numpy(), affine)


def test_to_grey(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (12, 10), dtype=np.uint8)
    colour = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    Image.fromarray(np.stack([grey] * 3 + [np.full_like(grey, 255)], -1)).save(tmp_path / "g.png")
    Image.fromarray(colour).save(tmp_path / "c.png")
    Image.fromarray(grey).save(tmp_path / "l.png")
    out = ToGreyd("x")({"x": _load(str(tmp_path / "g.png"))})["x"]
    assert out.shape == (1, 10, 12) and isinstance(out, MetaTensor)
    np.testing.assert_allclose(out[0].numpy(), grey.T, atol=0.01)  # grey saved as RGBA stays the same grey
    luma = np.asarray(Image.open(tmp_path / "c.png").convert("L"), dtype=float)
    np.testing.assert_allclose(ToGrey()(_load(str(tmp_path / "c.png")))[0].numpy(), luma.T, atol=1.0)
    plain = _load(str(tmp_path / "l.png"))
    assert ToGrey()(plain) is plain
    assert colour_layout(plain) == (1, 1)
    bad = MetaTensor(torch.zeros(4, 5, 5), meta={"mode": "RGB", "filename_or_obj": "x.png"})
    with pytest.raises(ValueError, match="not a whole number of 3-band images"):
        ToGrey()(bad)


TASKS = [
    Task(name="seg", kind="segmentation", classes=["background", "lesion"]),
    Task(name="bin", kind="binary"),
    Task(name="multi", kind="multiclass", classes=["a", "b", "c"]),
    Task(name="many", kind="multilabel", classes=["x", "y", "z", "w"]),
]


def _sample(labelled: bool, case_id: str) -> dict:
    image = MetaTensor(torch.rand(1, 8, 9), affine=torch.diag(torch.tensor([2.0, 3.0, 1.0, 1.0])))
    sample = {"case_id": case_id, "image": image}
    for task in TASKS:
        sample[f"{task.name}_present"] = int(labelled)
    if labelled:
        mask = MetaTensor(torch.zeros(1, 8, 9), affine=image.affine)
        mask[0, 2:4, 3:5] = 1
        sample.update(seg=mask, bin=1, multi=2, many=[0, 1, 1, 0])
    return sample


def test_ensure_task_labels_collates_mixed_batches():
    transform = EnsureTaskLabelsd(TASKS)
    samples = [transform(_sample(labelled, f"c{i}")) for i, labelled in enumerate([False, True, False, True])]
    batch = list_data_collate(samples)
    expected = torch.tensor([False, True, False, True])
    for task in TASKS:
        assert torch.equal(batch[f"{task.name}_present"], expected)
    assert batch["seg"].shape == (4, 1, 8, 9) and batch["seg"].dtype == torch.float32
    assert isinstance(batch["seg"], MetaTensor)
    np.testing.assert_allclose(batch["seg"].affine[0].numpy(), np.diag([2.0, 3.0, 1.0, 1.0]))  # placeholder geometry
    assert batch["seg"][0].sum() == 0 and batch["seg"][1].sum() == 4
    assert batch["bin"].shape == (4, 1) and batch["bin"].dtype == torch.float32
    assert batch["bin"].flatten().tolist() == [0.0, 1.0, 0.0, 1.0]
    assert batch["multi"].shape == (4,) and batch["multi"].dtype == torch.int64
    assert batch["multi"].tolist() == [0, 2, 0, 2]
    assert batch["many"].shape == (4, 4) and batch["many"].dtype == torch.float32
    assert batch["many"][1].tolist() == [0.0, 1.0, 1.0, 0.0] and batch["many"][0].sum() == 0


def test_without_ensure_task_labels_collation_breaks():
    """The reason EnsureTaskLabelsd exists (as checked in STYLE.md)."""
    with pytest.raises(KeyError):
        list_data_collate([_sample(True, "a"), _sample(False, "b")])


def test_ensure_task_labels_flags_and_errors():
    transform = EnsureTaskLabelsd([t.model_dump() for t in TASKS], seg_dtype="uint8")  # dicts, as from a config
    sample = _sample(True, "c0")
    sample["bin_present"] = 0  # the datalist says absent: the value is not trusted
    out = transform(sample)
    assert not out["bin_present"] and out["bin"].tolist() == [0.0]
    assert out["seg"].dtype == torch.uint8 and out["seg_present"]
    no_flags = {k: v for k, v in _sample(True, "c1").items() if not k.endswith("_present")}
    assert all(transform(no_flags)[f"{t.name}_present"] for t in TASKS)
    wrong = _sample(True, "c2")
    wrong["seg"] = torch.zeros(2, 8, 9)
    with pytest.raises(ValueError, match=r"case c2.*MergeMasksd"):
        transform(wrong)
    wrong = _sample(True, "c3")
    wrong["many"] = [1, 0]
    with pytest.raises(ValueError, match="expected 4 value"):
        transform(wrong)
    wrong = _sample(True, "c4")
    wrong["seg"] = "/data/mask.png"
    with pytest.raises(ValueError, match="still a path"):
        transform(wrong)
    with pytest.raises(KeyError, match="image key 'img'"):
        EnsureTaskLabelsd(TASKS, image_key="img")(_sample(False, "c5"))
    with pytest.raises(ValueError, match="at least one task"):
        EnsureTaskLabelsd([])
