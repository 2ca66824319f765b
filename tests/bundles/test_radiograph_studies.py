"""radiograph_mtl on the MURA layout: per-study results, and per-body-part experts against the single model.

One tiny training (one epoch, 32 px, a small U-Net encoder) and its evaluation through the real CLI,
shared by the module;
the per-study numbers are checked against the per-image predictions the same evaluation wrote, grouped
here by hand. The experts (``medmtl experts``, one per body part, run in this process) are fine-tuned
from it, evaluated as one ``ExpertRouter`` and compared with it per study.
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
from bundle_cli import bundle_argv, run_in_process

from medmtl.cli import main
from medmtl.data.spec import load_spec
from medmtl.data.splits import read_splits
from medmtl.experiments.experts import ExpertsError, run_experts
from medmtl.metrics import EvaluationResults
from medmtl.metrics.report import load_evaluation

REPO = Path(__file__).resolve().parents[2]
SPLITS = {  # mura.yaml's, with the seed that leaves every body part a training patient (val: patient00002)
    "method": "field",
    "field": "split",
    "values": {"train": "train", "valid": "test"},
    "val_fraction": 0.1,
    "seed": 1,
    "stratify": "abnormal",
}


def _run(workflow: str, cwd: Path, env: dict, **overrides: object) -> None:
    cmd = bundle_argv("radiograph_mtl", (workflow,), overrides)
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-4000:]


@pytest.fixture(scope="module")
def single_run(tmp_path_factory) -> dict:
    """The multi-task model trained and evaluated on the MURA layout through the real CLI."""
    work = tmp_path_factory.mktemp("radiograph")
    root = layouts.write_mura(work / "data")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}", "OMP_NUM_THREADS": "2"}
    run = work / "run"
    common = {"data_spec": REPO / "data_specs" / "mura.yaml", "dataset_dir": root, "output_dir": run}
    tiny = {"epochs": 1, "val_interval": 1, "batch_size": 4, "spatial_size": [32, 32]}
    tiny |= {"backbone": "unet", "backbone_presets#unet#features": [4, 4, 8, 8, 16, 4]}  # kilobyte checkpoints
    _run("train", work, env, **common, **tiny, spec_overrides={"splits": SPLITS})
    _run("evaluate", work, env, output_dir=run)
    return {"work": work, "run": run, "env": env}


def test_radiograph_evaluation_writes_per_study_results(single_run):
    eval_dir = single_run["run"] / "eval"
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


def _studies(eval_dir: Path) -> dict[str, dict]:
    with open(eval_dir / "studies.csv", newline="") as handle:
        return {row["study"]: row for row in csv.DictReader(handle)}


def test_body_part_experts_evaluate_as_a_router_and_compare_per_study(single_run, monkeypatch, capsys):
    single, work = single_run["run"], single_run["work"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", single_run["env"]["MLFLOW_TRACKING_URI"])
    monkeypatch.chdir(work)
    out = work / "experts"
    tiny = ["--epochs", "1", "--val_interval", "1", "--batch_size", "2", "--train::dataloader::drop_last", "False"]
    tiny += ["--validate_data", "False", "--tune_host_allocator", "False"]  # no allocator tuning in the test process
    result = run_experts("radiograph_mtl", single, out, overrides=tiny, runner=run_in_process)

    parts = list(load_spec(REPO / "data_specs" / "mura.yaml").task("body_part").class_names)
    recorded = read_splits(single / "splits.json")
    single_record = json.loads((single / "run_config.json").read_text())
    assert list(result.expert_dirs) == parts and result.router_task == "body_part"
    for part, folder in result.expert_dirs.items():  # each an ordinary run on its own body part's training images
        record = json.loads((folder / "run_config.json").read_text())
        assert record["settings"]["data"]["spec_overrides"]["select"] == {"body_part": part}
        assert record["settings"]["model"] == single_record["settings"]["model"]  # the single model's architecture
        assert record["training"]["pretrained_ckpt"] == str(single / "models" / "best.pt")  # fine-tuned from it
        train = [c for c, split in recorded.items() if split == "train" and c.split("_")[0].lower() == part]
        assert record["training"]["split_counts"].get("train") == len(train) > 0
        assert read_splits(folder / "splits.json") == recorded

    # the router evaluates like any model: `medmtl run ... evaluate --output_dir OUT`, per image and per study
    assert run_in_process(["run", "radiograph_mtl", "evaluate", "--output_dir", str(out), *tiny[-2:]]) == 0
    single_studies, router_studies = _studies(single / "eval"), _studies(out / "eval")
    test_studies = {f"{p}_{patient}_{s}" for split, p, patient, s, _, _ in layouts.MURA_STUDIES if split == "valid"}
    assert set(router_studies) == set(single_studies) == test_studies
    for study, row in router_studies.items():  # the body part is the router's (the single model's) own answer
        assert row["body_part"] == single_studies[study]["body_part"]
        assert float(row["body_part_p_hand"]) == pytest.approx(float(single_studies[study]["body_part_p_hand"]))
    router_images = load_evaluation(out / "eval")["abnormal"]
    assert sorted(router_images.case_ids) == sorted(load_evaluation(single / "eval")["abnormal"].case_ids)

    # the comparison per study: one row per metric, over the test studies
    capsys.readouterr()
    assert main(["compare", str(single), str(out), "--level", "study", "-o", "cmp", "--n-resamples", "50"]) == 0
    assert "B-A" in capsys.readouterr().out
    rows = json.loads((work / "cmp" / "compare_studies.json").read_text())["rows"]
    assert {(r["task"], r["metric"]) for r in rows} >= {("abnormal", "auroc"), ("body_part", "accuracy")}
    assert {r["cases"] for r in rows} == {len(test_studies)}
    for run, key in ((single, "a"), (out, "b")):  # A and B: each evaluation's own per-study AUROC
        auroc = json.loads((run / "eval" / "summary.json").read_text())["studies"]["mean"]["abnormal"]["auroc"]
        row = next(r for r in rows if (r["task"], r["metric"]) == ("abnormal", "auroc"))
        assert row[key] == pytest.approx(auroc, nan_ok=True)

    # run again: every expert is skipped; other settings are refused, naming them
    again = run_experts("radiograph_mtl", single, out, overrides=tiny, runner=lambda argv, env: 1)
    assert again.skipped == parts
    with pytest.raises(ExpertsError, match="overrides: recorded"):
        run_experts("radiograph_mtl", single, out, overrides=["--epochs", "2"], runner=lambda argv, env: 1)
