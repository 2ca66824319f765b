"""No patient identifier from DICOM headers reaches any output of the pipeline.

DICOM series with identifiers planted in the PS3.15 basic-profile attributes (names, IDs, dates,
institution, physicians, operator, station, device serial, UIDs) go through ``medmtl
convert-dicom``, then the brain bundle trains, evaluates and infers on them with MLflow tracking
into a SQLite store. Every output is then searched for every planted value (dates as YYYYMMDD and
YYYY-MM-DD): each file under the output and data folders (raw bytes, plus gzip members, zip
members of ``.pt``/``.npz`` files and PNG text chunks), the MLflow database (raw bytes and what the
client returns: experiments, run names, params, tags, metric keys), the MLflow artifacts, and the
captured stdout/stderr of every command. Case ids in the outputs are the spec's ids.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_factory import make_dataset, save
from pydicom.uid import generate_uid

from medmtl.bundle_layers import bundle_command

REPO = Path(__file__).resolve().parents[2]
N_CASES = 8

# planted in every file (dates also checked as YYYY-MM-DD)
COMMON = {
    "PatientBirthDate": "19610723",
    "StudyDate": "20190314",
    "SeriesDate": "20190315",
    "AcquisitionDate": "20190316",
    "ContentDate": "20190317",
    "InstitutionName": "Quarrybank Memorial Infirmary",
    "InstitutionAddress": "12 Larkspur Lane Wolverhampton",
    "ReferringPhysicianName": "HOUSEWRIGHT^GREGORIO",
    "PerformingPhysicianName": "MARLOWE^ISADORA",
    "OperatorsName": "TECHNOLOGIST^OSWINA",
    "StationName": "CTSTATION9X",
    "StudyID": "STUDYID5521",
    "OtherPatientIDs": "OTHERPID9911",
    "PatientAddress": "7 Juniper Close Dudley",
    "PatientTelephoneNumbers": "07755512345",
    "MedicalRecordLocator": "MRNLOC0042217",
    "DeviceSerialNumber": "DEVSN88231",
    "StudyDescription": "HEAD ZEBRAFOX PROTOCOL",
    "IssuerOfPatientID": "ISSUERPIDHOSP",
}
DATES = ("PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")


def _per_case(k: int) -> dict[str, str]:
    return {
        "PatientName": f"ZEBRAFOX^QUENTINA{k:02d}",
        "PatientID": f"PIDSECRET{k:02d}X",
        "AccessionNumber": f"ACCN77{k:02d}31",
    }


def _volume(k: int, shape: tuple[int, int, int] = (12, 24, 24)) -> np.ndarray:
    """(slices, rows, cols) int16: a bright ellipsoid 'brain' whose size varies with the case."""
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]].astype(float)
    radius = 0.55 + 0.03 * (k % 4)
    inside = ((z - 5.5) / (shape[0] * radius)) ** 2 + ((y - 11.5) / (shape[1] * radius)) ** 2
    inside += ((x - 11.5) / (shape[2] * radius)) ** 2
    rng = np.random.default_rng(k)
    return (np.where(inside < 0.25, 800, 50) + rng.normal(0, 20, shape)).astype(np.int16)


def _write_study(folder: Path) -> tuple[dict[str, str], list[str]]:
    """One series per case under ``folder`` (neutral folder names); returns series UID -> case id, planted values."""
    series_case, planted = {}, [*COMMON.values()]
    study_uid = generate_uid()
    planted.append(study_uid)
    for k in range(N_CASES):
        case_id, series_uid = f"brain{k:02d}", generate_uid()
        series_case[series_uid] = case_id
        values = {**COMMON, **_per_case(k)}
        planted += [*_per_case(k).values(), series_uid]
        volume = _volume(k)
        for z, plane in enumerate(volume):
            ds = make_dataset(
                plane,
                series_uid=series_uid,
                instance=z + 1,
                position=(-24.0, -24.0, 2.0 * z),
                pixel_spacing=(2.0, 2.0),
                thickness=2.0,
                modality="MR",
                description="T1 AXIAL",
            )
            for key, value in values.items():
                setattr(ds, key, value)
            ds.StudyInstanceUID = study_uid
            planted.append(str(ds.SOPInstanceUID))
            save(ds, folder / f"series{k:02d}" / f"IM{z:04d}.dcm")
    planted += [f"{v[:4]}-{v[4:6]}-{v[6:]}" for k, v in COMMON.items() if k in DATES]
    # name parts as they could be split by a writer
    planted += ["ZEBRAFOX", "QUENTINA", "HOUSEWRIGHT", "GREGORIO", "MARLOWE", "ISADORA", "OSWINA"]
    planted += ["Quarrybank", "Larkspur", "Juniper"]
    return series_case, planted


def _run(cmd: list[str], cwd: Path, env: dict, logs: list[str]) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    logs += [result.stdout, result.stderr]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def _blobs(path: Path) -> list[tuple[str, bytes]]:
    """The raw bytes of ``path`` plus every decoded layer an identifier could hide in."""
    data = path.read_bytes()
    out = [(str(path), data)]
    name = path.name.lower()
    if name.endswith(".gz"):
        out.append((f"{path} (gunzipped)", gzip.decompress(data)))
    if zipfile.is_zipfile(io.BytesIO(data)):  # torch .pt, numpy .npz
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            out += [(f"{path}:{m}", archive.read(m)) for m in archive.namelist()]
            out += [(f"{path} (member names)", "\n".join(archive.namelist()).encode())]
    if name.endswith(".png"):
        from PIL import Image

        with Image.open(path) as image:
            out.append((f"{path} (PNG text)", json.dumps({k: str(v) for k, v in image.info.items()}).encode()))
    out.append((f"{path} (file name)", str(path).encode()))
    return out


def _find(planted: list[str], blobs: list[tuple[str, bytes]]) -> list[str]:
    leaks = []
    for where, data in blobs:
        lowered = data.lower()
        for value in planted:
            variants = {value, value.replace("^", " "), value.replace("^", ", ")}
            if any(v.lower().encode() in lowered or v.lower().encode("utf-16-le") in lowered for v in variants):
                leaks.append(f"{value!r} in {where}")
    return leaks


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("privacy")
    series_case, planted = _write_study(work / "dicom_study")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow' / 'mlflow.db'}"}
    (work / "mlflow").mkdir()
    logs: list[str] = []
    medmtl = [str(Path(sys.executable).with_name("medmtl"))]  # the console script users run
    _run([*medmtl, "convert-dicom", str(work / "dicom_study"), str(work / "converted")], work, env, logs)

    # the dataset in the brain spec's layout, named with the spec's case ids (not DICOM data)
    data = work / "brain_nifti"
    from medmtl.data.dicom import series_file_name

    for uid, case_id in series_case.items():
        image = nib.load(work / "converted" / series_file_name(uid))
        (data / "imagesTr").mkdir(parents=True, exist_ok=True)
        (data / "labelsTr").mkdir(parents=True, exist_ok=True)
        nib.save(image, data / "imagesTr" / f"{case_id}.nii.gz")
        mask = (np.asarray(image.dataobj) > 400).astype(np.uint8)
        nib.save(nib.Nifti1Image(mask, image.affine), data / "labelsTr" / f"{case_id}.nii.gz")
    with open(data / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "patient_id", "abnormal"])
        for k, case_id in enumerate(sorted(series_case.values())):
            writer.writerow([case_id, f"subject{k:02d}", k % 2])

    output = work / "run"
    bundle = [*medmtl, "run", "brain_mri_mtl"]  # python -m monai.bundle run with the bundle's config layers
    train = ["--data_spec", str(REPO / "data_specs" / "brain_nifti.yaml"), "--dataset_dir", str(data)]
    train += ["--spatial_size", "[32,32,32]", "--backbone_presets#unet#features", "[4,4,8,8,16,4]"]
    train += ["--batch_size", "2", "--epochs", "1", "--val_interval", "1"]
    run = ["--output_dir", str(output), "--tracking", "mlflow"]  # evaluation and inference read the rest from it
    _run([*bundle, "train", *run, *train], work, env, logs)
    # the same command `medmtl run` execs, started directly: `medmtl run` would first import MONAI itself
    _run(bundle_command("brain_mri_mtl", ["evaluate"], run), work, env, logs)
    _run(bundle_command("brain_mri_mtl", ["inference"], [*run, "--infer_split", "all"]), work, env, logs)
    return {"work": work, "output": output, "data": data, "planted": planted, "logs": logs, "env": env}


def test_the_pipeline_produced_outputs(pipeline) -> None:
    output = pipeline["output"]
    for name in ("models/best.pt", "models/last.pt", "history.json", "splits.json", "eval/summary.json"):
        assert (output / name).is_file(), name
    assert list((output / "predictions").rglob("*.nii.gz")) and (output / "predictions" / "predictions.csv").is_file()
    assert list((pipeline["work"] / "mlflow").rglob("*")), "no MLflow store or artifacts"


def test_no_planted_identifier_in_any_output_file(pipeline) -> None:
    folders = [pipeline["output"], pipeline["data"], pipeline["work"] / "converted", pipeline["work"] / "mlflow"]
    blobs = [b for folder in folders for path in sorted(folder.rglob("*")) if path.is_file() for b in _blobs(path)]
    assert len(blobs) > 50
    leaks = _find(pipeline["planted"], blobs)
    assert not leaks, "\n".join(leaks[:50])


def test_no_planted_identifier_in_logs(pipeline) -> None:
    leaks = _find(pipeline["planted"], [(f"log {i}", text.encode()) for i, text in enumerate(pipeline["logs"])])
    assert not leaks, "\n".join(leaks)


def test_no_planted_identifier_in_mlflow_records(pipeline) -> None:
    import mlflow

    client = mlflow.MlflowClient(pipeline["env"]["MLFLOW_TRACKING_URI"])
    records = []
    for experiment in client.search_experiments():
        records.append(experiment.name)
        for run in client.search_runs([experiment.experiment_id]):
            records += [run.info.run_name or "", json.dumps(run.data.params), json.dumps(run.data.tags)]
            records += list(run.data.metrics)
            records += [a.path for a in client.list_artifacts(run.info.run_id)]
    assert any("train_" in r for r in records)
    leaks = _find(pipeline["planted"], [("mlflow records", "\n".join(records).encode())])
    assert not leaks, "\n".join(leaks)


def test_case_ids_in_outputs_are_the_spec_ids(pipeline) -> None:
    output = pipeline["output"]
    spec_ids = {f"brain{k:02d}" for k in range(N_CASES)}
    with open(output / "predictions" / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["case_id"] for r in rows} == spec_ids
    masks = {p.name.removesuffix(".nii.gz") for p in (output / "predictions").rglob("*.nii.gz")}
    assert masks <= spec_ids and masks
    splits = json.loads((output / "splits.json").read_text())
    assert {c for ids in splits.values() for c in ids} == spec_ids
    summary = (output / "eval" / "summary.json").read_text()
    assert all(f"PIDSECRET{k:02d}X" not in summary for k in range(N_CASES))


def test_converted_nifti_has_no_header_text(pipeline) -> None:
    """The NIfTI header's free-text fields are empty and no extension carries DICOM data."""
    for path in sorted((pipeline["work"] / "converted").glob("*.nii.gz")):
        image = nib.load(path)
        header = image.header
        assert bytes(header["descrip"]).strip(b"\x00") == b"" and bytes(header["aux_file"]).strip(b"\x00") == b""
        assert not list(header.extensions)
    # and the DICOM input really carried the identifiers (the scan would find them there)
    ds = pydicom.dcmread(next((pipeline["work"] / "dicom_study").rglob("*.dcm")))
    assert str(ds.PatientName).startswith("ZEBRAFOX") and ds.InstitutionName == COMMON["InstitutionName"]
    leaks = _find(pipeline["planted"], _blobs(next((pipeline["work"] / "dicom_study").rglob("*.dcm"))))
    assert leaks  # the scanner finds identifiers where they are


def test_reading_dicom_directly_keeps_no_identifier_in_metadata(pipeline) -> None:
    """A spec may point at DICOM series instead of converted NIfTI: the loaded image's metadata is clean too."""
    from medmtl.data.readers import load_image

    image = load_image(pipeline["work"] / "dicom_study" / "series03")
    assert image.shape[-3:] == (24, 24, 12)
    text = repr({k: v for k, v in image.meta.items() if k != "filename_or_obj"})  # the path is the user's
    leaks = _find(pipeline["planted"], [("metadata", text.encode())])
    assert not leaks, leaks
