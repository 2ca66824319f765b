"""Mistakes in a bundle command end in one line per mistake, exit status 1 and no traceback (issue 19 item 8).

Through ``python -m monai.bundle run`` on the demo bundle; every run stops at the first
``initialize`` entry, before the data is read, so no dataset is needed.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import monai.bundle
import pytest
import torch
from bundle_cli import run_together

from medmtl.bundle_layers import bundle_command
from medmtl.engines import BundleStartError, check_bundle_start
from medmtl.engines.start_checks import cli_overrides

REPO = Path(__file__).resolve().parents[2]
MONAI_MAIN = str(Path(monai.bundle.__file__).with_name("__main__.py"))


def _command(tmp_path: Path, workflows: tuple[str, ...], *args: str) -> list[str]:
    cmd = bundle_command("demo", workflows)  # with --meta_file and --logging_file: MONAI's keys, never refused
    cmd += ["--data_spec", str(REPO / "data_specs" / "demo.yaml"), "--dataset_dir", str(tmp_path / "no_data")]
    return cmd + ["--output_dir", str(tmp_path / "run"), *args]


def _refused(tmp_path: Path, workflows: tuple[str, ...], *args: str) -> list[str]:
    """Run the bundle; assert exit 1 without traceback; the error lines (first one without its type)."""
    result = subprocess.run(
        _command(tmp_path, workflows, *args), cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    return _error_lines(result)


def _error_lines(result: subprocess.CompletedProcess) -> list[str]:
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    start = result.stderr.index("BundleStartError: ")
    return result.stderr[start + len("BundleStartError: ") :].strip().splitlines()


def test_unknown_override_keys_are_refused_with_a_did_you_mean(tmp_path) -> None:
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"seed": 1, "learning_rte": 0.1}))
    lines = _refused(
        tmp_path,
        ("train",),
        *("--epoch", "3", "--batchsize", "4", "--args_file", str(args_file)),
        *("--run_id", "run", "--workflow_type", "train"),
        *("--backbone_presets#unet#dropout", "0.2", "--train::dataloader::num_workers", "0"),
    )
    by_key = {line.split(":", 1)[0]: line for line in lines}
    assert len(lines) == 3 and set(by_key) == {"--epoch", "--batchsize", "--learning_rte"}, lines
    assert by_key["--epoch"].endswith("(did you mean --epochs?)")
    assert by_key["--batchsize"].endswith("(did you mean --batch_size?)")
    assert by_key["--learning_rte"].endswith("(did you mean --learning_rate?)")  # from --args_file
    assert not (tmp_path / "run").exists()  # refused before the output folder is claimed


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_and_too_few_epochs_each_get_their_line(tmp_path) -> None:
    lines = _refused(tmp_path, ("train",), "--device", "cuda", "--epochs", "1")  # the demo validates every 2
    assert len(lines) == 2, lines
    assert lines[0].startswith("--device cuda: CUDA is not available") and "--device cpu" in lines[0]
    assert lines[1].startswith("--epochs 1 is smaller than --val_interval 2 (the config's)")
    assert "pass --val_interval 1" in lines[1]


def test_evaluation_without_a_trained_run_says_train_first(tmp_path) -> None:
    evaluation, inference = run_together(  # two refusals, started at once
        [
            (_command(tmp_path, ("evaluate",)), tmp_path),
            (_command(tmp_path, ("inference",), "--ckpt_path", str(tmp_path / "missing.pt")), tmp_path),
        ],
        timeout=120,
    )
    (line,) = _error_lines(evaluation)
    assert line == (
        f"checkpoint {tmp_path / 'run' / 'models' / 'best.pt'} does not exist: train first (with the same "
        "--output_dir), or pass --ckpt_path"
    )
    (line,) = _error_lines(inference)
    assert line == f"--ckpt_path {tmp_path / 'missing.pt'}: no such checkpoint file"


def test_command_line_is_read_as_fire_reads_it(tmp_path) -> None:
    argv = [MONAI_MAIN, "run", "--config_file", "['a.json','b.json']", "--lr=-0.5", "--resume", "--seed", "-1"]
    argv += ["--spatial-size", "[8, 8]", "positional"]
    assert cli_overrides(argv) == {
        "config_file": ["a.json", "b.json"],
        "lr": -0.5,
        "resume": True,
        "seed": -1,
        "spatial_size": [8, 8],
    }
    assert cli_overrides(["/usr/bin/pytest", "run", "--epoch", "3"]) is None  # not monai.bundle: nothing to check
    good = [MONAI_MAIN, *bundle_command("demo", ["train"], ["--epochs", "2", "--tracking", "mlflow"])[3:]]
    check_bundle_start("cpu", epochs=2, val_interval=1, argv=good, exit_on_error=False)
    on_purpose = [*good, "--val_interval", "1000"]  # no validation asked for (timing runs): a warning only
    check_bundle_start("cpu", epochs=2, val_interval=1000, argv=on_purpose, exit_on_error=False)
    with pytest.raises(BundleStartError, match="'gpu' is not a device"):
        check_bundle_start("gpu", argv=good, exit_on_error=False)
