"""The writer's masks, entropy column and maps equal those of mapping each task back on its own, then the argmax.

The writer maps every task's channels back in one inversion and takes the argmax class by class;
the reference here is the plain path computed in the test: MONAI ``Invertd`` on one task's logits at a
time, then ``torch.argmax`` over the classes, read against the files the writer wrote.
"""

from __future__ import annotations

import csv
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    Invertd,
    LoadImage,
    LoadImaged,
    Orientationd,
    Resized,
    ResizeWithPadOrCropd,
    Spacingd,
)
from PIL import Image

from medmtl.data.task_keys import pred_key
from medmtl.inference import MultiTaskPredictionWriter

SEG_TASKS = [
    {"name": "brain", "kind": "segmentation", "classes": ["background", "brain"]},
    {"name": "tissue", "kind": "segmentation", "classes": ["background", "csf", "grey", "white"]},
]
TASKS = [*SEG_TASKS, {"name": "abnormal", "kind": "binary"}]


def _reference(preprocessing: Compose, image: MetaTensor, logits: torch.Tensor) -> torch.Tensor:
    """The plain path: this task's logits alone through ``Invertd``."""
    invert = Invertd("pred", transform=preprocessing, orig_keys="image", nearest_interp=False, to_tensor=True)
    return invert({"image": image, "pred": MetaTensor(logits, meta=dict(image.meta))})["pred"].as_tensor()


def _mean_entropy_inside(logits: torch.Tensor, mask: torch.Tensor) -> float | None:
    """The table's ``<task>_mean_entropy`` computed over the whole volume, as a reader would."""
    p = torch.softmax(logits, 0)
    h = torch.special.entr(p).sum(0) / math.log(p.shape[0])
    inside = mask > 0
    return round(float(h[inside].mean()), 6) if inside.any() else None


def _logits(classes: int, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Smooth random logits with exact ties: a block where two classes are equal everywhere."""
    coarse = torch.randn(1, classes, *(max(s // 3, 2) for s in shape), generator=generator)
    mode = "trilinear" if len(shape) == 3 else "bilinear"
    logits = torch.nn.functional.interpolate(coarse, size=shape, mode=mode, align_corners=False)[0] * 3
    block = tuple(slice(0, s // 2) for s in shape)
    logits[(classes - 1, *block)] = logits[(0, *block)]  # a tie: the first class must win it
    return logits.contiguous()


def _table(writer: MultiTaskPredictionWriter, rows: list[dict]) -> list[dict[str, str]]:
    writer.rows.extend(rows)
    with open(writer.write_table(), newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_3d_masks_equal_inverting_each_task_then_argmax(tmp_path) -> None:
    # LPS-like axes and anisotropic voxels: the inversion resamples, reorients and crops/pads back
    affine = np.array([[-1.2, 0, 0, 30], [0, -0.9, 0, 12], [0, 0, 1.6, -4], [0, 0, 0, 1]])
    volume = np.random.default_rng(0).random((23, 19, 11)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, affine), tmp_path / "case.nii.gz")
    preprocessing = Compose(
        [
            LoadImaged("image", image_only=True),
            EnsureChannelFirstd("image"),
            Orientationd("image", axcodes="RAS"),
            Spacingd("image", pixdim=(2.0, 2.0, 2.0), mode="bilinear"),
            ResizeWithPadOrCropd("image", spatial_size=(10, 12, 6)),  # crops x, pads y, crops z
        ]
    )
    image = preprocessing({"image": str(tmp_path / "case.nii.gz")})["image"]
    assert [op["class"] for op in image.applied_operations] == ["Orientation", "SpatialResample", "ResizeWithPadOrCrop"]
    generator = torch.Generator().manual_seed(1)
    logits = {t["name"]: _logits(len(t["classes"]), tuple(image.shape[1:]), generator) for t in SEG_TASKS}
    saliency = torch.rand(1, *image.shape[1:], generator=generator)
    sample = {
        "image": image,
        "case_id": "c1",
        **{pred_key(name): value for name, value in logits.items()},
        pred_key("abnormal"): torch.tensor([0.3]),
        "pred": {**logits, "saliency": saliency},
    }
    writer = MultiTaskPredictionWriter(TASKS, tmp_path / "out", invert_transform=preprocessing, maps=("saliency",))
    (row,) = _table(writer, [writer.write_sample(sample)])

    for task in SEG_TASKS:
        name = task["name"]
        reference_logits = _reference(preprocessing, image, logits[name])
        reference = reference_logits.argmax(0).to(torch.uint8).numpy()
        written = nib.load(tmp_path / "out" / row[f"{name}_file"])
        assert written.shape == volume.shape
        np.testing.assert_array_equal(written.affine, nib.load(tmp_path / "case.nii.gz").affine)
        mask = np.asarray(written.dataobj)
        assert np.abs(mask.astype(np.int64) - reference.astype(np.int64)).max() == 0
        assert 0 < (mask > 0).sum() < mask.size  # both classes present: the comparison means something
        assert int(row[f"{name}_voxels"]) == int((reference > 0).sum())
        assert float(row[f"{name}_mean_entropy"]) == _mean_entropy_inside(reference_logits, torch.from_numpy(reference))
    saliency_file = np.asarray(nib.load(tmp_path / "out" / row["saliency_file"]).dataobj)
    np.testing.assert_array_equal(saliency_file, _reference(preprocessing, image, saliency)[0].numpy())


def test_2d_masks_equal_inverting_each_task_then_argmax(tmp_path) -> None:
    pixels = (np.random.default_rng(2).random((37, 45)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "case.png")
    preprocessing = Compose(
        [
            LoadImaged("image", image_only=True),
            EnsureChannelFirstd("image"),
            Resized("image", spatial_size=(32, 32), mode="bilinear"),  # the 2D bundles' resize
        ]
    )
    image = preprocessing({"image": str(tmp_path / "case.png")})["image"]
    generator = torch.Generator().manual_seed(3)
    logits = {t["name"]: _logits(len(t["classes"]), (32, 32), generator) for t in SEG_TASKS}
    sample = {"image": image, "case_id": "c2", **{pred_key(name): value for name, value in logits.items()}}
    writer = MultiTaskPredictionWriter(SEG_TASKS, tmp_path / "out", invert_transform=preprocessing)
    (row,) = _table(writer, [writer.write_sample(sample)])

    for task in SEG_TASKS:
        name = task["name"]
        reference_logits = _reference(preprocessing, image, logits[name])
        reference = reference_logits.argmax(0).to(torch.uint8)
        assert row[f"{name}_file"].endswith(".png")
        written = LoadImage(image_only=True)(tmp_path / "out" / row[f"{name}_file"]).numpy().astype(np.int64)
        assert list(written.shape) == image.meta["spatial_shape"].tolist() == [45, 37]  # the input's size
        scale = 255 if len(task["classes"]) == 2 else 1  # binary masks are written 0/255 to be visible
        assert np.abs(written - reference.numpy().astype(np.int64) * scale).max() == 0
        assert len(np.unique(written)) == len(task["classes"])
        assert float(row[f"{name}_mean_entropy"]) == _mean_entropy_inside(reference_logits, reference)


@pytest.mark.parametrize("uncertainty_maps", [False, True])
def test_entropy_column_same_with_or_without_the_map(tmp_path, uncertainty_maps: bool) -> None:
    """The column is computed inside the mask only unless the map is asked for; both give the same value."""
    image = MetaTensor(torch.rand(1, 7, 8, 9), affine=torch.eye(4, dtype=torch.float64))
    logits = _logits(4, (7, 8, 9), torch.Generator().manual_seed(4))
    writer = MultiTaskPredictionWriter(SEG_TASKS[1:], tmp_path / "out", uncertainty_maps=uncertainty_maps)
    row = writer.write_sample({"image": image, "case_id": "c3", pred_key("tissue"): logits})
    assert row["tissue_mean_entropy"] == _mean_entropy_inside(logits, logits.argmax(0))
    assert ("tissue_entropy_file" in row) == uncertainty_maps
