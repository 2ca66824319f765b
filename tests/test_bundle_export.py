"""Bundle layers: which files a workflow merges, the ``medmtl run`` command, and the self-contained export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from medmtl.bundle_layers import (
    BundleLayerError,
    available_bundles,
    bundle_command,
    bundle_dir,
    config_layers,
    export_bundle,
    merged_config,
)
from medmtl.cli import main


def test_a_workflow_merges_the_shared_layer_first_then_the_bundle() -> None:
    names = [f"{p.parent.parent.name}/{p.name}" for p in config_layers("demo", "evaluate")]
    assert names[:2] == ["common/train.json", "demo/train.json"]
    assert names[2] == "common/evaluate.json"
    assert (
        set(available_bundles()) >= {"demo", "brain_mri_mtl", "ultrasound_mtl"} and "common" not in available_bundles()
    )
    assert merged_config("demo")["data_spec"] == "data_specs/demo.yaml"  # the bundle's own value wins


def test_unknown_bundles_and_workflows_name_what_exists() -> None:
    with pytest.raises(BundleLayerError, match=r"no bundle 'nope'.*demo"):
        bundle_dir("nope")
    with pytest.raises(BundleLayerError, match=r"has no 'pretrain' workflow; it has: train, evaluate, inference"):
        config_layers("demo", "pretrain")
    assert config_layers("brain_mri_mtl", "pretrain")[-1].name == "pretrain.json"


def test_the_command_names_the_bundles_metadata_and_passes_overrides_unchanged() -> None:
    cmd = bundle_command("demo", ["inference"], ["--output_dir", "runs/x", "--infer_split", "all"])
    assert cmd[1:5] == ["-m", "monai.bundle", "run", "--config_file"]
    assert cmd[5].startswith("[") and "common/configs/train.json" in cmd[5] and "inference.json" in cmd[5]
    assert cmd[cmd.index("--meta_file") + 1].endswith("demo/configs/metadata.json")
    assert cmd[-4:] == ["--output_dir", "runs/x", "--infer_split", "all"]


def test_medmtl_run_print_shows_the_monai_command(capsys) -> None:
    assert main(["run", "--print", "demo", "evaluate", "--output_dir", "runs/x"]) == 0
    line = capsys.readouterr().out.strip()
    assert "-m monai.bundle run --config_file \"['" in line and line.endswith("--output_dir runs/x")
    assert main(["run", "demo", "pretrain"]) == 1


def test_export_writes_a_bundle_without_layers_that_parses_to_the_same_config(tmp_path) -> None:
    out = export_bundle("ultrasound_mtl", tmp_path / "export")
    configs = out / "configs"
    assert {"train.json", "inference.json", "evaluate.json", "metadata.json", "logging.conf"} <= {
        p.name for p in configs.iterdir()
    }
    spec_name = Path(merged_config("ultrasound_mtl")["data_spec"]).name
    assert (configs / spec_name).is_file()
    exported = ConfigParser.load_config_files([str(configs / "train.json")])
    layered = merged_config("ultrasound_mtl")
    different = {k for k in set(exported) | set(layered) if exported.get(k) != layered.get(k)}
    assert different == {"bundle_root", "data_spec"}  # the export ships its own spec next to its configs
    # inference.json is whole (what verify_net_in_out / ckpt_export read), evaluate.json a layer over train.json
    whole = json.loads((configs / "inference.json").read_text())
    assert "network_def" in whole and "initialize" in whole
    parser = ConfigParser(ConfigParser.load_config_files([str(configs / "train.json"), str(configs / "evaluate.json")]))
    assert parser["validate"]["split"] == "test"
    with pytest.raises(BundleLayerError, match="not empty"):
        export_bundle("ultrasound_mtl", out)
    assert bundle_dir(out) == out.resolve() and config_layers(out, "evaluate")[-1].name == "evaluate.json"


def test_medmtl_run_refuses_overrides_monai_would_stop_on_before_starting(capsys) -> None:
    assert main(["run", "demo", "train", "--network_def#foo#bar", "1", "--epoch", "3", "--epochs#x", "2"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("--network_def#foo#bar: 'network_def' has no 'foo' (it has: _target_")
    assert "did you mean --epochs?" in lines[1]
    assert lines[2].startswith("--epochs#x: 'epochs' holds") and "it cannot hold 'x'" in lines[2]
