"""medmtl predict's inputs: found in folders with ids from their paths, checked one by one, listed as JSON;
models and output folders it cannot use refused with the fix."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medmtl.cli import main
from medmtl.deploy.inputs import FAILED_FILE, check_input, find_inputs, read_input_list, write_failed, write_input_list
from medmtl.deploy.predict import PredictError, predict, resolve_model
from medmtl.resources import resolve_resource


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "in"
    (root / "site_a").mkdir(parents=True)
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(root / "site_a" / "case1.png")
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(root / "rgb.png")
    nib.save(nib.Nifti1Image(np.zeros((6, 7, 8), dtype=np.float32), np.eye(4)), root / "vol.nii.gz")
    np.save(root / "vol.npy", np.zeros((6, 7, 8), dtype=np.float32))  # same stem as vol.nii.gz
    (root / "broken.png").write_bytes(b"not an image at all")
    (root / "._case1.png").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork: skipped
    (root / "notes.txt").write_text("report")
    return root


def test_inputs_are_found_recursively_with_ids_from_their_paths(folder) -> None:
    found = {c.case_id: c.path.relative_to(folder).as_posix() for c in find_inputs(folder)}
    assert found == {
        "broken": "broken.png",
        "rgb": "rgb.png",
        "site_a/case1": "site_a/case1.png",
        "vol.nii.gz": "vol.nii.gz",  # two files differ only in the suffix: both keep their full name
        "vol.npy": "vol.npy",
    }
    (single,) = find_inputs(folder / "site_a" / "case1.png")
    assert single.case_id == "case1"
    with pytest.raises(ValueError, match="holds no image file"):
        find_inputs(_empty(folder))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_inputs(folder / "missing")


def _empty(folder):
    path = folder.parent / "empty"
    path.mkdir()
    (path / "notes.txt").write_text("x")
    return path


def test_each_input_is_checked_against_the_model_dimensions(folder) -> None:
    assert check_input(folder / "site_a" / "case1.png", 2) is None
    assert check_input(folder / "rgb.png", 2) is None  # colour radiograph screenshots are read as grey
    assert check_input(folder / "vol.nii.gz", 3) is None
    assert "takes a 2D image" in check_input(folder / "vol.nii.gz", 2) and "6 x 7 x 8" in check_input(
        folder / "vol.nii.gz", 2
    )
    assert "takes a 3D volume" in check_input(folder / "site_a" / "case1.png", 3)
    reason = check_input(folder / "broken.png", 2)
    assert "not a PNG file" in reason and "export it again" in reason  # the reader's finding and its fix
    assert "folder" in check_input(folder / "site_a", 2)


def test_input_list_and_failed_table_round_trip(folder, tmp_path) -> None:
    cases = find_inputs(folder)
    path = write_input_list(cases, "image", tmp_path / "inputs.json")
    entries = read_input_list(path)
    assert [e["case_id"] for e in entries] == [c.case_id for c in cases]
    assert all(e["image"] == str(c.path.resolve()) for e, c in zip(entries, cases, strict=True))
    (tmp_path / "bad.json").write_text(json.dumps([{"case_id": 1, "image": ["$exec"]}]))
    with pytest.raises(ValueError, match="bad.json: expected a non-empty JSON list"):
        read_input_list(tmp_path / "bad.json")
    write_failed([(cases[0], "=HYPERLINK(1)")], tmp_path / FAILED_FILE)
    assert "'=HYPERLINK(1)" in (tmp_path / FAILED_FILE).read_text()  # spreadsheet-safe


def test_unusable_models_and_output_folders_are_refused(folder, tmp_path, capsys) -> None:
    with pytest.raises(PredictError, match="is not a folder"):
        resolve_model(tmp_path / "nothing")
    with pytest.raises(PredictError, match="has no run_config.json"):
        resolve_model(folder)
    run = tmp_path / "run"
    run.mkdir()
    (run / "run_config.json").write_text(
        json.dumps({"format": "medmtl.run_config/1", "bundle": "demo", "settings": {"data": {}, "model": {}}})
    )
    with pytest.raises(PredictError, match="is not on this machine: give the spec"):
        predict(folder, tmp_path / "out", run)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "predictions.csv").write_text("case_id\n")
    demo_spec = str(resolve_resource("data_specs/demo.yaml"))
    calls = []
    with pytest.raises(PredictError, match="already holds a prediction .*--overwrite"):
        predict(folder, tmp_path / "out", run, data_spec=demo_spec, runner=calls.append)
    assert not calls and (tmp_path / "out" / "predictions.csv").read_text() == "case_id\n"  # nothing touched
    with pytest.raises(PredictError, match="inside the output folder .*give another -o"):
        predict(folder, folder, run, data_spec=demo_spec, runner=calls.append)  # its own outputs are no input
    assert not calls
    with pytest.raises(SystemExit):
        main(["predict", "-i", str(folder), "-o", str(tmp_path / "o2"), "-m", str(run), "--device", "gpu"])
    assert "expected cpu, cuda or cuda:N" in capsys.readouterr().err


def _knee_run(tmp_path):
    """A run folder recording the knee bundle and its spec (three inputs per case): enough for predict's
    input handling; the runner given in place of the bundle's inference never reads the weights."""
    run = tmp_path / "knee_run"
    run.mkdir()
    spec = str(resolve_resource("data_specs/mrnet.yaml"))
    settings = {"data": {"data_spec": spec}, "model": {}}
    (run / "run_config.json").write_text(
        json.dumps({"format": "medmtl.run_config/1", "bundle": "knee_mri_mtl", "settings": settings})
    )
    return run


def _planes(root, stem, planes, shape=(3, 8, 8)):
    for plane in planes:
        path = root / plane / f"{stem}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.random.default_rng(len(path.parts)).integers(0, 255, shape, dtype=np.uint8))


def test_a_model_with_several_inputs_gets_the_images_of_each_case_paired_by_input_folder(tmp_path) -> None:
    """MRNet's layout (valid/<plane>/<id>.npy) with the spec's input names: complete cases listed for the
    bundle with one path per input; a case lacking a plane, an image in no plane's folder and an unreadable
    plane are rows of failed.csv naming the input and the path expected."""
    run, root = _knee_run(tmp_path), tmp_path / "exams"
    _planes(root / "valid", "1130", ("axial", "coronal", "sagittal"))
    _planes(root / "valid", "1131", ("axial", "sagittal"))  # no coronal
    _planes(root / "other" / "site", "7", ("sagittal", "axial", "coronal"))
    (root / "valid" / "coronal" / "1132.npy").write_bytes(b"truncated")
    _planes(root / "valid", "1132", ("axial", "sagittal"))
    np.save(root / "stray.npy", np.zeros((3, 8, 8), dtype=np.uint8))
    _planes(root / "valid", "1133", ("axial", "sagittal"))  # a NIfTI coronal: not the arrays the model learnt
    nib.save(
        nib.Nifti1Image(np.zeros((8, 8, 3), dtype=np.float32), np.eye(4)), root / "valid" / "coronal" / "1133.nii.gz"
    )
    argvs = []
    result = predict(root, tmp_path / "out", run, runner=lambda argv: argvs.append(argv) or 0)
    entries = read_input_list(tmp_path / "out" / "inputs.json")
    assert [e["case_id"] for e in entries] == ["other/site/7", "valid/1130"]
    assert entries[1] == {"case_id": "valid/1130"} | {
        p: str((root / "valid" / p / "1130.npy").resolve()) for p in ("axial", "coronal", "sagittal")
    }
    assert entries[0]["coronal"] == str((root / "other" / "site" / "coronal" / "7.npy").resolve())
    (argv,) = argvs
    assert argv[argv.index("--infer_files") + 1] == str(tmp_path / "out" / "inputs.json")
    with open(tmp_path / "out" / FAILED_FILE, newline="") as handle:
        failed = {row["case_id"]: row for row in csv.DictReader(handle)}
    assert set(failed) == {"valid/1131", "valid/1132", "valid/1133", "stray"} == {c.case_id for c, _ in result.failed}
    assert (
        "trained on bare NumPy arrays" in failed["valid/1133"]["reason"]
        and "reformat-planes" in failed["valid/1133"]["reason"]
    )
    expected = root / "valid" / "coronal" / "1131.npy"
    assert failed["valid/1131"]["path"] == str(expected)
    assert (
        f"no coronal image for this case: expected {expected} (found axial, sagittal)" in failed["valid/1131"]["reason"]
    )
    assert failed["valid/1132"]["reason"].startswith(f"coronal ({root / 'valid' / 'coronal' / '1132.npy'}): ")
    assert "in no folder named after one of the model's inputs" in failed["stray"]["reason"]


def test_a_model_with_several_inputs_refuses_one_file_and_a_folder_without_input_folders(folder, tmp_path) -> None:
    run, calls = _knee_run(tmp_path), []
    with pytest.raises(PredictError, match="takes 3 images per case .*one sub-folder per input named axial"):
        predict(folder / "vol.npy", tmp_path / "out", run, runner=calls.append)
    with pytest.raises(PredictError, match="no image of .* is in a folder named after one of the model's inputs"):
        predict(folder, tmp_path / "out", run, runner=calls.append)
    assert not calls and not (tmp_path / "out").exists()


def test_jsrt_raw_files_are_inputs_read_by_the_raw_reader_and_checked_by_size(tmp_path) -> None:
    """JSRT's layout (All247images/JPC*.IMG: headerless 2048 x 2048 big-endian 12-bit words): found as
    images, read by the reader the bundles use; a truncated download fails with both sizes named."""
    from medmtl.data.readers import load_image

    images = tmp_path / "jsrt" / "All247images"
    images.mkdir(parents=True)
    pixels = np.random.default_rng(0).integers(0, 4096, (2048, 2048)).astype(">u2")
    pixels.tofile(images / "JPCLN001.IMG")
    (images / "JPCNN002.IMG").write_bytes(pixels.tobytes()[:4096])
    (images / "JPCNN002.hdr.txt").write_text("not an image")
    found = {c.case_id: c.path.name for c in find_inputs(tmp_path / "jsrt")}
    assert found == {"All247images/JPCLN001": "JPCLN001.IMG", "All247images/JPCNN002": "JPCNN002.IMG"}
    assert check_input(images / "JPCLN001.IMG", 2) is None
    np.testing.assert_array_equal(np.asarray(load_image(images / "JPCLN001.IMG")), pixels.T)  # as PIL lays out
    reason = check_input(images / "JPCNN002.IMG", 2)
    assert "4096 bytes" in reason and "has 8388608" in reason
    assert "takes a 3D volume" in check_input(images / "JPCLN001.IMG", 3)


def test_raw_files_and_pngs_in_one_folder_batch_together(tmp_path) -> None:
    """A JSRT .IMG and a PNG radiograph in one predict folder end up in one batch: both carry MONAI's 4x4
    affine (the raw reader's spacing kept on its diagonal), so collating them does not fail."""
    from monai.data import list_data_collate
    from monai.transforms import Compose, EnsureChannelFirstd, Resized

    from medmtl.data.readers import make_loader

    pixels = np.random.default_rng(1).integers(0, 4096, (2048, 2048)).astype(">u2")
    pixels.tofile(tmp_path / "JPCLN001.IMG")
    Image.fromarray(np.arange(48 * 40, dtype=np.uint16).reshape(48, 40)).save(tmp_path / "cxr.png")
    chain = Compose(
        [
            make_loader(keys="image"),
            EnsureChannelFirstd(keys="image", channel_dim="no_channel"),
            Resized(keys="image", spatial_size=(16, 16)),
        ]
    )
    raw, png = (chain({"image": str(tmp_path / name)}) for name in ("JPCLN001.IMG", "cxr.png"))
    np.testing.assert_allclose(np.diag(raw["image"].meta["original_affine"])[:3], [0.175, 0.175, 1.0])
    batch = list_data_collate([raw, png])
    assert batch["image"].shape == (2, 1, 16, 16)
    assert batch["image"].affine.shape == (2, 4, 4)


def test_dicom_outputs_the_inference_could_not_write_are_reported(folder, tmp_path) -> None:
    """The inference's dicom_failed.csv (written by the prediction writer's own function) is read into the
    result (the CLI then exits with status 3); a later prediction into the folder does not keep it."""
    from medmtl.inference.dicom_failures import DICOM_FAILED_FILE, DicomFailure, write_dicom_failures

    run = tmp_path / "run"
    run.mkdir()
    spec = str(resolve_resource("data_specs/demo.yaml"))
    record = {"format": "medmtl.run_config/1", "bundle": "demo", "settings": {"data": {"data_spec": spec}, "model": {}}}
    (run / "run_config.json").write_text(json.dumps(record))
    failure = DicomFailure("site_a/case1", "lesion DICOM SEG", "ValueError: the mask's affine differs")

    def inference(argv: list[str]) -> int:
        out = argv[argv.index("--infer_dir") + 1]
        write_dicom_failures([failure], f"{out}/{DICOM_FAILED_FILE}")
        return 0

    out = tmp_path / "out"
    result = predict(folder / "site_a", out, run, runner=inference)
    assert result.dicom_failed == [failure] and not result.failed
    again = predict(folder / "site_a", out, run, runner=lambda argv: 0, overwrite=True)
    assert again.dicom_failed == [] and not (out / DICOM_FAILED_FILE).exists()
