"""The bundles and data specs ship with the wheel and are found from any working folder."""

from __future__ import annotations

import glob
from pathlib import Path

import pytest

from medmtl.data.spec import load_spec
from medmtl.resources import resolve_resource, resources_root

REPO = Path(__file__).resolve().parents[1]


def test_every_bundle_and_spec_file_is_listed_for_the_wheel() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    data_files = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    shipped = {Path(f) for patterns in data_files.values() for p in patterns for f in glob.glob(str(REPO / p))}
    wanted = {p for folder in ("bundles", "data_specs") for p in (REPO / folder).rglob("*") if p.is_file()}
    wanted = {p for p in wanted if "__pycache__" not in p.parts}
    assert wanted - shipped == set(), "add these to [tool.setuptools.data-files] in pyproject.toml"
    for target, patterns in data_files.items():  # installed where medmtl.resources looks
        for pattern in patterns:
            assert target == "share/medmtl/" + str(Path(pattern).parent)


def test_a_bundles_relative_spec_path_resolves_from_any_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resources_root() == REPO
    assert resolve_resource("data_specs/demo.yaml") == REPO / "data_specs" / "demo.yaml"
    assert load_spec("data_specs/demo.yaml").name
    (tmp_path / "data_specs").mkdir()
    (tmp_path / "data_specs" / "demo.yaml").write_text("name: mine\n")
    assert resolve_resource("data_specs/demo.yaml") == Path("data_specs/demo.yaml")  # the user's own file wins
    assert resolve_resource("nowhere.yaml") == Path("nowhere.yaml")
