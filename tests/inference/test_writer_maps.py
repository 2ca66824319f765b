"""The writer exports extra network maps (saliency) on the input grid, next to the masks."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd

from medmtl.inference import MultiTaskPredictionWriter

TASKS = [{"name": "lesion", "kind": "segmentation", "classes": ["background", "lesion"]}]


def test_saliency_map_written_on_the_input_grid(tmp_path) -> None:
    affine = np.array([[-2.0, 0, 0, 10], [0, 0, 1.5, -5], [0, 3.0, 0, 2], [0, 0, 0, 1]])
    volume = np.random.default_rng(0).random((6, 5, 4)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, affine), tmp_path / "case.nii.gz")
    preprocessing = Compose(
        [LoadImaged("image", image_only=True), EnsureChannelFirstd("image"), Orientationd("image", axcodes="RAS")]
    )
    sample = preprocessing({"image": str(tmp_path / "case.nii.gz")})
    image = sample["image"]
    assert isinstance(image, MetaTensor) and image.shape[1:] != volume.shape  # reoriented
    saliency = (image - image.min()) / (image.max() - image.min())  # a map aligned with the network input
    logits = torch.cat([-saliency, saliency])
    writer = MultiTaskPredictionWriter(TASKS, tmp_path / "out", invert_transform=preprocessing, maps=("saliency",))
    row = writer.write_sample(
        {"image": image, "case_id": "c1", "pred_lesion": logits, "pred": {"lesion": logits, "saliency": saliency}}
    )
    assert row["saliency_file"] == "saliency/c1.nii.gz"  # relative to the output folder
    written = nib.load(tmp_path / "out" / row["saliency_file"])
    np.testing.assert_allclose(written.affine, affine, atol=1e-5)
    expected = (volume - volume.min()) / (volume.max() - volume.min())
    np.testing.assert_allclose(np.asarray(written.dataobj).squeeze(), expected, atol=1e-5)
    assert nib.load(tmp_path / "out" / row["lesion_file"]).shape[:3] == volume.shape


def test_map_names_must_not_be_tasks(tmp_path) -> None:
    with pytest.raises(ValueError, match="task names"):
        MultiTaskPredictionWriter(TASKS, tmp_path, maps=("lesion",))
