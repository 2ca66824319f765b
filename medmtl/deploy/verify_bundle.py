"""The MONAI model zoo's checks of a bundle, run offline on a bundle folder (``medmtl verify-bundle PATH``).

Why: a bundle meant for the model zoo is only checked when its pull request runs the zoo's CI
(Project-MONAI/model-zoo ``ci/verify_bundle.py``), after the fact and online. The same checks run
here, on the folder, each giving one row of a table with the reason and the fix of a failure:

    files      configs/metadata.json and LICENSE (required by the zoo), configs/inference.json and
               models/model.pt (preferred), docs/README.md (MONAI's bundle format) and
               docs/data_license.txt (the zoo's contributing guide)
    version    metadata.json has a version and a changelog that names it
    metadata   metadata.json against its schema (MONAI ``verify_metadata``), from ``--schema``,
               ``eval/schema.json`` (where the zoo's CI puts it) or the copy in ``../shared/monai``;
               skipped, and said so, when none is here (nothing is downloaded)
    weights    models/model.pt is a plain state dict (what the zoo loads with
               ``CheckpointLoader(load_dict={"model": @network})``) that fits ``network_def``
    shape      MONAI ``verify_net_in_out --net_id network_def``: one image tensor in, the tensor of
               ``outputs.pred`` out
    export     MONAI ``ckpt_export`` of models/model.pt into ``network_def`` (TorchScript), and the
               scripted module gives the network's outputs

Not checked offline: that the version is not yet released (the zoo's ``model_info.json``), large
files listed for download, and app properties (``supported_apps``; medmtl bundles name none).
The network is built as in the zoo's clean checkout: ``output_dir`` points at an empty temporary
folder, so a local run of the same name cannot change what is built.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser, ckpt_export, verify_metadata, verify_net_in_out

from medmtl.bundle_zoo import DATA_LICENSE, ZOO_NETWORK_ID
from medmtl.engines.checkpoint_io import CheckpointError, check_state_dict_fits, load_checkpoint
from medmtl.engines.guards import GuardExit
from medmtl.resources import resources_root

logger = logging.getLogger(__name__)

__all__ = ["BundleCheck", "BundleReport", "BundleVerifyError", "describe_checkpoint", "verify_bundle"]

PASS, FAIL, SKIP = "pass", "fail", "skip"
PARITY_TOLERANCE = 1e-4  # max abs difference between the scripted module and the network (fp32)
_EXPORT_FIX = "medmtl export-bundle NAME OUT --run RUN writes a self-contained bundle that passes these checks"
_FILES: dict[str, str] = {  # file -> fix
    "configs/metadata.json": "add the bundle's metadata (MONAI bundle format)",
    "LICENSE": "add the licence of the bundle's code and weights as LICENSE at the bundle's top",
    "configs/inference.json": "add a whole inference config (medmtl export-bundle writes one)",
    "models/model.pt": "add the weights as a plain state dict: medmtl export-bundle NAME OUT --run RUN",
    "docs/README.md": "add the bundle's documentation (docs/README.md)",
    DATA_LICENSE: "state the data's source and licence terms (medmtl export-bundle writes them from the metadata's "
    "data_source and the data spec)",
}


class BundleVerifyError(ValueError):
    """The folder given is not a bundle at all (nothing to check)."""


@dataclass(frozen=True)
class BundleCheck:
    """One row of the report.

    Attributes:
        name: the check (``files``, ``version``, ``metadata``, ``weights``, ``shape``, ``export``).
        status: ``pass``, ``fail`` or ``skip``.
        detail: what was found (the reason of a failure or a skip).
        fix: how to make a failed or skipped check pass.
    """

    name: str
    status: str
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class BundleReport:
    """All checks of one bundle folder."""

    bundle: Path
    checks: tuple[BundleCheck, ...]

    @property
    def ok(self) -> bool:
        """No check failed (a skipped check does not fail the bundle)."""
        return all(c.status != FAIL for c in self.checks)

    def check(self, name: str) -> BundleCheck:
        """The row named ``name``."""
        return next(c for c in self.checks if c.name == name)

    def table(self) -> str:
        """The pass/fail table, with the fix under each failed or skipped row."""
        width = max(len(c.name) for c in self.checks)
        lines = [f"model zoo checks of {self.bundle}:"]
        for c in self.checks:
            lines.append(f"  {c.name:<{width}}  {c.status.upper():<4}  {c.detail}")
            if c.fix and c.status != PASS:
                lines.append(f"  {'':<{width}}        fix: {c.fix}")
        failed = [c.name for c in self.checks if c.status == FAIL]
        lines.append(f"failed: {', '.join(failed)}" if failed else "all checks passed")
        return "\n".join(lines)


def _reason(err: BaseException) -> str:
    """The innermost error of a chain (MONAI wraps config errors), as one line."""
    while err.__cause__ is not None or (err.__context__ is not None and not err.__suppress_context__):
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    error = err.error if isinstance(err, GuardExit) else err
    text = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {text[:400]}" if text else type(error).__name__


def _inference_file(configs: Path) -> Path | None:
    return next(
        (configs / f"inference.{s}" for s in ("json", "yaml", "yml") if (configs / f"inference.{s}").is_file()), None
    )


def _files(bundle: Path) -> BundleCheck:
    missing = []
    for name in _FILES:
        found = _inference_file(bundle / "configs") if name == "configs/inference.json" else bundle / name
        if found is None or not found.is_file():
            missing.append(name)
    if not missing:
        return BundleCheck("files", PASS, f"{len(_FILES)} required files present")
    return BundleCheck("files", FAIL, "missing: " + ", ".join(missing), "; ".join(_FILES[m] for m in missing))


def _metadata(bundle: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return meta if isinstance(meta, dict) else None


def _version(bundle: Path, meta: dict[str, Any] | None) -> BundleCheck:
    if meta is None:
        return BundleCheck(
            "version", FAIL, "configs/metadata.json is missing or not a JSON object", _FILES["configs/metadata.json"]
        )
    version, changelog = meta.get("version"), meta.get("changelog")
    if not version:
        return BundleCheck(
            "version", FAIL, "metadata.json has no 'version'", 'add "version": "0.1.0" to configs/metadata.json'
        )
    if not isinstance(changelog, dict):
        return BundleCheck(
            "version", FAIL, "metadata.json has no 'changelog'", f'add "changelog": {{"{version}": "what changed"}}'
        )
    if version not in changelog:
        return BundleCheck(
            "version",
            FAIL,
            f"version {version} is not in the changelog (it names {', '.join(map(str, changelog)) or 'nothing'})",
            f'add "{version}": "what changed" to "changelog" in configs/metadata.json',
        )
    return BundleCheck("version", PASS, f"version {version} is in the changelog")


def _schema_file(bundle: Path, meta: dict[str, Any], schema: Path | None) -> Path | None:
    name = str(meta.get("schema", "")).rsplit("/", 1)[-1]
    candidates = [schema] if schema is not None else []
    candidates.append(bundle / "eval" / "schema.json")
    if name:
        candidates.append(resources_root().parent / "shared" / "monai" / name)
    return next((c for c in candidates if c is not None and c.is_file()), None)


def _schema(bundle: Path, meta: dict[str, Any] | None, schema: Path | None) -> BundleCheck:
    if meta is None:
        return BundleCheck("metadata", SKIP, "no readable configs/metadata.json", _FILES["configs/metadata.json"])
    if not meta.get("schema"):
        return BundleCheck(
            "metadata", FAIL, "metadata.json names no 'schema' URL", "add the schema URL MONAI's bundles use"
        )
    found = _schema_file(bundle, meta, schema)
    if found is None:
        return BundleCheck(
            "metadata",
            SKIP,
            f"schema {meta['schema']} not found offline (no --schema, eval/schema.json or ../shared/monai copy)",
            f"download {meta['schema']} and pass --schema FILE",
        )
    try:
        with warnings.catch_warnings():  # MONAI warns that a local schema copy comes without a hash to check
            warnings.filterwarnings("ignore", message="No hash value provided")
            verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(found))
    except Exception as err:  # noqa: BLE001 - every failure is this row's reason
        return BundleCheck("metadata", FAIL, _reason(err), "correct the field named above in configs/metadata.json")
    return BundleCheck("metadata", PASS, f"valid against {found.name}")


def describe_checkpoint(state: Any) -> str:
    """What a weights file holds, in a few words (``a dict of 84 tensors``, ``a dict with network (...), epoch (int)``)."""
    if isinstance(state, Mapping):
        if state and all(isinstance(v, torch.Tensor) for v in state.values()):
            return f"a state dict of {len(state)} tensors"
        parts = []
        for key, value in list(state.items())[:8]:
            kind = f"dict of {len(value)}" if isinstance(value, Mapping) else type(value).__name__
            parts.append(f"{key!s} ({kind})")
        more = f" and {len(state) - 8} more" if len(state) > 8 else ""
        return f"a dict with {', '.join(parts)}{more}" if parts else "an empty dict"
    return f"a {type(state).__name__}"


def _weights(bundle: Path, network: torch.nn.Module | None, build_error: str) -> tuple[BundleCheck, Any]:
    path = bundle / "models" / "model.pt"
    if not path.is_file():
        return BundleCheck("weights", FAIL, "no models/model.pt", _FILES["models/model.pt"]), None
    try:
        state = load_checkpoint(path, what="weights file")
    except CheckpointError as err:
        return BundleCheck("weights", FAIL, str(err), _EXPORT_FIX), None
    plain = isinstance(state, Mapping) and state and all(isinstance(v, torch.Tensor) for v in state.values())
    if not plain:
        inner = next((k for k in ("network", "model", "state_dict") if isinstance(state, Mapping) and k in state), None)
        fix = (
            f"save the state dict alone: torch.save(torch.load('models/model.pt', weights_only=True)[{inner!r}], "
            "'models/model.pt'), "
            f"or {_EXPORT_FIX}"
            if inner
            else _EXPORT_FIX
        )
        detail = f"models/model.pt holds {describe_checkpoint(state)}, not a plain state dict (name -> tensor)"
        if inner:
            detail += f": a training checkpoint with the weights under {inner!r}"
        return BundleCheck("weights", FAIL, detail, fix), None
    if network is None:
        return BundleCheck("weights", FAIL, f"{ZOO_NETWORK_ID} cannot be built: {build_error}", _EXPORT_FIX), None
    try:
        check_state_dict_fits(
            network, state, path, fix=f"export the weights of a run trained with this bundle: {_EXPORT_FIX}"
        )
    except CheckpointError as err:
        return BundleCheck("weights", FAIL, str(err), _EXPORT_FIX), None
    return BundleCheck("weights", PASS, f"{describe_checkpoint(state)}, fits {ZOO_NETWORK_ID}"), state


def _fake_input(meta: Mapping[str, Any]) -> torch.Tensor:
    """A random input of ``inputs.image`` (``*`` and ``x*n`` / ``x**p`` sizes taken as MONAI's defaults do: 1 / x)."""
    image = meta["network_data_format"]["inputs"]["image"]
    spatial = []
    for size in image.get("spatial_shape", []):
        text = str(size)
        spatial.append(1 if text == "*" else int(text.split("*")[0]))
    dtype = getattr(torch, str(image.get("dtype", "float32")))
    generator = torch.Generator().manual_seed(0)
    return torch.rand(1, int(image.get("num_channels", 1)), *spatial, generator=generator).to(dtype)


def _export(
    bundle: Path,
    config: Path,
    overrides: dict[str, Any],
    network: torch.nn.Module,
    state: Any,
    meta: Mapping[str, Any],
    scratch: Path,
) -> BundleCheck:
    scripted = scratch / "verify_model.ts"
    try:
        ckpt_export(
            net_id=ZOO_NETWORK_ID,
            filepath=str(scripted),
            ckpt_file=str(bundle / "models" / "model.pt"),
            meta_file=str(bundle / "configs" / "metadata.json"),
            config_file=str(config),
            **overrides,
        )
        module = torch.jit.load(str(scripted), map_location="cpu")
    except (Exception, GuardExit) as err:  # noqa: BLE001 - every failure is this row's reason
        return BundleCheck(
            "export",
            FAIL,
            f"ckpt_export of models/model.pt into {ZOO_NETWORK_ID}: {_reason(err)}",
            f"{ZOO_NETWORK_ID} must script with torch.jit.script and load models/model.pt by parameter name; {_EXPORT_FIX}",
        )
    try:
        network.load_state_dict(state)
        network.eval()
        x = _fake_input(meta)
        with torch.no_grad():
            expected, got = network(x), module(x)
        difference = float((expected.float() - got.float()).abs().max())
    except Exception as err:  # noqa: BLE001 - the shape row names a network that does not run; this one too
        return BundleCheck("export", FAIL, f"the scripted module cannot be compared: {_reason(err)}", _EXPORT_FIX)
    if difference > PARITY_TOLERANCE:
        return BundleCheck(
            "export",
            FAIL,
            f"the TorchScript module differs from {ZOO_NETWORK_ID} by up to {difference:.2e} (tolerance {PARITY_TOLERANCE})",
            "keep random or training-only behaviour out of the network's eval-mode forward",
        )
    return BundleCheck("export", PASS, f"TorchScript via ckpt_export, outputs match (max |diff| {difference:.1e})")


def _parser(config: Path, meta_file: Path, overrides: Mapping[str, Any]) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(f=str(config))
    parser.read_meta(f=str(meta_file))
    for key, value in overrides.items():
        parser[key] = value
    return parser


def _build(parser: ConfigParser) -> torch.nn.Module:
    network = parser.get_parsed_content(ZOO_NETWORK_ID)
    if not isinstance(network, torch.nn.Module):
        raise TypeError(f"{ZOO_NETWORK_ID} is a {type(network).__name__}, not a torch.nn.Module")
    return network.eval()


def verify_bundle(
    bundle: str | os.PathLike,
    schema: str | os.PathLike | None = None,
    device: str = "cpu",
    overrides: Mapping[str, Any] | None = None,
) -> BundleReport:
    """Run the model zoo's checks on the bundle folder ``bundle`` (see the module docstring).

    Args:
        bundle: the bundle folder (``configs/``, ``models/``, ``docs/``, ``LICENSE``).
        schema: the metadata schema file (default: ``eval/schema.json`` in the bundle, else the copy
            in ``../shared/monai``; the check is skipped when none is found).
        device: where the network runs for the shape check.
        overrides: config ids replaced for the network checks, as MONAI's checks take them, e.g.
            ``{"_meta_#network_data_format#inputs#image#spatial_shape": [32, 32, 32]}`` for a quick
            check of a large 3D network.
        overrides: config ids replaced for the network checks, as MONAI's checks take them, e.g.
            ``{"_meta_#network_data_format#inputs#image#spatial_shape": [32, 32, 32]}`` for a quick
            check of a large 3D network.

    Returns:
        The report: one row per check. Nothing in the bundle folder is written.

    Raises:
        BundleVerifyError: ``bundle`` is not a folder, or has no ``configs/`` folder.
    """
    path = Path(bundle)
    if not path.is_dir():
        raise BundleVerifyError(f"{path}: no such bundle folder; give the folder `medmtl export-bundle NAME OUT` wrote")
    if not (path / "configs").is_dir():
        raise BundleVerifyError(
            f"{path} is not a bundle: it has no configs/ folder (a bundle holds configs/metadata.json, "
            "configs/inference.json, models/model.pt, docs/, LICENSE); export one with "
            "`medmtl export-bundle NAME OUT --run RUN`"
        )
    path = path.resolve()
    meta = _metadata(path)
    checks = [_files(path), _version(path, meta), _schema(path, meta, Path(schema) if schema else None)]
    config = _inference_file(path / "configs")
    if meta is None or config is None:
        reason = "needs configs/metadata.json and configs/inference.json"
        checks += [BundleCheck(name, SKIP, reason, "see the files row") for name in ("weights", "shape", "export")]
        return BundleReport(path, tuple(checks))
    with tempfile.TemporaryDirectory(prefix="medmtl_verify_") as scratch:
        given = {"bundle_root": str(path), "output_dir": scratch, **(overrides or {})}
        parser, network, build_error = None, None, ""
        try:
            parser = _parser(config, path / "configs" / "metadata.json", given)
            network = _build(parser)
        except (Exception, GuardExit) as err:  # noqa: BLE001 - reported in the weights row
            build_error = _reason(err)
        weights, state = _weights(path, network, build_error)
        checks.append(weights)
        try:
            verify_net_in_out(
                net_id=ZOO_NETWORK_ID,
                meta_file=str(path / "configs" / "metadata.json"),
                config_file=str(config),
                device=device,
                **given,
            )
            checks.append(
                BundleCheck("shape", PASS, f"verify_net_in_out --net_id {ZOO_NETWORK_ID}: output matches outputs.pred")
            )
        except (Exception, GuardExit) as err:  # noqa: BLE001 - every failure is this row's reason
            checks.append(
                BundleCheck(
                    "shape",
                    FAIL,
                    f"verify_net_in_out --net_id {ZOO_NETWORK_ID}: {_reason(err)}",
                    f"{ZOO_NETWORK_ID} must take one image tensor (1, inputs.image.num_channels, *spatial_shape) and "
                    f"return one tensor with outputs.pred.num_channels channels; {_EXPORT_FIX}",
                )
            )
        if state is None or network is None or parser is None:
            checks.append(BundleCheck("export", SKIP, "needs usable weights (see the weights row)", weights.fix))
        else:
            checks.append(_export(path, config, given, network, state, parser["_meta_"], Path(scratch)))
    return BundleReport(path, tuple(checks))
