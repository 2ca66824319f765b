"""radiograph_mtl on the MURA layout: the bundle's evaluation scores per study (``aggregate_by`` in mura.yaml).

One tiny training (one epoch, 32 px) and the evaluation through the real CLI; the per-study numbers
are checked against the per-image predictions the same evaluation wrote, grouped here by hand.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import layouts
import numpy as np
import pytest
from bundle_cli import bundle_argv

from medmtl.metrics import EvaluationResults
from medmtl.metrics.report import load_evaluation

REPO = Path(__file__).resolve().parents[2]


def _run(workflow: str, cwd: Path, env: dict, **overrides: object) -> None:
    cmd = bundle_argv("radiograph_mtl", (workflow,), overrides)
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-4000:]


def test_radiograph_evaluation_writes_per_study_results(tmp_path):
    root = layouts.write_mura(tmp_path / "data")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "OMP_NUM_THREADS": "2"}
    run = tmp_path / "run"
    common = {"data_spec": REPO / "data_specs" / "mura.yaml", "dataset_dir": root, "output_dir": run}
    _run("train", tmp_path, env, **common, epochs=1, val_interval=1, batch_size=4, spatial_size=[32, 32])
    _run("evaluate", tmp_path, env, output_dir=run)

    eval_dir = run / "eval"
    block = json.loads((eval_dir / "summary.json").read_text())["studies"]
    test_studies = {  # the layout's valid/ studies are the test split
        f"{part}_{patient}_{study}": (count, int(result == "positive"))
        for split, part, patient, study, result, count in layouts.MURA_STUDIES
        if split == "valid"
    }
    assert block["aggregate"] == "mean"
    assert block["num_studies"] == {"abnormal": len(test_studies), "body_part": len(test_studies)}
    for metric in ("auroc", "accuracy", "kappa"):
        assert metric in block["mean"]["abnormal"]
    assert {"accuracy", "balanced_accuracy", "kappa"} <= set(block["mean"]["body_part"])

    images: EvaluationResults = load_evaluation(eval_dir)
    per_image = images["abnormal"]
    with open(eval_dir / "studies.csv", newline="") as handle:
        rows = {row["study"]: row for row in csv.DictReader(handle)}
    assert set(rows) == set(test_studies)
    for study, (count, label) in test_studies.items():
        row = rows[study]
        members = [i for i, c in enumerate(per_image.case_ids) if c.startswith(study + "_image")]
        assert int(row["images"]) == count == len(members)
        expected = float(np.mean(per_image.probabilities[members, 0]))
        assert float(row["abnormal_probability"]) == pytest.approx(expected, abs=1e-6)
        assert int(row["abnormal_label"]) == label and row["abnormal_mixed_labels"] == "0"
        assert row["body_part"] in {"hand", "wrist", "elbow", "finger", "forearm", "humerus", "shoulder"}
    assert "Per study" in (eval_dir / "report.html").read_text()
