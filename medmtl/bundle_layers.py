"""Where a bundle's configuration comes from: shared layers plus what the bundle changes, merged by MONAI.

Why: the six bundles shared most of their configuration as copies, and copies drift (EMA in one
bundle only, transfer options in another). Now ``bundles/common/configs/<workflow>.json`` holds
what every bundle shares and ``bundles/<name>/configs/<workflow>.json`` only what that bundle
changes. MONAI merges a list of config files in order (``--config_file "['a.json','b.json']"``), so
a workflow is the list :func:`config_layers` returns::

    train            common/train.json, <name>/train.json
    evaluate         ... then common/evaluate.json, <name>/evaluate.json (where they exist)
    inference        ... then common/inference.json, <name>/inference.json
    multi_gpu_train, semi_supervised, pretrain: the same pattern

``medmtl run NAME WORKFLOW --key value ...`` runs exactly that ``python -m monai.bundle run``
command, and ``medmtl export-bundle NAME OUT`` writes a self-contained, model-zoo style copy.

MONAI is imported only by the functions that read config files: ``import monai`` loads every MONAI
module, ignite and MLflow included (seconds), and ``medmtl --help`` imports this module for its names.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medmtl.bundle_zoo import DATA_LICENSE, data_license_text, zoo_inference_config
from medmtl.resources import resolve_resource, resources_root

__all__ = [
    "COMMON",
    "WORKFLOWS",
    "BundleLayerError",
    "available_bundles",
    "bundle_command",
    "bundle_dir",
    "bundles_root",
    "config_layers",
    "export_bundle",
    "merged_config",
]

COMMON = "common"
WORKFLOWS = ("train", "evaluate", "inference", "multi_gpu_train", "semi_supervised", "pretrain")


class BundleLayerError(ValueError):
    """An unknown bundle or workflow (the message lists the ones that exist)."""


def bundles_root() -> Path:
    """``bundles/`` of :func:`medmtl.resources.resources_root` (``$MEDMTL_RESOURCES`` overrides it)."""
    return resources_root() / "bundles"


def available_bundles(root: Path | None = None) -> list[str]:
    """Names of the bundles under ``root`` (folders with ``configs/metadata.json``)."""
    root = bundles_root() if root is None else root
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "configs" / "metadata.json").is_file())


def bundle_dir(bundle: str | os.PathLike) -> Path:
    """A bundle's folder from its name (``demo``) or its path (``bundles/demo``)."""
    path = Path(bundle)
    if (path / "configs" / "metadata.json").is_file():
        return path.resolve()
    root = bundles_root()
    if (root / str(bundle) / "configs" / "metadata.json").is_file():
        return root / str(bundle)
    names = ", ".join(available_bundles(root)) or f"none found in {root}"
    raise BundleLayerError(f"no bundle {str(bundle)!r}: give a bundle name ({names}) or a bundle folder")


def _workflows_of(folder: Path, common: Path) -> list[str]:
    return [
        w for w in WORKFLOWS if w == "train" or (common / f"{w}.json").is_file() or (folder / f"{w}.json").is_file()
    ]


def config_layers(bundle: str | os.PathLike, *workflows: str) -> list[Path]:
    """The config files MONAI merges, in order, for ``workflows`` of ``bundle`` (``train`` alone by default).

    Raises:
        BundleLayerError: unknown bundle, or a workflow the bundle does not have (the message lists them).
    """
    folder = bundle_dir(bundle) / "configs"
    common = folder.parent.parent / COMMON / "configs"
    layered = (common / "train.json").is_file()  # an exported bundle has no common layer: its files are whole
    files = [common / "train.json"] if layered else []
    files.append(folder / "train.json")
    for workflow in workflows:
        if workflow == "train":
            continue
        found = [f for f in (common / f"{workflow}.json", folder / f"{workflow}.json") if layered or f.parent == folder]
        found = [f for f in found if f.is_file()]
        if not found:
            have = ", ".join(_workflows_of(folder, common))
            raise BundleLayerError(f"bundle {folder.parent.name} has no {workflow!r} workflow; it has: {have}")
        files += found
    return files


def merged_config(bundle: str | os.PathLike, *workflows: str) -> dict[str, Any]:
    """The raw configuration MONAI builds from :func:`config_layers` (nothing evaluated)."""
    from monai.bundle import ConfigParser  # here, not on top: see the module's last paragraph

    return ConfigParser.load_config_files([str(f) for f in config_layers(bundle, *workflows)])


def _config_arg(files: Sequence[os.PathLike | str]) -> str:
    paths = [os.fspath(f) for f in files]
    return paths[0] if len(paths) == 1 else "[" + ",".join(repr(p) for p in paths) + "]"


def bundle_command(
    bundle: str | os.PathLike, workflows: Sequence[str] = ("train",), overrides: Sequence[str] = ()
) -> list[str]:
    """The ``python -m monai.bundle run`` argv for ``workflows`` of ``bundle``, with ``overrides`` as given."""
    folder = bundle_dir(bundle) / "configs"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", _config_arg(config_layers(bundle, *workflows))]
    cmd += ["--meta_file", str(folder / "metadata.json")]
    if (folder / "logging.conf").is_file():
        cmd += ["--logging_file", str(folder / "logging.conf")]
    return cmd + list(overrides)


def _write_json(path: Path, config: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(config, indent=4) + "\n", encoding="utf-8")


def _concatenated_layers(files: Sequence[Path]) -> dict[str, Any]:
    """Layer files as one layer: their ids in merge order (a layer cannot be merged without its base)."""
    from monai.bundle import ConfigParser

    layer: dict[str, Any] = {}
    for file in files:
        for key, value in ConfigParser.load_config_file(str(file)).items():
            layer.pop(key, None)  # re-inserted last: MONAI applies ids in file order
            layer[key] = value
    return layer


def export_bundle(bundle: str | os.PathLike, out: str | os.PathLike, data_spec: str | None = None) -> Path:
    """Write a self-contained bundle (no shared layers) to ``out``: what the MONAI model zoo expects.

    ``configs/train.json`` is the merged training config; ``inference.json`` is whole (train merged
    with the inference layers), as MONAI's ``verify_net_in_out`` and ``ckpt_export`` read it, and
    its ``network_def`` is the model zoo's one-tensor view of ``network_def_multitask`` (see
    :mod:`medmtl.bundle_zoo`); ``docs/data_license.txt`` gives the data's source and terms;
    ``evaluate.json``, ``multi_gpu_train.json``, ``semi_supervised.json`` and ``pretrain.json`` stay
    layers over ``train.json`` (``--config_file "['configs/train.json','configs/evaluate.json']"``).
    The data spec is copied into ``configs/`` and ``bundle_root`` is the export's folder.

    Args:
        bundle: bundle name or folder.
        out: the new bundle folder (must not exist or be empty).
        data_spec: the spec file to ship (default: the one the bundle names, from the source checkout).

    Returns:
        ``out``.
    """
    from monai.bundle import ConfigParser

    source = bundle_dir(bundle)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise BundleLayerError(f"{out} exists and is not empty: give a new folder")
    configs = out / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    train = merged_config(source, "train")
    spec_path = resolve_resource(data_spec or train["data_spec"])
    if not spec_path.is_file():
        raise BundleLayerError(f"data spec {spec_path} not found: pass data_spec= (--data-spec) explicitly")
    shutil.copy2(spec_path, configs / spec_path.name)
    train["bundle_root"] = str(out.resolve())
    train["data_spec"] = f"$@bundle_root + '/configs/{spec_path.name}'"
    _write_json(configs / "train.json", train)
    layers_dir = source / "configs"
    common_dir = source.parent / COMMON / "configs"
    for workflow in WORKFLOWS[1:]:
        files = [f for f in (common_dir / f"{workflow}.json", layers_dir / f"{workflow}.json") if f.is_file()]
        if not files:
            continue
        if workflow == "inference":
            whole = ConfigParser.load_config_files([str(configs / "train.json"), *map(str, files)])
            _write_json(configs / "inference.json", zoo_inference_config(whole))
        else:
            _write_json(configs / f"{workflow}.json", _concatenated_layers(files))
    for name in ("metadata.json", "logging.conf"):
        shutil.copy2(layers_dir / name, configs / name)
    for extra in ("docs", "LICENSE"):
        if (source / extra).is_dir():
            shutil.copytree(source / extra, out / extra)
        elif (source / extra).is_file():
            shutil.copy2(source / extra, out / extra)
    if not (out / DATA_LICENSE).is_file():
        metadata = json.loads((configs / "metadata.json").read_text(encoding="utf-8"))
        (out / DATA_LICENSE).parent.mkdir(parents=True, exist_ok=True)
        (out / DATA_LICENSE).write_text(data_license_text(metadata, configs / spec_path.name), encoding="utf-8")
    return out
