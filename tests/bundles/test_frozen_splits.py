"""A run's ``splits.json`` survives new data: train, add patients, resume; no earlier case moves.

One short training (1 epoch on 4 demo patients), then the data folder grows by 2 patients: the
bundle configs (train and inference, parsed in-process) leave the new cases out of every split by
default, and a resumed training with ``--new_cases train`` adds them to training only, keeping every
recorded entry.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from monai.bundle import ConfigParser

from medmtl.bundle_layers import bundle_command, config_layers
from medmtl.data.demo import generate_demo2d

REPO = Path(__file__).resolve().parents[2]


def _train(work: Path, data: Path, epochs: int, *extra: str) -> str:
    cmd = bundle_command("demo", ["train"], ["--data_spec", str(REPO / "data_specs" / "demo.yaml")])
    cmd += ["--dataset_dir", str(data)]
    cmd += ["--output_dir", str(work / "run"), "--epochs", str(epochs), "--val_interval", "1", *extra]
    result = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def _bundle_cases(workflow: str, work: Path, data: Path, **overrides: object):
    """The ``cases`` a bundle workflow builds (its config layers parsed here, nothing trained)."""
    parser = ConfigParser()
    parser.read_config([str(f) for f in config_layers("demo", workflow)])
    parser.update(
        {
            "data_spec": str(REPO / "data_specs" / "demo.yaml"),
            "dataset_dir": str(data),
            "output_dir": str(work / "run"),
            **overrides,
        }
    )
    parser.get_parsed_content("imports")  # the config's own `$import` lines, as `monai.bundle run` does
    return parser.get_parsed_content("cases")


def test_resumed_training_on_grown_data_keeps_every_recorded_split(tmp_path) -> None:
    full = tmp_path / "full"
    generate_demo2d(full, num_cases=18, seed=0)  # 6 patients, 3 images each
    first = tmp_path / "first"
    shutil.copytree(full, first)
    rows = (full / "labels.csv").read_text().splitlines()
    (first / "labels.csv").write_text("\n".join(rows[:13]) + "\n")  # the first 4 patients
    new_ids = [row.split(",")[0] for row in rows[13:]]
    for case_id in new_ids:
        (first / "images" / f"{case_id}.png").unlink()
        (first / "masks" / f"{case_id}.png").unlink(missing_ok=True)

    _train(tmp_path, first, 1)
    splits_file = tmp_path / "run" / "splits.json"
    recorded = splits_file.read_bytes()
    first_splits = {case: split for split, ids in json.loads(recorded).items() for case in ids}
    assert len(first_splits) == 12

    for workflow in ("train", "inference"):  # default: new cases are in no split, still predictable
        table = _bundle_cases(workflow, tmp_path, full)
        now = {c["case_id"]: c["split"] for c in table.cases}
        assert {case: now[case] for case in first_splits} == first_splits
        labelled_new = [case for case in new_ids if now[case] != "unlabelled"]
        assert labelled_new and {now[case] for case in labelled_new} == {"new"}
        assert {c["case_id"] for c in table.datalist("new")} == set(labelled_new)
        assert any(p.check == "new_cases" for p in table.problems)
    assert splits_file.read_bytes() == recorded  # building cases never writes

    log = _train(tmp_path, full, 2, "--new_cases", "train")
    assert "resumed from" in log and "epoch 2/2" in log and "epoch 1/2" not in log
    assert "new labelled case(s) are not in the splits file" in log
    after = {case: split for split, ids in json.loads(splits_file.read_text()).items() for case in ids}
    assert {case: after[case] for case in first_splits} == first_splits
    assert {after[case] for case in labelled_new} == {"train"}
    assert not {case for case, split in after.items() if split == "test"} - set(first_splits)
