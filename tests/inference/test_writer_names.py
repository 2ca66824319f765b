"""Awkward case ids through the real writer (MONAI ``SaveImage``): one file per case, each its own, a safe table."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor
from monai.engines.utils import IterationEvents
from PIL import Image

from medmtl.csv_safety import FORMULA_TRIGGERS
from medmtl.data.task_keys import pred_key
from medmtl.inference import MultiTaskPredictionWriter

TASKS = [
    {"name": "lesion", "kind": "segmentation", "classes": ["background", "lesion"]},
    {"name": "malignant", "kind": "binary"},
]
IDS = [
    "sub.01",
    "sub.02",
    "sub",
    "a/b",
    "a_b",
    "a\\b",
    "..",
    ".",
    "CON",
    "-3",
    "Sub01",
    "sub01",
    "患者.01",
    "x" * 300,
    "x" * 299 + "y",
    "=cmd|' /C calc'!A0",
    "+SUM(1,1)",
    "@SUM(1)",
    "",  # refused by data validation; the writer still gives it a file of its own
]
FORMULAS = {"=cmd|' /C calc'!A0", "+SUM(1,1)", "@SUM(1)"}
SHAPE_2D = (9, 11)  # room for len(IDS) + 1 distinct foreground sizes
SHAPE_3D = (4, 5, 6)
AFFINE_3D = torch.tensor([[2.0, 0, 0, -10], [0, 1.5, 0, 4], [0, 0, 3.0, 7], [0, 0, 0, 1]], dtype=torch.float64)


def _sample(case_id: str, size: int, shape: tuple[int, ...], affine: torch.Tensor) -> dict:
    """A case whose lesion mask has exactly ``size`` foreground pixels: its file shows whose it is."""
    image = MetaTensor(torch.rand(1, *shape), affine=affine)
    flat = torch.zeros(int(np.prod(shape)))
    flat[:size] = 1.0
    fg = flat.reshape(shape)
    return {
        "case_id": case_id,
        "image": image,
        pred_key("lesion"): torch.stack([1 - fg, fg]) * 4.0,
        pred_key("malignant"): torch.tensor([size - 10.0]),
    }


def _run(writer: MultiTaskPredictionWriter, samples: list[dict]) -> list[dict[str, str]]:
    """The writer attached to an Ignite engine that fires MONAI's iteration events, as an evaluator does."""

    def step(engine: Engine, batch: list[dict]) -> list[dict]:
        engine.state.output = batch
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return batch

    engine = Engine(step)
    engine.register_events(*IterationEvents)
    writer.attach(engine)
    engine.run([samples[i : i + 4] for i in range(0, len(samples), 4)], max_epochs=1)
    with open(writer.table_path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _expected_id(case_id: str) -> str:
    return "'" + case_id if case_id in FORMULAS else case_id


def _check_table(out: Path, rows: list[dict[str, str]], ids: list[str], read_size) -> None:
    assert [r["case_id"] for r in rows] == [_expected_id(c) for c in ids]
    assert not any(r["case_id"].startswith(FORMULA_TRIGGERS) for r in rows if r["case_id"] != "-3")
    files = [out / r["lesion_file"] for r in rows]
    assert len(set(files)) == len(ids) and all(f.is_file() for f in files)
    assert sorted(p for p in (out / "lesion").iterdir()) == sorted(files)  # nothing overwritten, nothing extra
    for size, (row, path) in enumerate(zip(rows, files, strict=True), start=1):
        assert path.resolve().parent == (out / "lesion").resolve()
        assert len(path.name) <= 130 and not path.name.startswith((".", "-"))
        assert read_size(path) == size == int(row["lesion_voxels"])  # the case's own mask
        assert float(row["malignant_probability"]) == pytest.approx(1 / (1 + np.exp(10.0 - size)), abs=1e-6)


def test_2d_png_masks_one_file_per_case(tmp_path) -> None:
    out = tmp_path / "predictions"
    samples = [_sample(cid, i, SHAPE_2D, torch.eye(4)) for i, cid in enumerate(IDS, start=1)]
    rows = _run(MultiTaskPredictionWriter(TASKS, out), samples)
    _check_table(out, rows, IDS, lambda p: int((np.asarray(Image.open(p)) > 0).sum()))
    assert rows[0]["lesion_file"] == "lesion/sub%2E01.png" and rows[3]["lesion_file"] == "lesion/a%2Fb.png"


def test_3d_nifti_masks_one_file_per_case_in_the_input_geometry(tmp_path) -> None:
    out = tmp_path / "predictions"
    samples = [_sample(cid, i, SHAPE_3D, AFFINE_3D) for i, cid in enumerate(IDS, start=1)]
    rows = _run(MultiTaskPredictionWriter(TASKS, out), samples)

    def size(path: Path) -> int:
        image = nib.load(path)
        np.testing.assert_allclose(image.affine, AFFINE_3D.numpy(), atol=1e-5)
        assert image.shape[:3] == SHAPE_3D
        return int((np.asarray(image.dataobj) > 0).sum())

    _check_table(out, rows, IDS, size)
    assert rows[0]["lesion_file"] == "lesion/sub%2E01.nii.gz"


def test_a_later_run_never_replaces_another_cases_file(tmp_path) -> None:
    """Two runs into one folder: new ids (also ones equal but for letter case) get new files; a re-run its own."""
    out = tmp_path / "predictions"
    first = _run(MultiTaskPredictionWriter(TASKS, out), [_sample("sub.01", 3, SHAPE_2D, torch.eye(4))])
    first_file = out / first[0]["lesion_file"]
    before = first_file.read_bytes()

    writer = MultiTaskPredictionWriter(TASKS, out)
    second = _run(writer, [_sample(cid, 5, SHAPE_2D, torch.eye(4)) for cid in ("sub.02", "sub", "SUB.01", "sub.01")])
    files = [out / r["lesion_file"] for r in second]
    assert len({f.name.casefold() for f in files}) == 4
    assert files[3] == first_file  # the same case again: its own file, rewritten
    assert first_file.read_bytes() != before
    assert (np.asarray(Image.open(first_file)) > 0).sum() == 5
    assert len(list((out / "lesion").iterdir())) == 4

    third = _run(writer, [_sample("SUB.01", 7, SHAPE_2D, torch.eye(4))])  # the same writer, a new run
    assert third[0]["lesion_file"] == second[2]["lesion_file"]
    assert (np.asarray(Image.open(first_file)) > 0).sum() == 5
