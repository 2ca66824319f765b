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


def _reference_nearest(preprocessing: Compose, image: MetaTensor, values: torch.Tensor) -> torch.Tensor:
    """MONAI's own nearest-neighbour inversion of ``values`` (a label map or any float map), alone."""
    invert = Invertd("pred", transform=preprocessing, orig_keys="image", nearest_interp=True, to_tensor=True)
    return invert({"image": image, "pred": MetaTensor(values.float(), meta=dict(image.meta))})["pred"].as_tensor()


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(logits, 0)
    return torch.special.entr(p).sum(0) / math.log(p.shape[0])


def _smooth_logits(classes: int, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Logits varying over the whole volume (structures many voxels wide, so most voxels are inside one)."""
    coarse = torch.randn(1, classes, *(3,) * len(shape), generator=generator)
    return torch.nn.functional.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)[0] * 3


def test_3d_nearest_masks_equal_nearest_inverting_the_argmax(tmp_path) -> None:
    """``mask_resampling="nearest"``: the argmax on the network's grid, mapped back alone by nearest neighbour.

    The entropy map is the network grid's entropy mapped back the same way, the mean entropy column
    is taken on the network's grid; the default writer's masks differ from these only within one
    network voxel (2 mm) of a label change.
    """
    from scipy.ndimage import maximum_filter, minimum_filter

    spacing = (1.2, 0.9, 1.6)
    affine = np.array([[-spacing[0], 0, 0, 30], [0, -spacing[1], 0, 12], [0, 0, spacing[2], -4], [0, 0, 0, 1]])
    shape = (41, 45, 23)  # 49x40x37 mm: 25x20x18 voxels of 2 mm before the crop/pad
    nib.save(nib.Nifti1Image(np.random.default_rng(5).random(shape).astype(np.float32), affine), tmp_path / "c.nii.gz")
    preprocessing = Compose(
        [
            LoadImaged("image", image_only=True),
            EnsureChannelFirstd("image"),
            Orientationd("image", axcodes="RAS"),
            Spacingd("image", pixdim=(2.0, 2.0, 2.0), mode="bilinear"),
            ResizeWithPadOrCropd("image", spatial_size=(22, 24, 16)),  # crops x, pads y, crops z
        ]
    )
    image = preprocessing({"image": str(tmp_path / "c.nii.gz")})["image"]
    generator = torch.Generator().manual_seed(6)
    logits = {t["name"]: _smooth_logits(len(t["classes"]), tuple(image.shape[1:]), generator) for t in SEG_TASKS}
    sample = {"image": image, "case_id": "c4", **{pred_key(name): value for name, value in logits.items()}}
    rows = {}
    for mode in ("interpolate", "nearest"):
        writer = MultiTaskPredictionWriter(
            SEG_TASKS, tmp_path / mode, invert_transform=preprocessing, uncertainty_maps=True, mask_resampling=mode
        )
        (rows[mode],) = _table(writer, [writer.write_sample(sample)])

    row = rows["nearest"]
    for task in SEG_TASKS:
        name = task["name"]
        reference = _reference_nearest(preprocessing, image, logits[name].argmax(0, keepdim=True))[0].numpy()
        written = nib.load(tmp_path / "nearest" / row[f"{name}_file"])
        np.testing.assert_array_equal(written.affine, nib.load(tmp_path / "c.nii.gz").affine)
        mask = np.asarray(written.dataobj)
        assert mask.shape == reference.shape == shape
        np.testing.assert_array_equal(mask, reference.astype(np.uint8))
        assert int(row[f"{name}_voxels"]) == int((mask > 0).sum())
        entropy = _reference_nearest(preprocessing, image, _entropy(logits[name])[None])[0].numpy()
        written_entropy = np.asarray(nib.load(tmp_path / "nearest" / row[f"{name}_entropy_file"]).dataobj)
        np.testing.assert_allclose(written_entropy, entropy, rtol=1e-6, atol=1e-7)
        # the column needs every class: taken on the network's grid, inside the argmax there
        assert float(row[f"{name}_mean_entropy"]) == _mean_entropy_inside(logits[name], logits[name].argmax(0))

        default = np.asarray(nib.load(tmp_path / "interpolate" / rows["interpolate"][f"{name}_file"]).dataobj)
        differ = default != mask
        # within one 2 mm network voxel, in input voxels per axis, the nearest mask has another label
        reach = tuple(2 * math.ceil(2.0 / s) + 1 for s in spacing)
        near_border = maximum_filter(mask, size=reach) != minimum_filter(mask, size=reach)
        assert differ.any() and not (differ & ~near_border).any()
        assert differ.sum() < near_border.sum() < mask.size  # the interior agrees


def test_2d_nearest_masks_equal_nearest_inverting_the_argmax(tmp_path) -> None:
    Image.fromarray((np.random.default_rng(7).random((37, 45)) * 255).astype(np.uint8)).save(tmp_path / "c.png")
    preprocessing = Compose(
        [LoadImaged("image", image_only=True), EnsureChannelFirstd("image"), Resized("image", spatial_size=(32, 32))]
    )
    image = preprocessing({"image": str(tmp_path / "c.png")})["image"]
    logits = {t["name"]: _logits(len(t["classes"]), (32, 32), torch.Generator().manual_seed(8)) for t in SEG_TASKS}
    sample = {"image": image, "case_id": "c5", **{pred_key(name): value for name, value in logits.items()}}
    writer = MultiTaskPredictionWriter(
        SEG_TASKS, tmp_path / "out", invert_transform=preprocessing, mask_resampling="nearest"
    )
    (row,) = _table(writer, [writer.write_sample(sample)])
    for task in SEG_TASKS:
        name = task["name"]
        reference = _reference_nearest(preprocessing, image, logits[name].argmax(0, keepdim=True))[0].long().numpy()
        written = LoadImage(image_only=True)(tmp_path / "out" / row[f"{name}_file"]).numpy().astype(np.int64)
        scale = 255 if len(task["classes"]) == 2 else 1
        assert written.shape == reference.shape == (45, 37)
        np.testing.assert_array_equal(written, reference * scale)
        assert len(np.unique(written)) == len(task["classes"])


def test_mask_resampling_without_inversion_and_unknown_values(tmp_path) -> None:
    """Nothing to resample: both modes write the same; an unknown mode names the bundle key."""
    image = MetaTensor(torch.rand(1, 7, 8, 9), affine=torch.eye(4, dtype=torch.float64))
    logits = _logits(4, (7, 8, 9), torch.Generator().manual_seed(9))
    files = {}
    for mode in ("interpolate", "nearest"):
        writer = MultiTaskPredictionWriter(SEG_TASKS[1:], tmp_path / mode, mask_resampling=mode)
        row = writer.write_sample({"image": image, "case_id": "c6", pred_key("tissue"): logits})
        files[mode] = (tmp_path / mode / row["tissue_file"]).read_bytes(), row["tissue_mean_entropy"]
    assert files["interpolate"] == files["nearest"]
    with pytest.raises(ValueError, match="mask_resampling 'linear'.*interpolate, nearest.*--mask_resampling"):
        MultiTaskPredictionWriter(SEG_TASKS, tmp_path / "x", mask_resampling="linear")


def test_nearest_mode_postprocesses_the_written_mask_and_the_entropy_region(tmp_path) -> None:
    """With a postprocessing record, "nearest" keeps the largest component of the mapped-back mask, and
    the mean entropy column is taken inside the largest component of the network grid's argmax."""
    from monai.transforms import KeepLargestConnectedComponent

    from medmtl.metrics.postprocessing import Postprocessing, PostprocessingOp, TaskPostprocessing

    Image.fromarray((np.random.default_rng(10).random((50, 45)) * 255).astype(np.uint8)).save(tmp_path / "c.png")
    preprocessing = Compose(
        [LoadImaged("image", image_only=True), EnsureChannelFirstd("image"), Resized("image", spatial_size=(32, 32))]
    )
    image = preprocessing({"image": str(tmp_path / "c.png")})["image"]
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[8:24, 6:20] = inside[26:29, 26:29] = True  # a structure and a speck apart from it
    margin = _logits(1, (32, 32), torch.Generator().manual_seed(11))[0].abs() + 0.5  # varied certainty
    logits = torch.stack([torch.zeros(32, 32), torch.where(inside, margin, -margin)])
    record = Postprocessing({"brain": TaskPostprocessing("brain", ("brain",), PostprocessingOp("keep_largest"))})
    writer = MultiTaskPredictionWriter(
        SEG_TASKS[:1],
        tmp_path / "out",
        invert_transform=preprocessing,
        mask_resampling="nearest",
        postprocessing=record,
    )
    (row,) = _table(writer, [writer.write_sample({"image": image, "case_id": "c7", pred_key("brain"): logits})])

    def keep(mask: torch.Tensor) -> torch.Tensor:  # MONAI's transform works in place: on a copy
        return KeepLargestConnectedComponent(applied_labels=[1], connectivity=2)(mask.clone())

    network_mask = logits.argmax(0, keepdim=True)
    assert keep(network_mask).sum() < network_mask.sum()  # the speck is there, and removed
    reference = keep(_reference_nearest(preprocessing, image, network_mask).long())[0].numpy()
    written = LoadImage(image_only=True)(tmp_path / "out" / row["brain_file"]).numpy().astype(np.int64)
    np.testing.assert_array_equal(written, reference * 255)
    assert int(row["brain_voxels"]) == int(reference.sum())
    assert float(row["brain_mean_entropy"]) == _mean_entropy_inside(logits, keep(network_mask)[0])
