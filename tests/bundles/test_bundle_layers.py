"""Bundle layers hold no copies: every bundle builds, and a bundle layer states only what differs (issue 19.2).

``bundles/common/configs/<workflow>.json`` holds what the bundles share; ``bundles/<name>/configs/
<workflow>.json`` only what that bundle changes. These checks keep it so: every merged config of
every bundle still builds its network and preprocessing (cheap, no data, no training); no value is
set by two bundle layers unless :data:`ALLOWED_REPEATS` says why; no bundle layer restates the value
it would inherit anyway.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose

from medmtl.bundle_layers import COMMON, WORKFLOWS, BundleLayerError, available_bundles, bundles_root, config_layers

REPO = Path(__file__).resolve().parents[2]
BUNDLES = available_bundles()
NOT_LAYERS = ("metadata.json",)  # the bundle's own description, not a config layer

CLASSIFIERS = ("knee_mri_mtl", "radiograph_mtl")  # the bundles without a segmentation task
LEFT_RIGHT = ("radiograph_mtl", "ultrasound_mtl")

# (workflow file, path, value as JSON) -> (the bundles that set it, why: the common default differs for them)
ALLOWED_REPEATS: dict[tuple[str, str, str], tuple[tuple[str, ...], str]] = {
    ("train", "backbone", '"resnet18"'): (CLASSIFIERS, "an encoder for image-level tasks, not the UNet"),
    ("train", "network_def::head_dropout", "0.2"): (CLASSIFIERS, "dropout before their linear heads"),
    ("train", "train::dataloader::drop_last", "true"): (
        CLASSIFIERS,
        "their ResNet encoders use BatchNorm, which fails on a last batch of one sample",
    ),
    ("train", "train::preprocessing::flip_axes", "[0]"): (
        LEFT_RIGHT,
        "radiographs and breast ultrasound are mirrored left-right only, never upside down",
    ),
    ("evaluate", "tta_axes", "[0]"): (LEFT_RIGHT, "test-time mirroring along the one axis flipped in training"),
    ("inference", "tta_axes", "[0]"): (LEFT_RIGHT, "test-time mirroring along the one axis flipped in training"),
    ("train", "train::preprocessing::flip_axes", "[]"): (
        ("chest_xray_mtl", "knee_mri_mtl"),
        "no random flips: chest X-rays are lateralised (heart on the left), MRNet planes have a fixed orientation",
    ),
    ("train", "epochs", "40"): (("demo", "knee_mri_mtl"), "training length tuned per dataset, equal by chance"),
    ("train", "batch_size", "16"): (LEFT_RIGHT, "batch size tuned per dataset, equal by chance"),
    ("train", "learning_rate", "0.002"): (
        ("chest_xray_mtl", "ultrasound_mtl"),
        "learning rate tuned per dataset, equal by chance",
    ),
}


def _workflows(bundle: str) -> list[str]:
    found = []
    for workflow in WORKFLOWS:
        try:
            config_layers(bundle, workflow)
        except BundleLayerError:
            continue
        found.append(workflow)
    return found


CASES = [(bundle, workflow) for bundle in BUNDLES for workflow in _workflows(bundle)]


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _bundle_layers(bundle: str) -> Iterator[Path]:
    for path in sorted((bundles_root() / bundle / "configs").glob("*.json")):
        if path.name not in NOT_LAYERS:
            yield path


def _parts(config_id: str) -> list[str]:
    return config_id.replace("#", "::").split("::")


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a::b": value}`` for every leaf of nested dicts (lists are leaves), ids normalised to ``::``."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        path = "::".join(p for p in (prefix, *_parts(str(key))) if p)
        if isinstance(value, dict) and value:
            out.update(_flatten(value, path))
        else:
            out[path] = value
    return out


_MISSING = object()


def _at(config: Any, config_id: str) -> Any:
    for part in _parts(config_id):
        if isinstance(config, dict) and part in config:
            config = config[part]
        elif isinstance(config, list) and part.isdigit() and int(part) < len(config):
            config = config[int(part)]
        else:
            return _MISSING
    return config


def _restated(layer: Any, base: Any, path: str) -> Iterator[str]:
    """Paths where ``layer`` sets what ``base`` already holds; a dict replacing one of another ``_target_`` is new."""
    if layer == base:
        yield path
    elif isinstance(layer, dict) and isinstance(base, dict):
        if "_target_" in layer and layer.get("_target_") != base.get("_target_"):
            return  # another component: every argument of it is needed
        for key, value in layer.items():
            yield from _restated(value, base.get(key, _MISSING), f"{path}::{key}")


def _tiny_parser(bundle: str, workflow: str, tmp_path: Path) -> ConfigParser:
    parser = ConfigParser(ConfigParser.load_config_files([str(f) for f in config_layers(bundle, workflow)]))
    spec = parser["data_spec"]
    if isinstance(spec, str) and not spec.startswith(("$", "@", "%")) and not Path(spec).is_absolute():
        parser["data_spec"] = str(REPO / spec)  # the bundles name their spec from the repository root
    parser["output_dir"] = str(tmp_path / "run")  # no run there: no record, the config's own settings
    parser["dataset_dir"] = str(tmp_path / "data")
    return parser


@pytest.mark.parametrize(("bundle", "workflow"), CASES, ids=[f"{b}-{w}" for b, w in CASES])
def test_every_merged_config_builds_its_network_and_preprocessing(bundle: str, workflow: str, tmp_path) -> None:
    parser = _tiny_parser(bundle, workflow, tmp_path)
    tasks = parser.get_parsed_content("tasks")
    network = parser.get_parsed_content("network_def")
    assert isinstance(network, torch.nn.Module)
    assert set(network.task_names) == {t.name for t in tasks}
    ids = ["validate::preprocessing"]
    ids += ["train::preprocessing"] if workflow in ("train", "multi_gpu_train", "semi_supervised", "pretrain") else []
    ids += ["preprocessing"] if workflow == "inference" else []
    ids += ["unlabelled::preprocessing"] if workflow == "semi_supervised" else []
    for config_id in ids:
        assert isinstance(parser.get_parsed_content(config_id), Compose), config_id
    if workflow in ("train", "semi_supervised"):
        prepare = parser.get_parsed_content("train::prepare_batch")
        expected = parser.get_parsed_content("batch_augment")
        assert (prepare.augment is not None) == bool(expected)


def test_batch_augment_is_on_by_default_exactly_for_2d_bundles(tmp_path) -> None:
    for bundle in BUNDLES:
        parser = _tiny_parser(bundle, "train", tmp_path)
        assert parser.get_parsed_content("batch_augment") == (parser.get_parsed_content("spec").spatial_dims == 2)


def test_no_value_is_set_by_two_bundle_layers_without_a_reason() -> None:
    setters: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for bundle in BUNDLES:
        for path in _bundle_layers(bundle):
            for config_id, value in _flatten(_load(path)).items():
                setters[(path.stem, config_id, json.dumps(value, sort_keys=True))].append(bundle)
    repeated = {key: names for key, names in setters.items() if len(names) > 1}
    unexplained = {
        f"{w}.json {p} = {v}": names
        for (w, p, v), names in repeated.items()
        if tuple(names) != ALLOWED_REPEATS.get((w, p, v), ((), ""))[0]
    }
    assert not unexplained, (
        f"move these to bundles/{COMMON}/configs (or add a reason to ALLOWED_REPEATS): {unexplained}"
    )
    stale = sorted(key for key in ALLOWED_REPEATS if key not in repeated)
    assert not stale, f"ALLOWED_REPEATS entries no longer repeated (remove them): {stale}"


@pytest.mark.parametrize("bundle", BUNDLES)
def test_no_bundle_layer_restates_what_it_inherits(bundle: str) -> None:
    problems = []
    for workflow in _workflows(bundle):
        files = config_layers(bundle, workflow)
        for index, path in enumerate(files):
            if path.parent.parent.name == COMMON or index == 0:
                continue
            base = ConfigParser.load_config_files([str(f) for f in files[:index]])
            for key, value in _load(path).items():
                problems += [f"{path.name}: {p}" for p in _restated(value, _at(base, key), key)]
    assert not problems, f"bundle {bundle} restates inherited values (delete them): {sorted(set(problems))}"


@pytest.mark.parametrize("bundle", BUNDLES)
def test_each_bundle_requires_this_medmtl_and_names_its_version_in_the_changelog(bundle: str) -> None:
    """A bundle shipped with medmtl X says it needs medmtl X (the zoo reads ``required_packages_version``) and its own
    version has a changelog entry: a release that forgets either fails here, not in a user's model-zoo CI."""
    import medmtl

    meta = json.loads((bundles_root() / bundle / "configs" / "metadata.json").read_text())
    assert meta["required_packages_version"]["medmtl"] == medmtl.__version__
    assert meta["version"] in meta["changelog"]


def test_inference_writer_takes_mask_resampling_from_one_key(tmp_path) -> None:
    """The common inference layer's ``mask_resampling`` reaches the writer (default: the exact interpolation)."""
    parser = _tiny_parser("brain_mri_mtl", "inference", tmp_path)
    (index,) = [i for i, h in enumerate(parser["handlers"]) if h["_target_"].endswith(".MultiTaskPredictionWriter")]
    for value, expected in ((None, "interpolate"), ("nearest", "nearest")):
        if value is not None:
            parser["mask_resampling"] = value  # what --mask_resampling nearest sets
        writer = parser.get_parsed_content(f"handlers::{index}")
        assert writer.mask_resampling == expected
        assert (writer.invert_labels is not None) == (expected == "nearest")
