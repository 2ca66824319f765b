"""The demo bundle end to end through ``python -m monai.bundle run``: train, resume, evaluate, infer, MLflow."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from bundle_cli import run_together

from medmtl.bundle_layers import bundle_command, bundle_dir
from medmtl.data.demo import generate_demo2d

REPO = Path(__file__).resolve().parents[2]
CONFIGS = bundle_dir("demo") / "configs"
SCHEMA = REPO.parent / "shared" / "monai" / "meta_schema_20240725.json"
REGISTERED = "demo_mtl"  # the registered name of the trained model
# non-default network and size: evaluation and inference must get them from the run's record
# (the default unet is what the DDP, crash-recovery, run-safety and privacy tests train)
TRAINED_WITH = {
    "backbone": "resunet",
    "spatial_size": "[48,48]",
    "backbone_presets#resunet#channels": "[8,16,32,64,128]",
    "deep_supervision": 2,  # extra heads in training only: evaluation, inference and exports must drop them
}


def _command(*workflows: str, **overrides: object) -> list[str]:
    """``workflows`` of the demo bundle (its config layers, as ``medmtl run`` gives them) with ``overrides``."""
    return bundle_command("demo", workflows, [a for k, v in overrides.items() for a in (f"--{k}", str(v))])


def _succeeded(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _bundle(*workflows: str, cwd: Path, env: dict, **overrides: object) -> subprocess.CompletedProcess:
    cmd = _command(*workflows, **overrides)
    return _succeeded(subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300))


def _together(env: dict, *runs: tuple[list[str], Path]) -> list[subprocess.CompletedProcess]:
    """Independent bundle runs started at once (each spends seconds importing on one core); all must succeed."""
    return [_succeeded(result) for result in run_together(runs, env=env, timeout=300)]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> dict:
    """Demo data, then a 3-epoch training with MLflow into a temporary SQLite store; on CPU, at the same
    time, the same training without tracking into ``run_again`` (for the determinism test)."""
    work = tmp_path_factory.mktemp("demo")
    generate_demo2d(work / "data" / "demo2d", seed=0)  # the 2D set only: what the demo bundle reads
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    common = {
        "data_spec": REPO / "data_specs" / "demo.yaml",
        "dataset_dir": work / "data" / "demo2d",
        "output_dir": work / "run",
        "val_interval": 1,
    }
    tracked = {"tracking": "mlflow", "register_as": REGISTERED}  # the best model registered as models:/NAME@champion
    runs = [(_command("train", epochs=3, **tracked, **common, **TRAINED_WITH), work)]
    if not torch.cuda.is_available():  # test_same_seed_gives_the_same_run is for CPU only
        runs.append((_command("train", epochs=3, **{**common, "output_dir": work / "run_again"}, **TRAINED_WITH), work))
    train = _together(env, *runs)[0]
    return {"work": work, "env": env, "common": common, "train_log": train.stdout + train.stderr}


def test_training_writes_checkpoints_history_and_splits(demo_run) -> None:
    run = demo_run["work"] / "run"
    assert (run / "models" / "last.pt").is_file() and (run / "models" / "best.pt").is_file()
    history = json.loads((run / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert all(r["train_loss/lesion"] > 0 and r["train_loss/malignant"] > 0 for r in history)
    splits = json.loads((run / "splits.json").read_text())
    assert set(splits) == {"train", "val", "test", "unlabelled"}
    assert "epoch 3/3" in demo_run["train_log"]


def test_mlflow_run_has_task_metrics_params_and_artifacts(demo_run) -> None:
    import mlflow

    client = mlflow.MlflowClient(demo_run["env"]["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("medmtl_demo")
    (run,) = client.search_runs([experiment.experiment_id])
    metrics = run.data.metrics
    for key in ("train_loss/lesion", "train_weight/malignant", "lesion/dice", "malignant/auroc", "mean_primary"):
        assert key in metrics, sorted(metrics)
    history = client.get_metric_history(run.info.run_id, "train_loss/lesion")
    assert [m.step for m in history] == [1, 2, 3]
    assert run.data.params["weighting"] == "uncertainty"
    assert run.data.params["tasks"] == "['lesion', 'malignant']"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"demo.yaml", "splits.json", "best.pt"} <= artifacts
    assert any(a.startswith("config_") and a.endswith(".json") for a in artifacts)  # the executed config


def test_batched_mlflow_iteration_losses_keep_every_step_and_value(demo_run) -> None:
    """The per-iteration losses MONAI's ``MLFlowHandler`` logs reach the store batched (one ``log_batch`` per
    epoch, ``TrackingGuard``) with every step, and each epoch's values average to the engine's epoch loss."""
    import mlflow

    client = mlflow.MlflowClient(demo_run["env"]["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([client.get_experiment_by_name("medmtl_demo").experiment_id])
    iterations = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train_loss"))
    epochs = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train_loss_epoch"))
    assert [step for step, _ in epochs] == [1, 2, 3]
    per_epoch = len(iterations) // 3
    assert per_epoch >= 1 and [step for step, _ in iterations] == list(range(1, 3 * per_epoch + 1))
    for epoch, epoch_loss in epochs:
        values = [value for step, value in iterations[(epoch - 1) * per_epoch : epoch * per_epoch]]
        assert sum(values) / per_epoch == pytest.approx(epoch_loss, rel=1e-6)


def test_restart_resumes_from_last_checkpoint(demo_run) -> None:
    log = _bundle("train", cwd=demo_run["work"], env=demo_run["env"], epochs=4, **demo_run["common"])
    text = log.stdout + log.stderr
    assert "resumed from" in text
    assert "epoch 1/4" not in text and "epoch 4/4" in text  # epochs 1-3 are not trained again
    history = json.loads((demo_run["work"] / "run" / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]


@pytest.fixture(scope="module")
def demo_outputs(demo_run) -> Path:
    """The evaluation bundle on the trained run, with MLflow, and the inference bundle on every case, started
    together (they only read the run): the run folder (once per module, so every test that reads them also
    passes alone or on another pytest-xdist worker). Only ``--output_dir``, as the docs show: the run's
    ``run_config.json`` gives the spec, data and network."""
    work, run = demo_run["work"], demo_run["work"] / "run"
    evaluation = _command("evaluate", tracking="mlflow", output_dir=run)
    inference = _command("inference", infer_split="all", tracking="mlflow", output_dir=run)
    _together(demo_run["env"], (evaluation, work), (inference, work))
    return run


@pytest.fixture(scope="module")
def demo_evaluation(demo_outputs) -> Path:
    return demo_outputs / "eval"


def test_evaluate_writes_report_with_every_task(demo_evaluation) -> None:
    eval_dir = demo_evaluation
    summary = json.loads((eval_dir / "summary.json").read_text())
    assert set(summary["mean"]) == {"lesion", "malignant"}
    assert 0.0 <= summary["mean"]["lesion"]["dice"] <= 1.0
    low, high = summary["ci"]["malignant"]["low"], summary["ci"]["malignant"]["high"]
    assert low <= summary["ci"]["malignant"]["value"] <= high
    html = (eval_dir / "report.html").read_text()
    assert "lesion" in html and "malignant" in html
    assert (eval_dir / "figures" / "roc_malignant.png").is_file()
    assert (eval_dir / "figures" / "history.png").is_file()
    # the model card reads the same summary: its figures are the report's
    card = (eval_dir / "MODEL_CARD.md").read_text()
    ci = summary["ci"]["malignant"]
    assert f"| malignant | binary | {summary['counts']['malignant']['labelled']} | auroc | {ci['value']:.3f} [" in card
    assert "not for clinical use" in card and "## Failure cases" in card and "- monai: " in card
    assert "- backbone: resunet" in card  # from the run record: trained with resunet


@pytest.fixture(scope="module")
def demo_inference(demo_outputs) -> Path:
    return demo_outputs / "predictions"


def test_inference_writes_masks_and_table_for_every_case(demo_inference) -> None:
    out = demo_inference
    with open(out / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 60
    assert all(0.0 <= float(r["malignant_probability"]) <= 1.0 for r in rows)
    masks = sorted((out / "lesion").glob("*.png"))
    assert len(masks) == 60 and masks[0].stem == rows[0]["case_id"]
    assert all((out / r["lesion_file"]).is_file() for r in rows)  # paths relative to predictions.csv


def test_metadata_is_valid_against_monai_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    if not SCHEMA.is_file():
        pytest.skip(f"MONAI bundle schema copy {SCHEMA} is absent")
    metadata = json.loads((CONFIGS / "metadata.json").read_text())
    jsonschema.validate(metadata, json.loads(SCHEMA.read_text()))
    assert set(metadata["network_data_format"]["outputs"]) == {"pred", "lesion", "malignant"}


def test_same_seed_gives_the_same_run(demo_run) -> None:
    """Determinism on CPU: a second 3-epoch run with the same seed (``run_again``, trained by the fixture at
    the same time as the first) reproduces every logged value."""
    if torch.cuda.is_available():  # the fixture trained on the GPU
        pytest.skip("bit-for-bit reruns are promised on CPU; cuDNN/atomic CUDA kernels are not deterministic")
    first = json.loads((demo_run["work"] / "run" / "history.json").read_text())[:3]
    again = json.loads((demo_run["work"] / "run_again" / "history.json").read_text())
    assert again == first


def test_report_rebuilt_from_mlflow_evaluation_run(demo_run, demo_evaluation, tmp_path, monkeypatch) -> None:
    import mlflow

    from medmtl.cli import main

    uri = demo_run["env"]["MLFLOW_TRACKING_URI"]
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("medmtl_demo").experiment_id])
    evaluation = [r for r in runs if r.info.run_name.startswith("evaluate_")]
    assert evaluation, [r.info.run_name for r in runs]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(["report", evaluation[0].info.run_id, "--out", str(tmp_path / "rebuilt")]) == 0
    rebuilt = json.loads((tmp_path / "rebuilt" / "summary.json").read_text())
    original = json.loads((demo_evaluation / "summary.json").read_text())
    assert rebuilt["mean"] == original["mean"]
    assert (tmp_path / "rebuilt" / "report.html").is_file()


def test_evaluation_and_inference_runs_are_finished_and_name_their_training_run(demo_run, demo_outputs) -> None:
    """Each run logs its data as an MLflow dataset (digest of the file contents); evaluation and inference
    runs end (FINISHED, an end time) and carry the training run's id, which the training wrote beside it."""
    import mlflow

    from medmtl.tracking.dataset import DATASET_DIGEST_TAG, dataset_digest

    client = mlflow.MlflowClient(demo_run["env"]["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("medmtl_demo").experiment_id])
    by_kind = {kind: [r for r in runs if r.info.run_name.startswith(kind)] for kind in ("train_", "evaluate_")}
    (training,) = by_kind["train_"]
    assert json.loads((demo_outputs / "mlflow_run.json").read_text())["run_id"] == training.info.run_id
    (dataset,) = training.inputs.dataset_inputs
    assert dataset.dataset.name == "demo2d" and dataset.tags[0].value == "training"  # the spec's name
    # the digest is of the files' contents: recomputed here from the datalist, and it moves with one label
    from medmtl.data.spec import load_spec

    cases = load_spec(demo_run["common"]["data_spec"]).datalist(root=demo_run["common"]["dataset_dir"])
    assert training.data.tags[DATASET_DIGEST_TAG] == dataset_digest(cases)
    assert dataset.dataset.digest == dataset_digest(cases)[:32]
    changed = [dict(cases[0], malignant=1 - int(cases[0].get("malignant", 0))), *cases[1:]]
    assert dataset_digest(changed) != dataset_digest(cases)
    later = [r for r in runs if r.info.run_name.startswith(("evaluate_", "inference_"))]
    assert {r.info.run_name.split("_")[0] for r in later} == {"evaluate", "inference"}
    for run in later:
        assert run.info.status == "FINISHED" and run.info.end_time is not None, run.info.run_name
        assert run.data.tags["medmtl.training_run_id"] == training.info.run_id
    (evaluation,) = by_kind["evaluate_"]
    assert evaluation.inputs.dataset_inputs[0].tags[0].value == "evaluation"
    logged = {a.path for a in client.list_artifacts(evaluation.info.run_id, "evaluation")}
    assert "evaluation/MODEL_CARD.md" in logged


def _serve(model_uri: str, env: dict) -> tuple[subprocess.Popen, str]:
    """``mlflow models serve`` of ``model_uri`` on a free port of 127.0.0.1, in its own process group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local"]
    env = {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "OMP_NUM_THREADS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # its uvicorn
    server = subprocess.Popen(
        [*cmd, "-h", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    return server, f"http://127.0.0.1:{port}"


def _wait_for(server: subprocess.Popen, url: str, seconds: float = 180) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/ping", timeout=2)
            return
        except OSError:
            if server.poll() is not None:
                pytest.fail(f"mlflow models serve exited: {server.stderr.read()[-3000:]}")
            time.sleep(0.5)
    pytest.fail(f"mlflow models serve did not answer within {seconds} s")


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, weights_only=True, map_location="cpu")["network"]


def test_registered_mlflow_model_predicts_as_the_inference_bundle_and_serves(
    demo_run, demo_inference, tmp_path, monkeypatch
):
    """The training logged its best model as an MLflow pyfunc (signature, input example) into its run and
    registered it (``--register_as``); as a run folder again it holds the run's weights and spec; loaded by alias
    it gives the inference bundle's results for an image file and for the same image as an array; a real
    ``mlflow models serve`` of the alias answers an HTTP request with per-task outputs."""
    import mlflow
    import numpy as np
    import pandas as pd

    from medmtl.data.readers import load_array
    from medmtl.deploy.run_network import load_run_network
    from medmtl.tracking import download_model_folder, log_run_model

    uri, run = demo_run["env"]["MLFLOW_TRACKING_URI"], demo_run["work"] / "run"
    alias = f"models:/{REGISTERED}@champion"
    client = mlflow.MlflowClient(uri)
    training = client.get_run(json.loads((run / "mlflow_run.json").read_text())["run_id"])
    (output,) = training.outputs.model_outputs  # the model, an output of the training run
    logged = client.get_logged_model(output.model_id)
    assert logged.source_run_id == training.info.run_id and logged.experiment_id == training.info.experiment_id
    assert client.get_model_version_by_alias(REGISTERED, "champion").source == f"models:/{logged.model_id}"
    folder = download_model_folder(alias, tmp_path / "model", tracking_uri=uri)  # the run folder medmtl predict reads
    assert (
        Path(json.loads((folder / "run_config.json").read_text())["settings"]["data"]["data_spec"])
        == (folder / "spec" / "demo.yaml").resolve()
    )
    if any(
        not torch.equal(w, _weights(run / "models" / "best.pt")[k])
        for k, w in _weights(folder / "models" / "best.pt").items()
    ):
        # test_restart_resumes_from_last_checkpoint (untracked) found a better epoch 4, which the inference
        # used: log the run's best model again (as after any untracked resume); the alias moves to it
        example = demo_run["common"]["dataset_dir"] / "images" / "case_000.png"
        info = log_run_model(run, tracking_uri=uri, register_as=REGISTERED, input_example=example)
        moved = client.get_model_version_by_alias(REGISTERED, "champion")
        assert str(moved.version) == str(info.registered_model_version) != "1"
        folder = download_model_folder(alias, tmp_path / "relogged", tracking_uri=uri)
    rebuilt = load_run_network(folder).network.state_dict()
    assert all(torch.equal(rebuilt[k], w) for k, w in _weights(run / "models" / "best.pt").items())

    server, url = _serve(alias, demo_run["env"])  # loads while the model is checked here
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # not mlflow.set_tracking_uri: it outlives the test
        model = mlflow.pyfunc.load_model(alias)
        assert [c.name for c in model.metadata.get_input_schema().inputs] == ["path", "image"]
        assert [p.name for p in model.metadata.get_params_schema().params] == ["return_masks", "mask_resampling"]
        assert model.input_example["path"][0].endswith(".png")  # a file of the run's data
        with open(demo_inference / "predictions.csv", newline="") as handle:
            expected = {row["case_id"]: row for row in csv.DictReader(handle)}
        cases = sorted(expected)[:2]
        images = [demo_run["common"]["dataset_dir"] / "images" / f"{case}.png" for case in cases]
        by_path = model.predict(pd.DataFrame({"path": [str(p) for p in images]}), params={"return_masks": True})
        by_array = model.predict(pd.DataFrame({"image": [load_array(images[0])]}))
        for i, case in enumerate(cases):
            row = expected[case]
            assert by_path["malignant_probability"][i] == pytest.approx(float(row["malignant_probability"]), abs=1e-5)
            assert by_path["malignant"][i] == int(row["malignant"])
            assert by_path["lesion_voxels"][i] == int(row["lesion_voxels"])
            assert (by_path["lesion_mask"][i] > 0).sum() == int(row["lesion_voxels"])  # the mask on the input grid
        assert by_array["malignant_probability"][0] == pytest.approx(by_path["malignant_probability"][0], abs=1e-6)
        assert by_array["lesion_voxels"][0] == by_path["lesion_voxels"][0]

        # medmtl predict takes the alias too (its own process: MLflow's tracking URI is process-wide state)
        new_images = tmp_path / "new"
        new_images.mkdir()
        for image in images:
            shutil.copy(image, new_images / image.name)
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
        argv = ["predict", "-i", str(new_images), "-o", str(tmp_path / "predicted"), "-m", alias]
        assert _medmtl(argv, env) == 0
        with open(tmp_path / "predicted" / "predictions.csv", newline="") as handle:
            predicted = {row["case_id"]: row for row in csv.DictReader(handle)}
        for case in cases:
            assert float(predicted[case]["malignant_probability"]) == pytest.approx(
                float(expected[case]["malignant_probability"]), abs=1e-5
            )

        _wait_for(server, url)
        body = json.dumps({"dataframe_split": {"columns": ["path"], "data": [[str(images[0])]]}}).encode()
        request = urllib.request.Request(f"{url}/invocations", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            (served,) = json.loads(response.read())["predictions"]
        assert served["malignant_probability"] == pytest.approx(by_path["malignant_probability"][0], abs=1e-6)
        assert served["lesion_voxels"] == by_path["lesion_voxels"][0] and served["malignant"] in (0, 1)
        assert np.isfinite(served["malignant_entropy"])
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def _medmtl(argv: list[str], env: dict) -> int:
    return subprocess.call([sys.executable, "-m", "medmtl.cli", *argv], env=env)


def test_bad_case_stops_training_before_the_first_epoch(tmp_path) -> None:
    """A corrupt image and a mask of the wrong size are both reported when the bundle starts; nothing trains."""
    generate_demo2d(tmp_path / "data" / "demo2d", seed=0)
    root = tmp_path / "data" / "demo2d"
    (root / "images" / "case_005.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    from PIL import Image

    Image.new("L", (32, 32)).save(root / "masks" / "case_007.png")
    cmd = bundle_command("demo", ["train"], ["--data_spec", str(REPO / "data_specs" / "demo.yaml")])
    cmd += ["--dataset_dir", str(root), "--output_dir", str(tmp_path / "run"), "--epochs", "1", "--val_interval", "1"]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "unreadable_file" in output and "case_005.png" in output
    assert "shape_mismatch" in output and "case_007" in output
    assert not (tmp_path / "run" / "models" / "last.pt").exists()


# -- the run describes itself (issue 19.1): only --output_dir, same results as the training overrides --


def _explicit(demo_run) -> dict:
    return {**{k: v for k, v in demo_run["common"].items() if k != "val_interval"}, **TRAINED_WITH}


@pytest.fixture(scope="module")
def explicit_runs(demo_run) -> dict[str, Path]:
    """With the training's overrides instead of the run's record, started together: an evaluation of the run,
    an inference of it from another working folder, and an evaluation of a copy of the run as written before
    runs recorded their configuration (no ``run_config.json``, none in the checkpoints)."""
    work = demo_run["work"]
    old = work / "old_run"
    shutil.copytree(work / "run", old, ignore=shutil.ignore_patterns("eval", "predictions", "*.lock"))
    (old / "run_config.json").unlink()
    for name in ("best.pt", "last.pt"):  # as written before runs recorded their configuration
        checkpoint = torch.load(old / "models" / name, weights_only=True, map_location="cpu")
        checkpoint.pop("run_config")
        torch.save(checkpoint, old / "models" / name)
    outputs = {"eval": work / "explicit_eval", "inference": work / "explicit_inference", "old_run": old}
    elsewhere = work / "elsewhere"
    elsewhere.mkdir()
    _together(
        demo_run["env"],
        (_command("evaluate", eval_dir=outputs["eval"], **_explicit(demo_run)), work),
        (_command("inference", infer_split="all", infer_dir=outputs["inference"], **_explicit(demo_run)), elsewhere),
        (_command("evaluate", **{**_explicit(demo_run), "output_dir": old}), work),
    )
    return outputs


def test_training_records_its_configuration_in_the_run_and_the_checkpoints(demo_run) -> None:
    run = demo_run["work"] / "run"
    record = json.loads((run / "run_config.json").read_text())
    model = record["settings"]["model"]
    assert model["backbone"] == "resunet" and model["spatial_size"] == [48, 48]
    assert model["backbone_presets"]["resunet"]["channels"] == [8, 16, 32, 64, 128]
    assert model["deep_supervision"] == 2
    assert record["settings"]["data"]["dataset_dir"] == str(demo_run["common"]["dataset_dir"])
    assert record["network"]["class"].endswith("MultiTaskNet") and record["training"]["epochs"] == 3
    for name in ("best.pt", "last.pt"):
        checkpoint = torch.load(run / "models" / name, weights_only=True, map_location="cpu")
        assert checkpoint["run_config"]["settings"] == record["settings"]
        deep_heads = {k for k in checkpoint["network"] if k.startswith("deep_heads.lesion.")}
        assert {k.split(".")[2] for k in deep_heads} == {"0", "1"}, sorted(checkpoint["network"])[:5]


def test_evaluation_with_only_output_dir_matches_the_explicit_overrides(demo_evaluation, explicit_runs) -> None:
    explicit = json.loads((explicit_runs["eval"] / "summary.json").read_text())
    from_record = json.loads((demo_evaluation / "summary.json").read_text())
    assert from_record["mean"] == explicit["mean"] and set(explicit["mean"]) == {"lesion", "malignant"}


def test_inference_with_only_output_dir_matches_the_explicit_overrides(demo_inference, explicit_runs) -> None:
    def table(folder: Path) -> dict[str, str]:
        with open(folder / "predictions.csv", newline="") as handle:
            return {row["case_id"]: row["malignant_probability"] for row in csv.DictReader(handle)}

    assert table(demo_inference) == table(explicit_runs["inference"])


def test_an_override_contradicting_the_run_is_one_line_naming_both_values(demo_run, tmp_path) -> None:
    run = demo_run["work"] / "run"
    result, resumed = run_together(  # both refused at the start: run at the same time
        [
            (_command("evaluate", output_dir=run, backbone="unet", eval_dir=tmp_path / "e"), tmp_path),
            (_command("train", output_dir=run, epochs=5, spatial_size="[64,64]"), tmp_path),
        ],
        env=demo_run["env"],
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "--backbone: the run was trained with backbone='resunet'" in result.stderr and "'unet'" in result.stderr
    assert resumed.returncode == 1 and "spatial_size=[48, 48]" in resumed.stderr
    assert not (tmp_path / "e").exists()


def test_a_run_without_a_record_still_works_with_explicit_overrides(explicit_runs) -> None:
    old = explicit_runs["old_run"]
    assert not (old / "run_config.json").exists()
    assert "run_config" not in torch.load(old / "models" / "best.pt", weights_only=True, map_location="cpu")
    assert json.loads((old / "eval" / "summary.json").read_text())["mean"]


@pytest.fixture(scope="module")
def demo_onnx(demo_run, tmp_path_factory) -> tuple[Path, str]:
    """``medmtl export`` of the trained run to ONNX (once per module: the export test checks it, predict runs it):
    the file and what the command printed."""
    import contextlib
    import io

    from medmtl.cli import main

    path, printed = tmp_path_factory.mktemp("export") / "demo.onnx", io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["export", str(demo_run["work"] / "run"), "--format", "onnx", "-o", str(path)]) == 0
    return path, printed.getvalue()


def test_export_round_trip_matches_pytorch(demo_run, demo_onnx, capsys) -> None:
    """``medmtl export`` of the trained run to ONNX gives PyTorch's outputs for the run's weights (torch.export:
    tests/deploy/test_export.py)."""
    import numpy as np
    from monai.bundle import ConfigParser

    from medmtl.bundle_layers import config_layers
    from medmtl.cli import main
    from medmtl.deploy import load_exported

    run = demo_run["work"] / "run"
    parser = ConfigParser(ConfigParser.load_config_files([str(f) for f in config_layers("demo", "train")]))
    for key, value in {**_explicit(demo_run), "output_dir": demo_onnx[0].parent / "none"}.items():
        parser[key.replace("#", "::")] = json.loads(value) if str(value).startswith("[") else str(value)
    network = parser.get_parsed_content("network_def")  # built here from the training's overrides, not the record
    network.load_state_dict(torch.load(run / "models" / "best.pt", weights_only=True, map_location="cpu")["network"])
    x = np.random.default_rng(0).random((2, 1, 48, 64), dtype=np.float32)  # another width than trained: dynamic
    with torch.no_grad():
        expected = network.eval()(torch.from_numpy(x))
    path, printed = demo_onnx
    assert f"wrote {path} (onnx; outputs lesion, malignant;" in printed
    model = load_exported(path)
    meta = model.metadata
    assert meta["settings"]["spatial_size"] == [48, 48] and meta["run"]["checkpoint"] == "best.pt"
    assert [t["name"] for t in meta["tasks"]] == ["lesion", "malignant"] and meta["input"]["dynamic_spatial"]
    assert meta["deploy"]["record"] == torch.load(run / "models" / "best.pt", weights_only=True)["run_config"]
    assert meta["deploy"]["spec"]["text"] == (REPO / "data_specs" / "demo.yaml").read_text()
    got = model(x)
    for task in ("lesion", "malignant"):
        np.testing.assert_allclose(got[task], expected[task].numpy(), atol=1e-4, rtol=0)
    assert main(["export", str(run), "--format", "onnx", "-o", str(path)]) == 1
    assert "exists; pass --overwrite" in capsys.readouterr().err


def test_predict_with_the_exported_file_gives_the_run_folders_results(demo_run, demo_onnx, tmp_path) -> None:
    """A hospital gets only the ONNX file: ``medmtl predict -m demo.onnx`` (its description carries the run
    record and the spec; the bundle's inference runs the program) gives the masks and the probabilities of
    ``medmtl predict -m RUN`` (within the export's 1e-4). A truncated JSRT raw ``.IMG`` among the inputs is
    taken as an image and listed in failed.csv with both sizes; a folder in JSRT's layout is predicted, its
    masks in the raw images' geometry. The bundle runs in this process (MONAI is imported already)."""
    import numpy as np
    from bundle_cli import run_in_process
    from PIL import Image

    from medmtl.deploy.predict import predict

    run, model = demo_run["work"] / "run", demo_onnx[0]
    inputs = tmp_path / "new"
    (inputs / "All247images").mkdir(parents=True)
    for case in ("case_000", "case_001", "case_002"):
        shutil.copy(demo_run["common"]["dataset_dir"] / "images" / f"{case}.png", inputs / f"{case}.png")
    (inputs / "All247images" / "JPCNN002.IMG").write_bytes(bytes(1000))  # JSRT's are 2048 x 2048 x 2 bytes
    outputs = {"run": tmp_path / "from_run", "onnx": tmp_path / "from_onnx"}
    tables, commands = {}, []
    for key, source in (("run", run), ("onnx", model)):
        result = predict(
            inputs, outputs[key], source, runner=lambda argv: commands.append(argv) or run_in_process(argv)
        )
        ((failed, reason),) = result.failed  # medmtl predict exits with status 3
        assert failed.case_id == "All247images/JPCNN002" and "1000 bytes" in reason and "has 8388608" in reason
        with open(outputs[key] / "predictions.csv", newline="") as handle:
            tables[key] = {row["case_id"]: row for row in csv.DictReader(handle)}
    assert sorted(tables["onnx"]) == sorted(tables["run"]) == ["case_000", "case_001", "case_002"]
    for case, row in tables["onnx"].items():
        reference = tables["run"][case]
        assert float(row["malignant_probability"]) == pytest.approx(float(reference["malignant_probability"]), abs=1e-4)
        assert row["malignant"] == reference["malignant"] and row["lesion_voxels"] == reference["lesion_voxels"]
        mask = np.asarray(Image.open(outputs["onnx"] / row["lesion_file"]))
        np.testing.assert_array_equal(mask, np.asarray(Image.open(outputs["run"] / reference["lesion_file"])))
    network = commands[1][commands[1].index("--network") + 1]  # the exported program, not the run's weights
    assert "--network" not in commands[0] and network.startswith("$medmtl.deploy.ExportedNetwork(")

    jsrt = tmp_path / "jsrt" / "All247images"  # headerless 2048 x 2048 big-endian 12-bit words
    jsrt.mkdir(parents=True)
    np.random.default_rng(0).integers(0, 4096, (2048, 2048)).astype(">u2").tofile(jsrt / "JPCLN001.IMG")
    shutil.copy(inputs / "All247images" / "JPCNN002.IMG", jsrt)
    result = predict(jsrt.parent, tmp_path / "from_jsrt", model, runner=run_in_process)
    assert [c.case_id for c in result.predicted] == ["All247images/JPCLN001"] and len(result.failed) == 1
    with open(tmp_path / "from_jsrt" / "predictions.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert np.asarray(Image.open(tmp_path / "from_jsrt" / row["lesion_file"])).shape == (2048, 2048)
