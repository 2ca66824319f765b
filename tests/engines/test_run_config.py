"""The run record: which values a command uses, what contradicts the run, and the file itself."""

from __future__ import annotations

import json
from pathlib import Path

import monai.bundle
import pytest
import torch

from medmtl.bundle_layers import config_layers
from medmtl.data.tasks import Task
from medmtl.engines.run_config import (
    RUN_CONFIG_FILE,
    RunConfigError,
    RunConfigExit,
    RunRecord,
    build_run_config,
    network_fingerprint,
    read_run_config_file,
    write_run_config,
)

MONAI_MAIN = str(Path(monai.bundle.__file__).with_name("__main__.py"))
PRESETS = {"unet": {"features": [4, 4, 8]}, "resunet": {"channels": [4, 8]}}
TASKS = [
    Task(name="lesion", kind="segmentation", classes=["background", "lesion"]),
    Task(name="malignant", kind="binary"),
]


def _argv(*overrides: str) -> list[str]:
    return [
        MONAI_MAIN,
        "run",
        "--config_file",
        str([str(f) for f in config_layers("demo", "train")]),  # MONAI's list form
        *overrides,
    ]


def _record(tmp_path: Path, network: torch.nn.Module | None = None) -> dict:
    settings = {
        "backbone": "resunet",
        "spatial_size": (48, 48),
        "backbone_presets": PRESETS,
        "data_spec": "specs/demo.yaml",
        "dataset_dir": str(tmp_path / "data"),
        "spec_overrides": {},
    }
    return build_run_config(
        settings,
        model_settings=["backbone", "spatial_size", "backbone_presets"],
        tasks=TASKS,
        network=network or torch.nn.Linear(3, 2),
        training={"epochs": 2},
        bundle_root="bundles/demo",
        argv=_argv("--backbone", "resunet", "--spatial_size", "[48,48]"),
    )


def _configured(**model) -> tuple[dict, dict]:
    base = {"backbone": "unet", "spatial_size": [64, 64], "backbone_presets": PRESETS}
    return {**base, **model}, {"data_spec": "specs/demo.yaml", "dataset_dir": "/elsewhere", "spec_overrides": {}}


def test_the_record_holds_settings_tasks_network_overrides_and_versions(tmp_path) -> None:
    record = _record(tmp_path)
    assert record["settings"]["model"] == {"backbone": "resunet", "spatial_size": [48, 48], "backbone_presets": PRESETS}
    assert record["settings"]["data"]["dataset_dir"] == str(tmp_path / "data")
    assert Path(record["settings"]["data"]["data_spec"]).is_absolute() is False  # recorded as the command resolved it
    assert [t["name"] for t in record["tasks"]] == ["lesion", "malignant"]
    assert record["network"]["parameters"] == 3 * 2 + 2
    assert record["overrides"] == {"backbone": "resunet", "spatial_size": [48, 48]}
    assert {"medmtl", "monai", "torch", "python"} <= set(record["versions"])
    assert record["config"]["backbone"] == "resunet" and record["config"]["epochs"] == 40  # merged config + overrides
    path = write_run_config(tmp_path / "run", record)
    assert read_run_config_file(path) == json.loads(json.dumps(record))


def test_a_resumed_run_keeps_the_record_it_started_with(tmp_path) -> None:
    first = _record(tmp_path)
    write_run_config(tmp_path, first)
    second = {**first, "created": "later"}
    write_run_config(tmp_path, second, resume=True)
    assert read_run_config_file(tmp_path / RUN_CONFIG_FILE)["created"] == first["created"]
    write_run_config(tmp_path, second, resume=False)
    assert read_run_config_file(tmp_path / RUN_CONFIG_FILE)["created"] == "later"


def test_without_a_record_the_command_uses_its_own_values(tmp_path) -> None:
    run = RunRecord.for_checkpoint(tmp_path / "models" / "best.pt", tmp_path, argv=_argv())
    model, data = _configured()
    settings = run.settings(model=model, data=data)
    assert settings["backbone"] == "unet" and settings["spatial_size"] == [64, 64]


def test_with_a_record_the_run_values_win_over_config_defaults(tmp_path) -> None:
    write_run_config(tmp_path, _record(tmp_path))
    run = RunRecord.for_checkpoint(tmp_path / "models" / "best.pt", argv=_argv("--output_dir", str(tmp_path)))
    model, data = _configured()
    settings = run.settings(model=model, data=data)
    assert settings["backbone"] == "resunet" and settings["spatial_size"] == [48, 48]
    assert settings["dataset_dir"] == str(tmp_path / "data")  # the run's data by default


def test_explicit_overrides_equal_to_the_run_and_data_overrides_are_accepted(tmp_path) -> None:
    write_run_config(tmp_path, _record(tmp_path))
    other = str(tmp_path / "other_data")
    argv = _argv("--backbone", "resunet", "--spatial_size", "[48, 48]", "--dataset_dir", other)
    run = RunRecord.for_checkpoint(tmp_path / "models" / "best.pt", argv=argv)
    model, data = _configured(backbone="resunet", spatial_size=[48, 48])
    settings = run.settings(model=model, data={**data, "dataset_dir": other})
    assert settings["dataset_dir"] == other  # predicting on another folder is allowed


def test_an_explicit_override_contradicting_the_run_names_both_values(tmp_path) -> None:
    write_run_config(tmp_path, _record(tmp_path))
    argv = _argv("--backbone", "unet", "--backbone_presets#resunet#channels", "[8, 16]", "--spatial_size", "[48,48]")
    run = RunRecord.for_checkpoint(tmp_path / "models" / "best.pt", tmp_path, argv=argv)
    presets = {**PRESETS, "resunet": {"channels": [8, 16]}}
    model, data = _configured(backbone="unet", spatial_size=[48, 48], backbone_presets=presets)
    with pytest.raises(RunConfigExit) as info:
        run.settings(model=model, data=data)
    lines = str(info.value).splitlines()
    assert len(lines) == 2  # both contradictions at once; spatial_size agrees
    assert "backbone='resunet'" in lines[0] and "--backbone 'unet'" in lines[0]
    assert "backbone_presets#resunet#channels=[4, 8]" in lines[1] and "[8, 16]" in lines[1]


def test_the_checkpoint_copy_of_the_record_is_read_first(tmp_path) -> None:
    record = _record(tmp_path)
    ckpt = tmp_path / "elsewhere" / "best.pt"
    ckpt.parent.mkdir()
    torch.save({"network": {}, "run_config": record}, ckpt)
    run = RunRecord.for_checkpoint(ckpt, tmp_path / "no_run", argv=_argv())
    assert run.record["settings"]["model"]["backbone"] == "resunet" and run.source == str(ckpt)


def test_tasks_and_network_must_match_the_run(tmp_path) -> None:
    network = torch.nn.Linear(3, 2)
    write_run_config(tmp_path, _record(tmp_path, network))
    run = RunRecord.for_checkpoint(tmp_path / "models" / "best.pt", tmp_path, argv=_argv())
    run.check_tasks(TASKS)
    run.check_network(torch.nn.Linear(3, 2))
    with pytest.raises(RunConfigExit, match=r"lesion \(segmentation\), malignant \(binary\)"):
        run.check_tasks(TASKS[:1])
    with pytest.raises(RunConfigExit, match="6 parameters.*8 parameters"):
        run.check_network(torch.nn.Linear(2, 2))
    assert network_fingerprint(network) != network_fingerprint(torch.nn.Linear(3, 3))


def test_a_damaged_record_is_one_clear_error(tmp_path) -> None:
    (tmp_path / RUN_CONFIG_FILE).write_text("{not json")
    with pytest.raises(RunConfigError, match="run_config.json: the run's record is unreadable"):
        RunRecord.for_training(tmp_path, argv=_argv())
    (tmp_path / RUN_CONFIG_FILE).write_text(json.dumps({"format": "other"}))
    with pytest.raises(RunConfigError, match="not a medmtl run record"):
        RunRecord.for_training(tmp_path, argv=_argv())
    assert RunRecord.for_training(tmp_path, resume=False, argv=_argv()).record is None
