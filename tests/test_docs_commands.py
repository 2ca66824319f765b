"""The bundle commands written in the docs name what exists: no run needed to notice a stale one.

Why: the bundle configs are layers (``bundles/common/configs`` + what a bundle changes), so a command
that lists config files by hand goes stale when a layer moves. Every ``--config_file "[...]"`` list
in the docs must be exactly the layers :func:`config_layers` gives for its bundle and workflows,
every ``medmtl run NAME WORKFLOW`` must name a bundle workflow, and every concrete
``bundles/<name>/configs/<file>`` path must exist.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from medmtl.bundle_layers import available_bundles, config_layers

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted(
    [
        REPO / "README.md",
        REPO / "CONTRIBUTING.md",
        REPO / "benchmarks" / "README.md",
        REPO / "Makefile",
        REPO / "docker" / "compose.yaml",
        REPO / "medmtl" / "engines" / "distributed.py",
        *(REPO / "bundles").glob("*/docs/README.md"),
    ]
)
CONFIG_LIST = re.compile(r"--config_file \\?\"(\['[^\]]*\])\\?\"")  # a list of paths, not "[...]"
MEDMTL_RUN = re.compile(r"medmtl run (?:--print )?([\w<>]+) ([\w+<>]+)")
CONFIG_PATH = re.compile(r"bundles/\w+/configs/\w+\.(?:json|conf)")


def _name(path: Path) -> str:
    return str(path.relative_to(REPO))


@pytest.mark.parametrize("doc", DOCS, ids=_name)
def test_config_lists_are_the_bundles_layers(doc: Path) -> None:
    text = doc.read_text()
    for match in CONFIG_LIST.finditer(text):
        files = [Path(f) for f in ast.literal_eval(match.group(1))]
        bundle = files[1].parts[1]  # bundles/<name>/configs/train.json follows the common layer
        workflows = list(dict.fromkeys(f.stem for f in files[2:]))
        expected = [f.relative_to(REPO) for f in config_layers(bundle, *workflows)]
        assert files == expected, f"{_name(doc)}: {match.group(1)} is not the layers of {bundle} {workflows}"


@pytest.mark.parametrize("doc", DOCS, ids=_name)
def test_medmtl_run_names_a_bundle_workflow(doc: Path) -> None:
    bundles = set(available_bundles())
    for bundle, workflow in MEDMTL_RUN.findall(doc.read_text()):
        if bundle in {"BUNDLE", "NAME", "<name>"} or workflow in {"WORKFLOW", "<workflow>"}:  # the syntax
            continue
        assert bundle in bundles, f"{_name(doc)}: medmtl run {bundle}: no such bundle ({sorted(bundles)})"
        config_layers(bundle, *workflow.split("+"))  # raises for a workflow the bundle lacks


@pytest.mark.parametrize("doc", DOCS, ids=_name)
def test_config_paths_exist(doc: Path) -> None:
    missing = sorted({p for p in CONFIG_PATH.findall(doc.read_text()) if not (REPO / p).is_file()})
    assert not missing, f"{_name(doc)} names config files that do not exist: {missing}"
