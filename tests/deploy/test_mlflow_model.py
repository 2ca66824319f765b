"""The MLflow model's pieces that need no trained run: its per-task columns, its inputs, its files.

The model end to end (logged by a training, loaded by alias, served over HTTP) is tested on the demo run
in tests/bundles/test_demo_bundle.py.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import logit

from medmtl.data.tasks import as_tasks
from medmtl.deploy.mlflow_model import ModelInputError, model_inputs
from medmtl.inference import MultiTaskPredictionWriter
from medmtl.metrics.calibration import CalibrationRecord, TaskTemperature
from medmtl.metrics.decisions import Decisions, TaskDecision
from medmtl.metrics.task_columns import image_level_columns
from medmtl.tracking.model_files import ModelFilesError, is_model_uri, run_folder

TASKS = as_tasks(
    [
        {"name": "malignant", "kind": "binary", "classes": ["benign", "malignant"]},
        {"name": "findings", "kind": "multilabel", "classes": ["mass", "calcification", "distortion"]},
        {"name": "grade", "kind": "multiclass", "classes": ["low", "mid", "high"]},
    ]
)
DECISIONS = Decisions(
    {
        "malignant": TaskDecision("malignant", "binary", "youden", ("malignant",), thresholds=(0.3,)),
        "findings": TaskDecision(
            "findings", "multilabel", "youden", ("mass", "calcification", "distortion"), thresholds=(0.2, 0.6, 0.45)
        ),
        "grade": TaskDecision(
            "grade", "multiclass", "prior_correction", ("low", "mid", "high"), prior_weights=(0.2, 1.0, 3.0)
        ),
    }
)
CALIBRATION = CalibrationRecord(
    {
        name: TaskTemperature(kind, list(classes), t, 50, 0.5, 0.4, "validation")
        for name, kind, classes, t in (
            ("malignant", "binary", ("benign", "malignant"), 2.0),
            ("findings", "multilabel", ("mass", "calcification", "distortion"), 0.7),
            ("grade", "multiclass", ("low", "mid", "high"), 0.5),
        )
    }
)
LOGITS = {
    "malignant": torch.tensor([float(logit(0.35))]),
    "findings": torch.tensor([-1.0, 0.3, 0.0]),
    "grade": torch.tensor([1.0, 0.8, 0.0]),
}


@pytest.mark.parametrize(
    ("decisions", "calibration"),
    [(None, None), (DECISIONS, None), (DECISIONS, CALIBRATION)],
    ids=["plain", "decided", "calibrated"],
)
def test_columns_are_those_of_the_inference_table(tmp_path, decisions, calibration) -> None:
    """Same columns and values as the inference bundle's writer for binary, multilabel and multiclass tasks."""
    writer = MultiTaskPredictionWriter(TASKS, tmp_path, decisions=decisions, calibration=calibration)
    written = writer.write_sample({"case_id": "a", **{f"pred_{k}": v for k, v in LOGITS.items()}, "pred": {}})
    ours = {"case_id": "a"}
    for task in TASKS:
        ours.update(image_level_columns(task, LOGITS[task.name], decisions, calibration))
    assert list(ours) == list(written)
    for key, value in written.items():
        assert ours[key] == (pytest.approx(value, abs=1e-6) if isinstance(value, float) else value), key
    if decisions is not None:  # the record changed the decisions: 0.35 >= 0.3, and the prior correction
        assert ours["malignant"] == 1 and ours["grade"] == "high" and ours["findings_calcification"] == 0


def test_inputs_as_paths_arrays_rows_and_frames() -> None:
    image = np.arange(12, dtype=np.float32).reshape(3, 4)
    frame = pd.DataFrame({"path": ["a.png", None], "image": [None, image]})
    found = model_inputs(frame)
    assert found[0] == "a.png" and np.array_equal(found[1], image)
    assert model_inputs("b.nii.gz") == ["b.nii.gz"] and len(model_inputs(image)) == 1
    assert model_inputs({"path": ["x.png", "y.png"]}) == ["x.png", "y.png"]
    assert np.array_equal(model_inputs([{"image": image.tolist()}])[0], image)  # JSON lists become arrays
    with pytest.raises(ModelInputError, match=r"input 1: no 'path' and no 'image'.*input 2"):
        model_inputs([{"path": "x.png"}, {"other": 1}, {"image": None}])


def test_a_folder_that_is_not_a_model_or_not_empty_is_refused(tmp_path) -> None:
    (tmp_path / "files").mkdir()
    with pytest.raises(ModelFilesError, match="not the files of a medmtl MLflow model"):
        run_folder(tmp_path / "files", tmp_path / "run")
    for name in ("run_config.json", "models/best.pt", "spec/demo.yaml"):
        (tmp_path / "files" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "files" / name).write_text("{}")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("")
    with pytest.raises(ModelFilesError, match="used exists and is not an empty folder"):
        run_folder(tmp_path / "files", tmp_path / "used")
    assert is_model_uri("models:/demo@champion") and is_model_uri("runs:/0a1b/model")
    assert not is_model_uri("runs/demo") and not is_model_uri(tmp_path)


class _FixedLogits(torch.nn.Module):
    """A network whose segmentation logits are given: the masks then depend only on how they go back."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"lesion": self.logits[None].expand(x.shape[0], -1, -1, -1)}


@pytest.mark.parametrize("mode", ["interpolate", "nearest"])
def test_masks_go_back_to_the_input_grid_as_the_writer_maps_them(tmp_path, mode) -> None:
    """``mask_resampling`` (an MLflow param) gives the inference writer's masks: the logits interpolated, or the
    network grid's label map copied by nearest neighbour; another value is refused with the choices."""
    from monai.inferers import SimpleInferer
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImage, LoadImaged, Resized
    from PIL import Image

    from medmtl.deploy.mlflow_model import RunPredictor
    from medmtl.inference.writer import pred_key

    Image.fromarray((np.random.default_rng(3).random((37, 45)) * 255).astype(np.uint8)).save(tmp_path / "c.png")
    preprocessing = Compose(
        [LoadImaged("image", image_only=True), EnsureChannelFirstd("image"), Resized("image", spatial_size=(32, 32))]
    )
    coarse = torch.randn(1, 3, 5, 5, generator=torch.Generator().manual_seed(4))
    logits = torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=True)[0] * 3
    tasks = as_tasks([{"name": "lesion", "kind": "segmentation", "classes": ["background", "mass", "cyst"]}])
    predictor = RunPredictor(_FixedLogits(logits), tasks, "image", 2, preprocessing, SimpleInferer())
    (row,) = predictor.predict([str(tmp_path / "c.png")], return_masks=True, mask_resampling=mode)

    image = preprocessing({"image": str(tmp_path / "c.png")})["image"]
    writer = MultiTaskPredictionWriter(tasks, tmp_path / mode, invert_transform=preprocessing, mask_resampling=mode)
    written = writer.write_sample({"image": image, "case_id": "c", pred_key("lesion"): logits})
    expected = LoadImage(image_only=True)(tmp_path / mode / written["lesion_file"]).numpy().astype(np.uint8)
    assert row["lesion_mask"].shape == expected.shape == (45, 37)
    np.testing.assert_array_equal(row["lesion_mask"], expected)
    assert row["lesion_voxels"] == int(written["lesion_voxels"]) == int((expected > 0).sum())
    assert row["lesion_cyst_voxels"] == int((expected == 2).sum()) > 0
    if mode == "nearest":  # differs from the interpolated mask, near label changes only
        (default,) = predictor.predict([str(tmp_path / "c.png")], return_masks=True)
        assert (default["lesion_mask"] != row["lesion_mask"]).any()
    with pytest.raises(ModelInputError, match="mask_resampling 'linear': expected one of interpolate, nearest"):
        predictor.predict([str(tmp_path / "c.png")], mask_resampling="linear")
