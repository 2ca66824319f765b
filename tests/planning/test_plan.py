"""``medmtl plan``: the rules, the plan file, memory and time fitting by trial steps, and ``--plan`` in a bundle."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn.utils.class_weight import compute_class_weight

from medmtl.data.demo import generate_demo_data
from medmtl.data.spec import DatasetSpec, load_spec
from medmtl.data.validate.dataset import DatasetInvalidError
from medmtl.planning import plan as plan_module
from medmtl.planning import trial as trial_module
from medmtl.planning.plan import make_plan, parse_duration
from medmtl.planning.plan_file import Choice, PlanError, check_plan, read_plan, spec_digest, write_plan
from medmtl.planning.rules import (
    MIN_SIDE,
    SIZE_DIVISOR,
    augmentation_choices,
    intensity_choices,
    network_choices,
    preferred_batch_size,
    size_ladder,
    task_choices,
)
from medmtl.planning.trial import BundleTrial, TrialResult
from medmtl.transforms import build_transforms

from .conftest import worker_children

REPO = Path(__file__).resolve().parents[2]
DEMO_SPEC = REPO / "data_specs" / "demo.yaml"


def _fingerprint(modality: str, dims: int, shape, spacing, tasks: dict | None = None) -> dict:
    return {
        "spec": {"name": "x", "modality": modality, "spatial_dims": dims},
        "inputs": {
            "image": {
                "median_shape": list(shape),
                "median_spacing": list(spacing),
                "intensity": {"p00_5": -1000.0, "p99_5": 1500.0, "mean": 40.0, "std": 350.0, "region": "foreground"},
            }
        },
        "tasks": tasks or {},
        "num_cases": 10,
    }


# ---- rules -------------------------------------------------------------------------------------


def test_the_network_says_why_it_has_no_deep_supervision() -> None:
    presets = {"resunet": {}, "unet": {}}
    choices = network_choices(_fingerprint("US", 2, (256, 214), (1, 1)), "cpu", presets)
    assert {c.key: c.value for c in choices if c.key} == {
        "backbone": "resunet",
        "backbone_presets::resunet::channels": [16, 32, 64, 128, 256],
    }  # deep_supervision stays at the bundle's 0
    (note,) = [c.reason for c in choices if not c.key]
    assert note.startswith("no deep supervision (--deep_supervision 2")
    volumes = network_choices(_fingerprint("MR", 3, (181, 217, 181), (1, 1, 1)), "cpu", presets)
    assert "deep_supervision" not in {c.key for c in volumes}
    assert [c.reason for c in volumes if not c.key][0].startswith("no deep supervision")


def test_the_plan_keeps_the_bundles_rotation_range() -> None:
    fingerprint = _fingerprint("CR", 2, (2048, 2048), (0.175, 0.175))
    chest = augmentation_choices(fingerprint, bundle_rotation=7.0)
    assert {c.key: c.value for c in chest if c.key} == {"train::preprocessing::flip_axes": []}
    (note,) = [c.reason for c in chest if not c.key]
    assert note.startswith("rotations: the bundle's own range (up to 7 degrees), not overridden")


def test_intensity_follows_the_modality() -> None:
    ct = {c.key: c.value for c in intensity_choices(_fingerprint("CT", 3, (64,) * 3, (1,) * 3))}
    assert ct["intensity"] == "clip_zscore"
    assert ct["intensity_stats"] == {"low": -1000.0, "high": 1500.0, "mean": 40.0, "std": 350.0}
    assert intensity_choices(_fingerprint("MR", 3, (64,) * 3, (1,) * 3))[0].value == "zscore"
    assert intensity_choices(_fingerprint("US", 2, (256, 200), (1, 1)))[0].value == "percentile"


def test_clip_zscore_clips_to_the_dataset_range_then_standardises() -> None:
    spec = load_spec(DEMO_SPEC, spatial_dims=2, modality="CT")
    stats = {"low": -100.0, "high": 300.0, "mean": 50.0, "std": 100.0}
    chain = build_transforms(spec, 8, intensity="clip_zscore", intensity_stats=stats)
    step = next(t for t in chain.transforms if type(t).__name__ == "ScaleIntensityRanged")
    values = torch.tensor([[[-500.0, -100.0, 50.0, 300.0, 900.0]]])
    out = step({"image": values})["image"]
    expected = (np.clip(values.numpy(), -100, 300) - 50) / 100
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-6)
    with pytest.raises(ValueError, match="intensity_stats"):
        build_transforms(spec, 8, intensity="clip_zscore")


def test_2d_ladder_starts_at_the_median_image_and_keeps_network_friendly_sizes() -> None:
    ladder = size_ladder(_fingerprint("US", 2, (256, 214), (1, 1)))
    sizes = [tuple(c["spatial_size"]) for c in ladder]
    assert sizes[0] == (256, 256) and (128, 128) in sizes  # a square of the longer side
    assert all(s % SIZE_DIVISOR == 0 and s >= MIN_SIDE for size in sizes for s in size)
    assert [math.prod(s) for s in sizes] == sorted((math.prod(s) for s in sizes), reverse=True)
    assert len(set(sizes)) == len(sizes) and all(c["pixdim"] is None for c in ladder)


def test_3d_ladder_coarsens_fine_axes_of_anisotropic_data_first() -> None:
    ladder = size_ladder(_fingerprint("MR", 3, (320, 320, 40), (0.5, 0.5, 4.0)))
    spacings = [c["pixdim"] for c in ladder]
    assert spacings[0] == [0.5, 0.5, 4.0]
    assert spacings[1][:2] == [0.75, 0.75] and spacings[1][2] == 4.0  # the coarse axis waits
    for candidate in ladder:  # the ROI covers the median extent at that voxel size (up to the cap)
        for extent, pix, roi in zip((160, 160, 160), candidate["pixdim"], candidate["spatial_size"], strict=True):
            assert roi % SIZE_DIVISOR == 0 and (roi >= extent / pix or roi == 128)
    iso = size_ladder(_fingerprint("MR", 3, (181, 217, 181), (1, 1, 1)))
    assert [c["pixdim"][0] for c in iso][:4] == [1.0, 1.5, 2.0, 3.0]
    assert iso[4]["spatial_size"] == [48, 64, 48]  # 4 mm: 181 / 4 = 45.25 -> 48


def test_preferred_batch_size() -> None:
    assert (
        preferred_batch_size(627, 2) == 16 and preferred_batch_size(40, 2) == 2 and preferred_batch_size(5000, 2) == 32
    )
    assert preferred_batch_size(5, 3) == 2
    # never more than the training cases: a batch of 2 from one case is a step of 1
    assert preferred_batch_size(1, 3) == 1 and preferred_batch_size(3, 2) == 2 and preferred_batch_size(1, 2) == 1


def test_task_weights_and_class_weights_from_label_counts() -> None:
    tasks = {
        "lesion": {"kind": "segmentation", "labelled": 100, "class_counts": [100, 80]},
        "grade": {"kind": "multiclass", "labelled": 100, "class_counts": [70, 20, 10]},
        "ok": {"kind": "binary", "labelled": 100, "class_counts": [50, 50]},
        "unseen": {"kind": "binary", "labelled": 0, "class_counts": [0, 0]},
    }
    choices = {c.key: c for c in task_choices(_fingerprint("US", 2, (64, 64), (1, 1), tasks), {})}
    assert choices["weighting"].value == "fixed"
    assert choices["loss::weighting_kwargs"].value == {"weights": {"grade": 0.5, "ok": 0.5, "unseen": 0.5}}
    labels = np.repeat([0, 1, 2], [70, 20, 10])
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    np.testing.assert_allclose(choices["loss::class_weights"].value["grade"], expected, rtol=1e-3)
    assert "loss::pos_weight" not in choices  # 50/50 needs no weight
    selection = choices["validate::key_metric::mean_primary::tasks"]
    assert (
        "unseen" in selection.reason
        and selection.value == "$[t for t in @tasks if t.name in ['grade', 'lesion', 'ok']]"
    )


# ---- the plan file ------------------------------------------------------------------------------


def test_plan_file_round_trip_with_reasons_and_refusals(tmp_path: Path) -> None:
    spec = load_spec(DEMO_SPEC)
    meta = {"version": 1, "bundle": "demo", "spec_name": spec.name, "spec_digest": spec_digest(spec)}
    choices = [
        Choice("spatial_size", [48, 32], "measured"),
        Choice("loss::weighting_kwargs", {"weights": {"malignant": 0.5}}, "why: weights"),
        Choice("", None, "a note only"),
    ]
    path = write_plan(tmp_path / "plan.yaml", meta, choices, ["header"])
    text = path.read_text()
    assert "# measured\nspatial_size: [48, 32]" in text and "# a note only" in text
    data = read_plan(path)
    assert data["spatial_size"] == [48, 32] and data["loss::weighting_kwargs"] == {"weights": {"malignant": 0.5}}
    check_plan(data["plan"], spec, "bundles/demo")  # the right spec and bundle pass
    other = load_spec(DEMO_SPEC, name="other")
    with pytest.raises(PlanError) as err:
        check_plan({**data["plan"], "version": 0}, other, "bundles/ultrasound_mtl")
    message = str(err.value)
    assert "version 0" in message and "'other'" in message and "ultrasound_mtl" in message  # all at once
    with pytest.raises(PlanError, match="--args_file"):
        check_plan(str(path), spec)
    (tmp_path / "not_a_plan.yaml").write_text("epochs: 3\n")
    with pytest.raises(PlanError, match="not a medmtl plan"):
        read_plan(tmp_path / "not_a_plan.yaml")


def test_durations() -> None:
    assert parse_duration("10m") == 600 and parse_duration("90s") == 90 and parse_duration("1.5h") == 5400
    assert parse_duration(2) == 120
    with pytest.raises(ValueError, match="duration"):
        parse_duration("ten minutes")


# ---- fitting on the device ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("plan_demo") / "data"
    generate_demo_data(root, seed=0)
    return root / "demo2d"


def test_batch_is_fitted_to_the_measured_memory(demo_data: Path) -> None:
    trial = BundleTrial("demo", {"data_spec": str(DEMO_SPEC), "dataset_dir": str(demo_data)}, torch.device("cpu"))
    trial.steps, trial.min_timed_seconds = 1, 0.0
    try:
        fingerprint = _fingerprint("US", 2, (96, 96), (1, 1))
        counts = {"train": 320, "val": 0}  # preferred batch 8; a day's time budget: memory alone decides here
        cache = plan_module.cache_bytes(fingerprint, [96, 96], 320)
        (roomy, _, _), trials = plan_module._fit(trial, fingerprint, counts, 1e6, 1 << 40, 2)
        assert roomy.batch_size == 8 and [t.batch_size for t in trials] == [1, 2, 4, 8]  # measured one by one
        peaks = {t.batch_size: t.peak_bytes for t in trials}
        assert peaks[8] > peaks[1] + (16 << 20)  # activations grow with the batch
        budget = (peaks[1] + peaks[8]) // 2 + cache
        (result, _, _), trials = plan_module._fit(trial, fingerprint, counts, 1e6, budget, 2)
        assert result.fits and result.peak_bytes + cache <= budget and 1 <= result.batch_size < 8
        assert result.batch_size == max(t.batch_size for t in trials if t.fits)  # the largest that fitted
        tiny = _fingerprint("US", 2, (32, 32), (1, 1))  # one size on the ladder
        trial.in_process = True  # a failure needs no clean process
        with pytest.raises(PlanError, match="nothing fits the memory budget.*--memory"):
            plan_module._fit(trial, tiny, counts, 3600.0, peaks[1] // 4, 2)
        with pytest.raises(PlanError, match="no time for one epoch.*larger --time-budget"):
            plan_module._fit(trial, tiny, {"train": 3200, "val": 0}, 20.0, 1 << 40, 2)
    finally:
        trial.close()


def test_only_the_largest_fitting_batch_is_timed_in_full(demo_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The smaller batch sizes are stepped once for their memory; when the sweep stops below the last size
    (here batch 4 peaks over the budget), the largest that fitted is timed again with every step."""
    peaks = iter([100, 200, 10**12, 300])  # batches 1, 2, 4, then the timing rerun of 2
    timed: list[tuple[int, float]] = []
    real_iteration_seconds = trial_module._iteration_seconds

    def recorded(trainer, device, steps, min_seconds):
        timed.append((steps, min_seconds))
        return real_iteration_seconds(trainer, device, steps, min_seconds)

    monkeypatch.setattr(trial_module, "_peak", lambda device: next(peaks))
    monkeypatch.setattr(trial_module, "_iteration_seconds", recorded)
    trial = BundleTrial("demo", {"data_spec": str(DEMO_SPEC), "dataset_dir": str(demo_data)}, torch.device("cpu"))
    try:
        results = trial.measure({"spatial_size": [32, 32]}, [1, 2, 4], memory_budget=1000, steps=3, min_seconds=0.0)
        assert [(r.batch_size, r.peak_bytes, r.fits) for r in results] == [
            (1, 100, True),
            (2, 200, True),
            (4, 10**12, False),
        ]
        assert timed == [(1, 0.0), (1, 0.0), (3, 0.0), (3, 0.0)]  # 1, 2 once; the last size, then 2, in full
        assert all(math.isfinite(r.step_seconds) and r.step_seconds > 0 for r in results[:2])
        timed.clear()
        peaks = iter([100, 200])
        monkeypatch.setattr(trial_module, "_peak", lambda device: next(peaks))
        results = trial.measure({"spatial_size": [32, 32]}, [1, 2], memory_budget=1000, steps=3, min_seconds=0.0)
        assert [r.fits for r in results] == [True, True] and timed == [(1, 0.0), (3, 0.0)]  # the last size: no rerun
    finally:
        trial.close()


def test_the_trials_parses_share_one_case_table_per_data_setting(
    demo_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Building the cases lists the files and searches for duplicates: once per data setting, not once per
    batch size (each batch size parses the bundle's config again)."""
    built = []
    real_build = DatasetSpec.build_cases
    monkeypatch.setattr(
        DatasetSpec, "build_cases", lambda spec, **kw: built.append(spec.name) or real_build(spec, **kw)
    )
    trial = BundleTrial("demo", {"data_spec": str(DEMO_SPEC), "dataset_dir": str(demo_data)}, torch.device("cpu"))
    try:
        assert len(trial.measure({"spatial_size": [32, 32]}, [1, 2, 4], 1 << 40, steps=1, min_seconds=0.0)) == 3
        assert len(trial.measure({"spatial_size": [48, 48]}, [1], 1 << 40, steps=1, min_seconds=0.0)) == 1
        assert built == ["demo2d"]
        trial.measure({"spec_overrides": {"name": "renamed"}, "spatial_size": [32, 32]}, [1], 1 << 40, 1, 0.0)
        assert built == ["demo2d", "renamed"]
    finally:
        trial.close()


class _TimedTrial:
    """Answers trial requests with given step seconds per ``amp`` value: the precision decision is under test
    here, the timing itself in the tests above and in ``demo_plan``."""

    def __init__(self, device: str, seconds: dict[bool, float]) -> None:
        self.device = torch.device(device)
        self.seconds = seconds
        self.requests: list[dict] = []

    def run_batches(
        self, overrides: dict, batch_sizes: list[int], memory_budget: int, time_only: bool = False
    ) -> list[TrialResult]:
        self.requests.append({**overrides, "batch_sizes": list(batch_sizes), "time_only": time_only})
        size = tuple(overrides["spatial_size"])
        return [TrialResult(size, batch_sizes[0], 1 << 20, self.seconds[overrides["amp"]], 0.01, True)]


@pytest.mark.parametrize(
    ("float32", "bfloat16", "chosen"),
    [(0.21, 0.14, True), (0.21, 0.20, None), (0.21, 0.40, None)],  # 1.5x faster; 5 % (noise); emulated: slower
)
def test_the_cpu_plan_takes_bfloat16_autocast_only_when_a_trial_step_is_clearly_faster(float32, bfloat16, chosen):
    fingerprint, counts = _fingerprint("US", 2, (256, 214), (1, 1)), {"train": 627, "val": 0}
    trial = _TimedTrial("cpu", {False: float32, True: bfloat16})
    choices = plan_module._precision_choices(trial, fingerprint, counts, 8 << 30, 2, "auto")
    assert [r["amp"] for r in trial.requests] == [False, True]  # the same size and batch, timed both ways
    assert trial.requests[0]["spatial_size"] == trial.requests[1]["spatial_size"] == [128, 128]  # the reference
    assert trial.requests[0]["batch_sizes"] == [preferred_batch_size(627, 2)]
    assert all(r["time_only"] for r in trial.requests)  # no worker: their memory is not used
    (choice,) = choices
    assert choice.value is chosen and choice.key == ("amp" if chosen else "")
    assert f"{bfloat16:.3f} s per step with bfloat16 autocast vs {float32:.3f} s in float32" in choice.reason
    cuda = _TimedTrial("cuda", {False: float32, True: bfloat16})
    assert plan_module._precision_choices(cuda, fingerprint, counts, 8 << 30, 2, "auto") == [] and not cuda.requests


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_plan_amp_on_or_off_is_written_as_given_without_timing(device: str, tmp_path: Path) -> None:
    fingerprint, counts = _fingerprint("US", 2, (256, 214), (1, 1)), {"train": 627, "val": 0}
    for mode, value in (("on", True), ("off", False)):
        trial = _TimedTrial(device, {False: 0.2, True: 0.1})
        (choice,) = plan_module._precision_choices(trial, fingerprint, counts, 8 << 30, 2, mode)
        assert (choice.key, choice.value) == ("amp", value) and f"--amp {mode}" in choice.reason
        assert not trial.requests
    with pytest.raises(ValueError, match="--amp must be one of auto, on, off; got 'fast'"):
        make_plan(DEMO_SPEC, tmp_path, out=tmp_path / "plan.yaml", amp="fast", progress=False)
    assert not (tmp_path / "plan.yaml").exists()


@pytest.fixture(scope="module")
def demo_plan(demo_data: Path, tmp_path_factory) -> plan_module.PlanResult:
    out = tmp_path_factory.mktemp("plan_out") / "plan.yaml"
    return make_plan(
        DEMO_SPEC, demo_data, out=out, bundle="demo", time_budget="2m", memory="8GiB", workers=1, progress=False
    )


def test_plan_fits_epochs_to_the_time_budget(demo_plan: plan_module.PlanResult, demo_data: Path) -> None:
    data = read_plan(demo_plan.plan_path)
    assert data["plan"]["bundle"] == "demo" and data["plan"]["time_budget_s"] == 120
    assert data["dataset_dir"] == str(demo_data.resolve()) and data["time_limit_minutes"] == 2
    chosen = next(t for t in reversed(demo_plan.trials) if list(t.spatial_size) == data["spatial_size"])
    steps = math.ceil(len(load_spec(DEMO_SPEC).datalist("train", root=demo_data)) / data["batch_size"])
    epoch_seconds = steps * chosen.step_seconds + chosen.checkpoint_seconds
    assert chosen.checkpoint_seconds > 0  # measured: last.pt is saved after every epoch
    assert data["epochs"] >= 1 and data["epochs"] * epoch_seconds <= 120  # fits the budget
    text = demo_plan.plan_path.read_text()
    for key in ("spatial_size", "batch_size", "epochs", "backbone", "intensity", "weighting"):
        line = text.index(f"\n{key}:")
        assert text[:line].rsplit("\n", 1)[-1].startswith("# "), f"{key} has no reason above it"
    assert (demo_plan.plan_path.parent / "fingerprint.json").is_file()
    assert "s per step with bfloat16 autocast vs" in text  # the CPU precision was timed, whichever won


def test_plan_on_invalid_data_reports_every_problem(demo_data: Path, tmp_path: Path) -> None:
    broken = tmp_path / "demo2d"
    import shutil

    shutil.copytree(demo_data, broken)
    images = sorted(p for p in broken.rglob("*.png") if "mask" not in p.name)[:2]
    for image in images:
        image.write_bytes(b"not a png")
    with pytest.raises(DatasetInvalidError) as err:
        make_plan(DEMO_SPEC, broken, out=tmp_path / "plan.yaml", bundle="demo", workers=1, progress=False)
    assert all(image.name in str(err.value) for image in images)
    assert not (tmp_path / "plan.yaml").exists()
    assert worker_children() == []  # the trial workers started while validating are stopped


def test_bundle_trains_from_the_plan_and_explicit_overrides_win(
    demo_plan: plan_module.PlanResult, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "medmtl.cli",
        "run",
        "demo",
        "train",
        "--plan",
        str(demo_plan.plan_path),
        "--epochs",
        "1",
        "--backbone_presets#resunet#head_features",
        "4",
        "--output_dir",
        str(run),
    ]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    planned = read_plan(demo_plan.plan_path)
    record = json.loads((run / "run_config.json").read_text())
    model = record["settings"]["model"]
    assert model["spatial_size"] == planned["spatial_size"] and model["backbone"] == planned["backbone"]
    assert model["backbone_presets"]["resunet"]["channels"] == planned["backbone_presets::resunet::channels"]
    # an override of one preset key joins the planned ones, is recorded, and builds the wider heads
    assert model["backbone_presets"]["resunet"]["head_features"] == 4
    weights = torch.load(run / "models" / "last.pt", map_location="cpu", weights_only=True)["network"]
    assert weights["heads.lesion.out.weight"].shape[:2] == (2, 4)  # 4 channels at full resolution -> 2 classes
    assert record["training"]["epochs"] == 1
    assert record["training"]["batch_size"] == planned["batch_size"]
    assert record["training"]["plan"].startswith("demo2d / demo / cpu")
    assert len(json.loads((run / "history.json").read_text())) == 1  # --epochs 1 won over the plan
    # a plan made for another spec is refused before anything is written
    other = yaml.safe_load(demo_plan.plan_path.read_text())
    other["plan"]["spec_name"] = "busi"
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    cmd[cmd.index(str(demo_plan.plan_path))] = str(tmp_path / "other.yaml")
    cmd[-1] = str(tmp_path / "run2")
    refused = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "plan refused" in refused.stdout + refused.stderr
    assert not (tmp_path / "run2" / "models").exists()


def test_the_plan_takes_the_backbone_a_weight_file_fits(tmp_path: Path) -> None:
    from monai.networks.nets import ResNet

    def resnet(dims: int) -> Path:
        net = ResNet("basic", [2, 2, 2, 2], [4, 4, 4, 4], spatial_dims=dims, n_input_channels=3, num_classes=5)
        path = tmp_path / f"resnet18_{dims}d.pth"
        torch.save(net.state_dict(), path)
        return path

    fingerprint = _fingerprint("CR", 2, (224, 224), (1, 1))
    choices = {c.key: c.value for c in plan_module._pretrained_choices(resnet(2), fingerprint, {"resnet18": {}})}
    assert choices["backbone"] == "resnet18" and choices["encoder_lr_factor"] == 0.1
    assert choices["pretrained_weights"] == str((tmp_path / "resnet18_2d.pth").resolve())
    with pytest.raises(PlanError, match="3D weights and the data is 2D"):
        plan_module._pretrained_choices(resnet(3), fingerprint, {"resnet18": {}})
