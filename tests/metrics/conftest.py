"""Fixtures for the metric tests: four tasks (one per kind) and evaluator outputs in the engine contract."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from medmtl.data import Task

SEG = Task(name="lesion", kind="segmentation", classes=["background", "lesion", "edema"])
BIN = Task(name="malignant", kind="binary")
MLB = Task(name="findings", kind="multilabel", classes=["abnormal", "acl", "meniscus"])
MCL = Task(name="diagnosis", kind="multiclass", classes=["normal", "benign", "malignant"])
TASKS = [SEG, BIN, MLB, MCL]


def seg_logits(label_map: torch.Tensor, num_classes: int, scale: float = 5.0) -> torch.Tensor:
    """Logits ``(C, *spatial)`` whose argmax is ``label_map`` (``(*spatial)`` ints)."""
    return torch.nn.functional.one_hot(label_map.long(), num_classes).movedim(-1, 0).float() * scale


def make_samples(n: int, seed: int = 0, size: int = 12) -> list[dict]:
    """``n`` per-sample dicts with flat keys ``pred_<task>``, ``label_<task>``, ``<task>_present``, ``case_id``.

    Predictions are noisy but informative; about a third of the cases lack each label.
    """
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        lab = np.zeros((size, size), dtype=np.int64)
        r = int(rng.integers(1, 4))
        lab[2 : 2 + r + 2, 2 : 2 + r + 2] = 1
        if rng.random() < 0.7:
            lab[7:10, 6 : 6 + r + 1] = 2
        pred = lab.copy()
        pred[rng.random(lab.shape) < 0.1] = 0
        pred[rng.random(lab.shape) < 0.05] = 1
        y_bin = float(rng.random() < 0.4)
        y_ml = (rng.random(3) < 0.5).astype(np.float32)
        y_mc = int(rng.integers(0, 3))
        samples.append(
            {
                "case_id": f"case{i:03d}",
                "pred_lesion": seg_logits(torch.as_tensor(pred), 3),
                "label_lesion": torch.as_tensor(lab)[None],
                "lesion_present": bool(rng.random() < 0.7),
                "pred_malignant": torch.tensor([2.0 * y_bin - 1.0 + rng.normal()], dtype=torch.float32),
                "label_malignant": torch.tensor([y_bin]),
                "malignant_present": bool(rng.random() < 0.7),
                "pred_findings": torch.as_tensor(2.0 * y_ml - 1.0 + rng.normal(size=3), dtype=torch.float32),
                "label_findings": torch.as_tensor(y_ml),
                "findings_present": bool(rng.random() < 0.7),
                "pred_diagnosis": torch.as_tensor(np.eye(3)[y_mc] * 1.5 + rng.normal(size=3), dtype=torch.float32),
                "label_diagnosis": torch.tensor(y_mc),
                "diagnosis_present": bool(rng.random() < 0.7),
            }
        )
    return samples


@pytest.fixture
def kit() -> SimpleNamespace:
    """The tasks and builders, for tests (importlib mode: tests cannot import conftest)."""
    return SimpleNamespace(
        SEG=SEG, BIN=BIN, MLB=MLB, MCL=MCL, TASKS=list(TASKS), make_samples=make_samples, seg_logits=seg_logits
    )


@pytest.fixture
def tasks() -> list[Task]:
    return list(TASKS)


@pytest.fixture
def samples() -> list[dict]:
    return make_samples(36)
