"""Every scenario bundle end to end through the real CLI (``python -m monai.bundle run``) on tiny data.

For each bundle: train two epochs (with MLflow into a temporary SQLite store), evaluate on the
test split (report), infer (masks read back with nibabel / PIL in the input's geometry, CSV parsed),
then the model zoo's checks on the self-contained copy ``medmtl export-bundle --run`` writes of the
trained run (``medmtl verify-bundle``: ``verify_metadata`` against the schema copy in ../shared/monai,
``verify_net_in_out --net_id network_def``, ``ckpt_export`` of ``models/model.pt``; its weights give
the run's outputs for every task). Runs go through ``bundle_command``: the
bundle's config layers, as ``medmtl run`` gives them.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import layouts
import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_cli import bundle_argv, run_together
from dicom_factory import PLANTED_STRINGS
from dicom_study_factory import write_pacs_export
from monai.bundle import ConfigParser, verify_metadata
from PIL import Image
from scenario_data import BRAIN_AFFINE, BRAIN_SCENARIO_SHAPE, write_brain_scenario

from medmtl.bundle_layers import config_layers, export_bundle, merged_config
from medmtl.bundle_zoo import zoo_task
from medmtl.cli import main
from medmtl.data.spec import load_spec
from medmtl.deploy.verify_bundle import verify_bundle

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO.parent / "shared" / "monai" / "meta_schema_20240725.json"
TINY_UNET = {"backbone_presets#unet#features": [4, 4, 8, 8, 16, 4]}


def _splits_ignoring_duplicates(spec: str, **changes: object) -> dict[str, object]:
    """``spec_overrides`` keeping the spec's own splits (with ``changes``) but not grouping duplicate images.

    The tiny layouts draw one template again and again: the duplicate search rightly groups them,
    which would leave a split of a ten-case dataset empty.
    """
    splits = {**load_spec(REPO / "data_specs" / spec).splits.model_dump(), **changes, "duplicates": "ignore"}
    return {"splits": splits}


# name: (data writer -> dataset root, overrides for a tiny fast run)
SCENARIOS: dict[str, tuple[Callable[[Path], Path], dict[str, object]]] = {
    "brain_mri_mtl": (write_brain_scenario, {"spatial_size": [32, 32, 32], "pixdim": [2.0, 2.0, 2.0], **TINY_UNET}),
    "knee_mri_mtl": (layouts.write_mrnet, {"spatial_size": [4, 32, 32], "backbone": "resnet18"}),
    "ultrasound_mtl": (layouts.write_busi, {"spatial_size": [32, 32], **TINY_UNET}),
    "chest_xray_mtl": (  # the layout draws one template ten times: split as if they were ten patients
        lambda base: layouts.write_jsrt(base, size=2048),
        {"spatial_size": [32, 32], **TINY_UNET, "spec_overrides": _splits_ignoring_duplicates("jsrt.yaml")},
    ),
}
BUNDLES = sorted(SCENARIOS)
# Each bundle trains with options users pick instead of the defaults (the demo tests cover unet +
# hard sharing + uncertainty weighting; test_run_config_bundle covers resunet): every sharing scheme,
# every weighting, the meshnet backbone and early stopping firing, for no extra training run.
TRAINING_OPTIONS: dict[str, dict[str, object]] = {
    "brain_mri_mtl": {"backbone": "meshnet", "backbone_presets#meshnet#channels": 5, "weighting": "dwa"},
    "knee_mri_mtl": {"weighting": "fixed"},
    "ultrasound_mtl": {"sharing": "cross_stitch", "weighting": "gradnorm"},
    "chest_xray_mtl": {"sharing": "saliency_bridge", "weighting": "pcgrad"},
    # 3 epochs asked, patience 1 and an improvement no score can reach: stops after epoch 2
    "radiograph_mtl": {
        "weighting": "scheduled",
        "epochs": 3,
        "early_stop_patience": 1,
        "validate#early_stop#min_delta": 10.0,
    },
}


def run_bundle(name: str, workflows: tuple[str, ...], cwd: Path, env: dict, **overrides: object) -> str:
    cmd = bundle_argv(name, workflows, overrides)
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-4000:]
    return result.stdout + result.stderr


@pytest.fixture(scope="module", params=BUNDLES)
def trained(request, tmp_path_factory) -> dict:
    """One bundle trained for two epochs on its tiny dataset; yields paths and the overrides used."""
    name = request.param
    writer, tiny = SCENARIOS[name]
    work = tmp_path_factory.mktemp(name)
    root = writer(work / "data")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}", "OMP_NUM_THREADS": "2"}
    spec = merged_config(name)["data_spec"]
    # bundles name their spec relative to the repository root (where the docs run them); tests run elsewhere
    common = {"data_spec": REPO / spec, "dataset_dir": root, "output_dir": work / "run", "batch_size": 4, **tiny}
    options = {"epochs": 2, "val_interval": 1, **TRAINING_OPTIONS[name]}
    log = run_bundle(name, ("train",), work, env, tracking="mlflow", **common, **options)
    return {"name": name, "work": work, "root": root, "env": env, "common": common, "log": log, "options": options}


def _tasks(name: str, root: Path) -> list[dict]:
    parser = ConfigParser()
    parser.read_config([str(f) for f in config_layers(name, "inference")])
    parser["dataset_dir"] = str(root)
    parser["data_spec"] = str(REPO / parser["data_spec"])
    return [{"name": t.name, "kind": t.kind.value} for t in parser.get_parsed_content("tasks")]


def test_train_writes_checkpoints_and_one_mlflow_run(trained) -> None:
    from mlflow.tracking import MlflowClient

    run_dir = trained["common"]["output_dir"]
    assert (run_dir / "models" / "last.pt").is_file() and (run_dir / "models" / "best.pt").is_file()
    history = json.loads((run_dir / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    client = MlflowClient(tracking_uri=trained["env"]["MLFLOW_TRACKING_URI"])
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1
    tasks = _tasks(trained["name"], trained["root"])
    for task in tasks:
        assert len(client.get_metric_history(runs[0].info.run_id, f"train_loss/{task['name']}")) == 2


def test_the_chosen_training_options_took_effect(trained) -> None:
    from mlflow.tracking import MlflowClient

    options, run_dir = trained["options"], trained["common"]["output_dir"]
    record = json.loads((run_dir / "run_config.json").read_text())
    for key in ("sharing", "backbone"):
        if key in options:  # model settings: recorded, and rebuilt by evaluation and inference
            assert record["settings"]["model"][key] == options[key]
    client = MlflowClient(tracking_uri=trained["env"]["MLFLOW_TRACKING_URI"])
    (run,) = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert run.data.params["weighting"] == options["weighting"]
    weights = {k for k in run.data.metrics if k.startswith("train_weight/")}
    assert weights, "the loss weighting logs a weight per task"
    history = json.loads((run_dir / "history.json").read_text())
    assert len(history) == 2  # radiograph asked for 3: early stopping ended it after 2


# the 3D bundle whose prediction on a DICOM study folder is checked (SEG and SR need a DICOM source)
DICOM_BUNDLE = "brain_mri_mtl"
# medmtl predict on a folder of new images: PNG (2D), NIfTI (3D) and the knee's three .npy planes per case (one
# sub-folder per input); chest's headerless .IMG needs the spec's raw reader
PREDICTED = ("ultrasound_mtl", "brain_mri_mtl", "knee_mri_mtl")
# the chest layout's raw images are 2048 px: each predicted case costs seconds (three full-size masks
# resampled and written), and no check below depends on how many cases are predicted
INFER_SPLIT = {"chest_xray_mtl": "test"}


@pytest.fixture(scope="module")
def evaluated(trained) -> Path:
    """The evaluation (test split, report) and the inference of the trained run, started together (they
    only read the run). Only ``--output_dir``, as the docs show: the run's record gives the spec, data and
    network. Returns the run folder."""
    name, work, run_dir = trained["name"], trained["work"], trained["common"]["output_dir"]
    infer = {"infer_split": INFER_SPLIT.get(name, "all"), "output_dir": run_dir}
    runs = [(bundle_argv(name, ("evaluate",), {"output_dir": run_dir}), work)]
    runs.append((bundle_argv(name, ("inference",), infer), work))
    if name in PREDICTED:
        new_images = _new_images(trained, infer["infer_split"])
        predict = [sys.executable, "-m", "medmtl.cli", "predict", "-i", str(new_images), "-o", str(work / "predicted")]
        runs.append(([*predict, "-m", str(run_dir)], work))
    if name == DICOM_BUNDLE:  # a PACS export: two studies, several series; SEG and SR for the chosen one
        trained["pacs"] = write_pacs_export(work / "pacs", _first_volume(trained))
        predict = [sys.executable, "-m", "medmtl.cli", "predict", "-i", str(work / "pacs"), "-o", str(work / "dicom")]
        runs.append(([*predict, "-m", str(run_dir)], work))
    results = run_together(runs, env=trained["env"], timeout=600)
    for result in results[:2]:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-4000:]
    trained["predict"] = results[2] if name in PREDICTED else None
    trained["predict_dicom"] = results[3] if name == DICOM_BUNDLE else None
    return run_dir


def _first_volume(trained: dict) -> np.ndarray:
    """An unlabelled volume of the bundle's data, as a scanner would send it again (as DICOM)."""
    return np.asarray(nib.load(sorted((trained["root"] / "imagesTs").glob("*.nii.gz"))[0]).dataobj, dtype=float)


def _new_images(trained: dict, split: str) -> Path:
    """Three cases of ``split`` copied into a new folder as a user would bring them (another layout, no
    labels, no spec), with an unreadable file beside them: what ``medmtl predict`` is given. A spec with
    several inputs (the knee's planes) gets one sub-folder per input, and a fourth case lacking its last input
    instead of the unreadable file."""
    spec = load_spec(trained["common"]["data_spec"], **trained["common"].get("spec_overrides", {}))
    run_dir = trained["common"]["output_dir"]
    cases = spec.build_cases(root=trained["root"], splits_file=run_dir / "splits.json").datalist(split)[:4]
    folder, keys = trained["work"] / "new_images", list(spec.inputs)
    for index, case in enumerate(cases):
        for key in keys[:-1] if index == 3 else keys:
            source = Path(case[key])
            suffix = ".nii.gz" if source.name.endswith(".nii.gz") else source.suffix
            target = folder / "site_a" / (key if len(keys) > 1 else "") / f"{case['case_id']}{suffix}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
    if len(keys) == 1:
        (folder / "broken.png").write_bytes(b"not an image")
    return folder


def test_evaluate_writes_a_report_for_every_task(trained, evaluated) -> None:
    eval_dir = evaluated / "eval"
    summary = json.loads((eval_dir / "summary.json").read_text())
    html = (eval_dir / "report.html").read_text()
    tasks = _tasks(trained["name"], trained["root"])
    assert set(summary["mean"]) == {t["name"] for t in tasks}
    for task in tasks:
        assert task["name"] in html


def test_predict_on_a_folder_of_new_images_gives_what_inference_gives(trained, evaluated) -> None:
    """``medmtl predict`` on copies of three inferred cases in another folder: the same probabilities and
    masks as the bundle's inference of those cases; the unreadable file (the knee: the case lacking a plane)
    listed in failed.csv, exit status 3."""
    result, out = trained["predict"], trained["work"] / "predicted"
    if result is None:
        pytest.skip(f"predict is run for {PREDICTED} (PNG, NIfTI, .npy planes)")
    assert result.returncode == 3, result.stdout[-3000:] + result.stderr[-4000:]
    with open(out / "failed.csv", newline="") as handle:
        (failed,) = list(csv.DictReader(handle))
    keys = list(load_spec(trained["common"]["data_spec"]).inputs)
    if len(keys) == 1:
        assert failed["case_id"] == "broken" and "not a PNG file" in failed["reason"]
    else:  # the fourth case, its last plane left out: named with the path expected
        expected = Path(failed["path"])
        assert expected.parent.name == keys[-1] and not expected.exists()
        assert f"no {keys[-1]} image for this case: expected {expected}" in failed["reason"]
        assert failed["case_id"] == f"site_a/{expected.name.removesuffix('.npy')}"
    with open(out / "predictions.csv", newline="") as handle:
        predicted = {r["case_id"]: r for r in csv.DictReader(handle)}
    with open(evaluated / "predictions" / "predictions.csv", newline="") as handle:
        inferred = {r["case_id"]: r for r in csv.DictReader(handle)}
    assert len(predicted) == 3 and all(c.startswith("site_a/") for c in predicted)
    for case_id, row in predicted.items():
        reference = inferred[case_id.removeprefix("site_a/")]
        for column, value in reference.items():
            if column.endswith("_file"):  # the same mask, written in the input's geometry
                mine, theirs = out / row[column], evaluated / "predictions" / value
                if mine.name.endswith(".nii.gz"):
                    np.testing.assert_array_equal(nib.load(mine).get_fdata(), nib.load(theirs).get_fdata())
                    np.testing.assert_allclose(nib.load(mine).affine, nib.load(theirs).affine, atol=1e-5)
                else:
                    np.testing.assert_array_equal(np.asarray(Image.open(mine)), np.asarray(Image.open(theirs)))
            elif column != "case_id":
                try:
                    assert float(row[column]) == pytest.approx(float(value), abs=1e-5), column
                except ValueError:  # decided class names
                    assert row[column] == value, column


def test_predict_on_a_dicom_study_folder_writes_seg_and_sr(trained, evaluated) -> None:
    """``medmtl predict`` on a PACS export: the MR volume chosen (series.csv), the CT-only study in failed.csv;
    the SEG and SR of the case reference its study and series; the SR's values are the table's and the mask's."""
    if trained["name"] != DICOM_BUNDLE:
        pytest.skip(f"DICOM study folders are predicted with the 3D {DICOM_BUNDLE} bundle")
    import highdicom as hd
    import pydicom

    result, out, export = trained["predict_dicom"], trained["work"] / "dicom", trained["pacs"]
    assert result.returncode == 3, result.stdout[-3000:] + result.stderr[-4000:]
    with open(out / "series.csv", newline="") as handle:
        series = {r["series_uid"]: r for r in csv.DictReader(handle)}
    assert {uid for uid, r in series.items() if r["chosen"] == "yes"} == {export.series["mr"]}
    assert series[export.series["mr"]]["case_id"] == "study01_series2"
    with open(out / "failed.csv", newline="") as handle:
        (failed,) = list(csv.DictReader(handle))
    assert failed["case_id"] == "study02" and "modality CT, expected MR" in failed["reason"]
    with open(out / "predictions.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["case_id"] == "study01_series2"
    sources = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in export.mr_files}
    sr = hd.sr.srread(out / row["dicom_sr"])
    assert sr.StudyInstanceUID == export.studies[0]
    (evidence,) = sr.CurrentRequestedProcedureEvidenceSequence
    referenced = {s.SeriesInstanceUID: {i.ReferencedSOPInstanceUID for i in s.ReferencedSOPSequence}
                  for s in evidence.ReferencedSeriesSequence}  # fmt: skip
    assert referenced.pop(export.series["mr"]) == sources
    groups = sr.content.get_image_measurement_groups() + sr.content.get_volumetric_roi_measurement_groups()
    by_class = {g.finding_type.value: {m.name.meaning: m.value for m in g.get_measurements()} for g in groups}
    assert by_class["abnormal:abnormal"]["Probability"] == float(row["abnormal_probability"])
    for task in ("brain", "tissue"):
        seg = pydicom.dcmread(out / row[f"{task}_dicom_seg"])
        assert seg.StudyInstanceUID == export.studies[0] and seg.SeriesInstanceUID in referenced
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == export.series["mr"]
        mask = nib.load(out / row[f"{task}_file"])  # the same mask as NIfTI: counted independently
        labels = np.asarray(mask.dataobj)
        for k, name in enumerate(load_spec(trained["common"]["data_spec"]).task(task).classes[1:], start=1):
            found = by_class[f"{task}:{name}"]
            assert found["Voxel count"] == int((labels == k).sum())
            assert found["Volume"] == pytest.approx(found["Voxel count"] * abs(np.linalg.det(mask.affine[:3, :3])))
    texts = [(out / n).read_text() for n in ("predictions.csv", "series.csv", "failed.csv", "inputs.json")]
    names = [str(p.relative_to(out)) for p in out.rglob("*")]
    assert not [s for s in PLANTED_STRINGS if any(s.lower() in t.lower() for t in [*texts, *names])]


def test_inference_writes_masks_in_input_geometry_and_a_table(trained, evaluated) -> None:
    out = evaluated / "predictions"
    with open(out / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert rows, "no prediction rows"
    tasks = _tasks(trained["name"], trained["root"])
    for task in tasks:
        if task["kind"] == "segmentation":
            files = [out / r[f"{task['name']}_file"] for r in rows]  # relative to predictions.csv
            assert all(f.is_file() for f in files)
        elif task["kind"] == "binary":
            assert all(0.0 <= float(r[f"{task['name']}_probability"]) <= 1.0 for r in rows)
        elif task["kind"] == "multiclass":
            assert all(r[task["name"]] for r in rows)
    if trained["name"] == "brain_mri_mtl":
        for row in rows:
            mask = nib.load(out / row["brain_file"])
            source = (
                nib.load(trained["root"] / "imagesTr" / f"{row['case_id']}.nii.gz")
                if (trained["root"] / "imagesTr" / f"{row['case_id']}.nii.gz").is_file()
                else nib.load(trained["root"] / "imagesTs" / f"{row['case_id']}.nii.gz")
            )
            np.testing.assert_allclose(mask.affine, source.affine, atol=1e-4)
            assert mask.shape == BRAIN_SCENARIO_SHAPE
        np.testing.assert_allclose(mask.affine, BRAIN_AFFINE, atol=1e-4)
    if trained["name"] == "ultrasound_mtl":
        for row in rows:
            cls, num = row["case_id"].split("_")
            source = trained["root"] / cls / f"{cls} ({num}).png"
            assert Image.open(out / row["lesion_file"]).size == Image.open(source).size


@pytest.mark.skipif(not SCHEMA.is_file(), reason="MONAI metadata schema copy (../shared/monai) not present")
@pytest.mark.parametrize("name", [*BUNDLES, "demo"])
def test_metadata_is_valid(name: str, tmp_path) -> None:
    meta_file = export_bundle(name, tmp_path / name) / "configs" / "metadata.json"
    verify_metadata(meta_file=str(meta_file), filepath=str(SCHEMA))  # raises jsonschema's ValidationError
    meta = json.loads(meta_file.read_text())
    for part in ("inputs", "outputs"):
        assert meta["network_data_format"][part], part


def test_verify_net_in_out_and_ckpt_export(trained, tmp_path) -> None:
    """The trained run exported as a zoo bundle (``medmtl export-bundle NAME OUT --run RUN``) passes
    ``medmtl verify-bundle``: MONAI's ``verify_metadata``, ``verify_net_in_out --net_id network_def`` and
    ``ckpt_export`` of ``models/model.pt`` (TorchScript, checked against the network). Its ``model.pt`` in the
    exported ``network_def_multitask`` gives, for every task, what ``best.pt`` gives in the network the
    bundle's own layers build with the training overrides; ``network_def`` gives the zoo's one task."""
    name, common = trained["name"], trained["common"]
    run_dir = common["output_dir"]
    assert main(["export-bundle", name, str(tmp_path / name), "--run", str(run_dir)]) == 0
    report = verify_bundle(tmp_path / name)
    assert report.ok and {c.status for c in report.checks} <= {"pass", "skip"}, report.table()
    assert SCHEMA.is_file() <= (report.check("metadata").status == "pass")
    bundle = tmp_path / name
    best = torch.load(run_dir / "models" / "best.pt", weights_only=True)["network"]
    assert torch.load(bundle / "models" / "model.pt", weights_only=True).keys() == best.keys()
    # reference: the bundle's layers with the training overrides (not the record), best.pt's network weights
    reference_parser = ConfigParser()
    reference_parser.read_config([str(f) for f in config_layers(name, "inference")])
    for key, value in {**SCENARIOS[name][1], **TRAINING_OPTIONS[name]}.items():
        reference_parser[key] = value
    reference_parser.update({"data_spec": str(REPO / merged_config(name)["data_spec"]), "output_dir": str(tmp_path)})
    reference = reference_parser.get_parsed_content("network_def").eval()
    reference.load_state_dict(best)
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))  # the bundle alone: it holds the run's settings
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser.update({"bundle_root": str(bundle), "output_dir": str(tmp_path / "elsewhere")})
    exported = parser.get_parsed_content("network_def_multitask").eval()
    exported.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    zoo = parser.get_parsed_content("network_def").eval()
    spatial = SCENARIOS[name][1]["spatial_size"]
    assert parser["_meta_"]["network_data_format"]["inputs"]["image"]["spatial_shape"] == spatial
    keys = list(parser.get_parsed_content("input_keys"))
    x = torch.rand(1, 1, *spatial, generator=torch.Generator().manual_seed(0))
    inputs = x if len(keys) == 1 else {k: x for k in keys}
    with torch.no_grad():
        expected, got = reference(inputs), exported(inputs)
        view = zoo(x)
    assert set(got) == set(expected) == set(parser["_meta_"]["network_data_format"]["outputs"]) - {"pred"}
    for task in expected:
        torch.testing.assert_close(got[task], expected[task], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(view, expected[zoo_task(parser.get_parsed_content("tasks"))], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("name", "cache"), [("ultrasound_mtl", "disk"), ("chest_xray_mtl", "memory")])
def test_semi_supervised_option_trains_on_a_label_budget(name: str, cache: str, tmp_path) -> None:
    """The ``semi_supervised`` workflow on half the labels: the unlabelled stream runs and its losses are logged;
    its cache follows the bundle's ``cache`` key like the labelled one (``disk``: files under the run folder)."""
    writer, tiny = SCENARIOS[name]
    root = writer(tmp_path / "data")
    spec = merged_config(name)["data_spec"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    log = run_bundle(
        name,
        ("semi_supervised",),
        tmp_path,
        env,
        data_spec=REPO / spec,
        dataset_dir=root,
        output_dir=tmp_path / "run",
        batch_size=2,
        epochs=1,
        val_interval=1,
        label_fraction=0.5,
        rampup_epochs=0,
        cache=cache,
        **tiny,
    )
    assert "semi-supervised: loss_consistency=" in log
    assert any((tmp_path / "run" / "cache_unlabelled").glob("*.pt")) == (cache == "disk")
    assert "pseudo_label_fraction/" in log or name == "chest_xray_mtl"
    assert (tmp_path / "run" / "models" / "best.pt").is_file()


def test_weak_label_pretraining_then_fine_tuning_from_its_checkpoint(tmp_path) -> None:
    """brain_mri_mtl's ``pretrain`` workflow (weak masks), then training that starts from its best.pt."""
    writer, tiny = SCENARIOS["brain_mri_mtl"]
    root = writer(tmp_path / "data")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "OMP_NUM_THREADS": "2"}
    common = {"data_spec": REPO / merged_config("brain_mri_mtl")["data_spec"], "dataset_dir": root, "batch_size": 2}
    short = {"epochs": 1, "val_interval": 1, **tiny, **common}
    run_bundle("brain_mri_mtl", ("pretrain",), tmp_path, env, output_dir=tmp_path / "pretrain", **short)
    assert (
        json.loads((tmp_path / "pretrain" / "run_config.json").read_text())["settings"]["data"]["label_quality"]
        == "weak"
    )
    pretrained = tmp_path / "pretrain" / "models" / "best.pt"
    log = run_bundle(
        "brain_mri_mtl",
        ("train",),
        tmp_path,
        env,
        output_dir=tmp_path / "finetune",
        pretrained_ckpt=pretrained,
        **short,
    )
    assert f"{pretrained}: loaded" in log  # load_pretrained's report
    record = json.loads((tmp_path / "finetune" / "run_config.json").read_text())
    assert record["settings"]["data"]["label_quality"] == "strong"
    assert record["training"]["pretrained_ckpt"] == str(pretrained)


# the tiny JSRT and BUSI layouts leave one validation case: too few for two processes
DDP_SPLITS = {
    name: {"spec_overrides": _splits_ignoring_duplicates(spec, fractions={"train": 0.6, "val": 0.4}, stratify=None)}
    for name, spec in (("chest_xray_mtl", "jsrt.yaml"), ("ultrasound_mtl", "breast_ultrasound.yaml"))
}


@pytest.mark.slow
@pytest.mark.parametrize("name", BUNDLES)
def test_multi_gpu_train_runs_on_two_gloo_processes(name: str, tmp_path) -> None:
    """Every bundle's ``multi_gpu_train`` workflow under ``torchrun --nproc_per_node=2`` on CPU, one epoch."""
    writer, tiny = SCENARIOS[name]
    root = writer(tmp_path / "data")
    overrides = {"data_spec": REPO / merged_config(name)["data_spec"], "dataset_dir": root, "batch_size": 2}
    overrides |= {"output_dir": tmp_path / "run", "epochs": 1, "val_interval": 1, **tiny, **DDP_SPLITS.get(name, {})}
    bundle = bundle_argv(name, ("multi_gpu_train",), overrides)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *bundle[1:]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    assert [row["epoch"] for row in json.loads((tmp_path / "run" / "history.json").read_text())] == [1]
    assert json.loads((tmp_path / "run" / "run_config.json").read_text())["network"]["parameters"] > 0
