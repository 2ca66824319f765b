"""``medmtl experts`` refusals, before any training: classes without training cases, settings it owns, resume.

The end-to-end run (experts trained, the router evaluated and compared per study) is in
``tests/bundles/test_radiograph_studies.py``, on the trained model there.
"""

from __future__ import annotations

import json
from pathlib import Path

import layouts
import pytest
import torch

from medmtl.cli import main
from medmtl.data.spec import load_spec
from medmtl.engines.run_config import RUN_CONFIG_FORMAT
from medmtl.experiments.experts import ExpertsError, router_overrides, run_experts, training_counts

REPO = Path(__file__).resolve().parents[1]
MURA = REPO / "data_specs" / "mura.yaml"


def _never(argv: list[str], env: dict) -> int:
    raise AssertionError(f"nothing may run: {argv}")


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    """A run folder as a training leaves it (record + checkpoint), on the MURA layout with the spec's own split."""
    work = tmp_path_factory.mktemp("single")
    root = layouts.write_mura(work / "data")
    run = work / "run"
    (run / "models").mkdir(parents=True)
    record = {
        "format": RUN_CONFIG_FORMAT,
        "settings": {
            "model": {"backbone": "resnet18", "spatial_size": [64, 64]},
            "data": {"data_spec": str(MURA), "dataset_dir": str(root), "spec_overrides": {}},
        },
        "tasks": [t.model_dump(mode="json") for t in load_spec(MURA).task_list],
    }
    (run / "run_config.json").write_text(json.dumps(record))
    torch.save({"network": {"w": torch.zeros(1)}}, run / "models" / "best.pt")
    return run


def test_classes_without_training_cases_are_all_named(single, tmp_path, capsys) -> None:
    # the spec's split puts the only hand and wrist patients into val: no expert can learn them
    record = json.loads((single / "run_config.json").read_text())
    body_part = load_spec(MURA).task("body_part")
    counts = training_counts(record["settings"]["data"], body_part)
    train = load_spec(MURA).build_cases(root=record["settings"]["data"]["dataset_dir"]).datalist("train")
    assert counts == {name: sum(c["body_part"] == k for c in train) for k, name in enumerate(body_part.class_names)}
    assert counts["hand"] == counts["wrist"] == 0 and counts["shoulder"] > 0

    argv = ["experts", "--bundle", "radiograph_mtl", "--from", str(single), "--output_dir", str(tmp_path / "x")]
    assert main(argv) == 1  # one error line, exit 1, nothing started
    text = capsys.readouterr().err
    assert text.startswith("error: class(es) ['hand', 'wrist'] of task 'body_part' have no training case")
    assert not (tmp_path / "x").exists()  # refused before anything is written


def test_settings_medmtl_experts_owns_are_refused(single, tmp_path) -> None:
    for overrides, named in (
        (["--backbone", "resnet34"], "--backbone"),
        (["--spec_overrides", "{'select': {'body_part': 'hand'}}"], "--spec_overrides"),
        (["--dataset_dir", "/elsewhere", "--output_dir", "x"], "--output_dir, --dataset_dir"),
    ):
        with pytest.raises(ExpertsError, match=named):
            run_experts("radiograph_mtl", single, tmp_path / "e", overrides=overrides, runner=_never)
    with pytest.raises(ExpertsError, match="--router_task organ"):
        run_experts("radiograph_mtl", single, tmp_path / "e", router_task="organ", runner=_never)
    with pytest.raises(ExpertsError, match="last.pt not found"):
        run_experts("radiograph_mtl", single, tmp_path / "e", weights="last", runner=_never)
    with pytest.raises(FileNotFoundError, match="run medmtl experts into that folder first"):
        router_overrides(tmp_path / "nothing")
