"""The bad-input corpus (issue #8): each broken input gets one line naming the file, the problem and the fix.

:mod:`bad_inputs` plants every fault of a layout into one dataset, so each layout is validated once
and the report must hold every one of its faults (the validator collects, it never stops at the
first). The same lines must come out of the three ways users meet them: ``validate_dataset`` (the
library), ``medmtl validate`` (exit code 1, printed report) and ``require_valid_dataset`` (what
bundles call at start: an exception whose text is the report, or a clean exit with
``exit_on_error=True``, also through MONAI's bundle runner).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import pickle
import re
from pathlib import Path

import bad_inputs as bi
import pytest

from medmtl.cli import main
from medmtl.data.problems import DataError
from medmtl.data.validate import (
    DatasetExit,
    DatasetInvalidError,
    ValidationReport,
    require_valid_dataset,
    validate_dataset,
)

_LINE = re.compile(r"^\[(?P<severity>error|warning)\] (?P<check>\w+): (?P<body>.+) -> fix: (?P<fix>.+)$")
_ERROR_LAYOUTS = sorted(bi.LAYOUTS)  # every layout plants at least one error


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Every layout with all its faults planted: ``{layout: (spec, root)}``."""
    return {layout: bi.build_layout(layout, tmp_path_factory.mktemp(layout)) for layout in bi.LAYOUTS}


@pytest.fixture(scope="module")
def reports(built) -> dict[str, ValidationReport]:
    return {layout: validate_dataset(spec, root=root, workers=1) for layout, (spec, root) in built.items()}


@pytest.fixture(scope="module")
def cli(built) -> dict[str, tuple[int, str]]:
    """``medmtl validate SPEC --root ROOT``: ``{layout: (exit code, stdout)}``."""
    out = {}
    for layout, (spec, root) in built.items():
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            code = main(["validate", str(spec), "--root", str(root)])
        out[layout] = (code, buffer.getvalue())
    return out


@pytest.fixture(scope="module")
def required(built) -> dict[str, DatasetInvalidError]:
    """What ``require_valid_dataset`` raises for each layout."""
    raised = {}
    for layout, (spec, root) in built.items():
        with pytest.raises(DatasetInvalidError) as info:
            require_valid_dataset(spec, root, workers=1)
        raised[layout] = info.value
    return raised


def _text(via: str, layout: str, reports, cli, required) -> str:
    if via == "library":
        return reports[layout].format()
    if via == "cli":
        return cli[layout][1]
    return str(required[layout])


def _matching(text: str, case: bi.BadInput) -> list[str]:
    return [
        line
        for line in text.splitlines()
        if line.startswith(f"[{case.severity}] ") and all(s in line for s in case.expect)
    ]


def test_the_corpus_is_broad():
    names = [case.name for case in bi.CORPUS]
    assert len(names) == len(set(names))
    assert len(bi.CORPUS) >= 25
    assert {case.layout for case in bi.CORPUS} == set(bi.LAYOUTS)


@pytest.mark.parametrize("via", ["library", "cli", "require"])
@pytest.mark.parametrize("case", bi.CORPUS, ids=[case.name for case in bi.CORPUS])
def test_each_bad_input_gets_one_line_with_file_problem_and_fix(case, via, reports, cli, required):
    text = _text(via, case.layout, reports, cli, required)
    found = _matching(text, case)
    assert len(found) == 1, f"{case.name}: expected one line with {case.expect}, found {found}\n{text}"
    parsed = _LINE.match(found[0])
    assert parsed is not None, found[0]
    assert parsed["check"] in case.expect, f"{case.name}: the check code must be one of the expected words"
    assert parsed["fix"].strip()
    assert "Traceback" not in text and "problem(s) in" not in found[0]  # no nested error text


@pytest.mark.parametrize("layout", sorted(bi.LAYOUTS))
def test_every_fault_of_a_layout_is_in_one_report(layout, reports, cli, required):
    report = reports[layout]
    assert not report.ok
    missing = [case.name for case in bi.cases_of(layout) if not _matching(report.format(), case)]
    assert not missing, f"not in the report: {missing}\n{report.format()}"
    code, out = cli[layout]
    assert code == 1
    lines = out.splitlines()
    assert lines[-1].startswith(f"FAILED: {len(report.errors)} error(s), {len(report.warnings)} warning(s)")
    parsed = [m for m in map(_LINE.match, lines) if m]
    assert len(parsed) == len(report.problems)  # every problem printed as one parseable line
    assert all(p["fix"] for p in parsed)
    summary = next(line for line in lines if line.startswith("summary: "))
    for check, count in report.check_counts().get("error", {}).items():
        assert f"{count} x {check} (error)" in summary
    # the bundle-side error carries the same findings and the same text as the report
    err = required[layout]
    assert isinstance(err, DataError) and isinstance(err, ValueError)
    assert {str(p) for p in err.problems} == {str(p) for p in report.problems}
    assert str(err) == err.report.format()


@pytest.mark.parametrize("layout", sorted(set(bi.LAYOUTS) - {"spec"}))
def test_clean_layouts_have_no_error_and_each_fault_one_finding(layout, reports, tmp_path):
    """The faults come from the planting: the clean layout passes, and no planted fault is reported twice."""
    spec, root = bi.build_layout(layout, tmp_path, faults=False)
    clean = validate_dataset(spec, root=root, workers=1)
    assert clean.ok, clean.format()
    expected_anyway = {p.check for p in clean.problems}  # BUSI's normal images have all-black masks
    text = reports[layout].format()
    for problem in reports[layout].problems:
        owners = [case.name for case in bi.cases_of(layout) if all(s in str(problem) for s in case.expect)]
        assert len(owners) == 1 or (not owners and problem.check in expected_anyway), (str(problem), owners, text)


def test_require_valid_dataset_logs_the_report_then_raises_it(built, caplog):
    spec, root = built["brain"]
    caplog.set_level(logging.ERROR, logger="medmtl.data.validate")
    with pytest.raises(DatasetInvalidError) as info:
        require_valid_dataset(spec, root, workers=1)
    text = str(info.value)
    assert text.startswith("brain_nifti: ") and text.splitlines()[-1].startswith("FAILED: ")
    assert text in caplog.text
    assert info.value.report.num_cases > 0
    # the error survives pickling (process pools, DataLoader workers)
    again = pickle.loads(pickle.dumps(info.value))
    assert str(again) == text and len(again.problems) == len(info.value.problems)


@pytest.mark.parametrize("layout", ["brain", "spec"])
def test_exit_on_error_is_a_clean_exit_with_the_report(built, layout):
    spec, root = built[layout]
    with pytest.raises(SystemExit) as info:
        require_valid_dataset(spec, root, workers=1, exit_on_error=True)
    err = info.value
    assert isinstance(err, DatasetExit) and not isinstance(err, Exception)  # `except Exception` lets it through
    assert isinstance(err.code, str) and err.code == err.report.format()  # Python prints it, exit status 1
    assert "FAILED: " in err.code


def _bundle(tmp_path: Path, spec: Path, root: Path, exit_on_error: bool) -> Path:
    """The start of a medmtl training config, with the ``initialize`` lines recommended to bundles.

    ``require_valid_dataset`` gets the spec *file*: an expression referencing ``@spec`` or ``@cases``
    (even in an ``else`` branch) makes MONAI load the spec first, and a YAML mistake would then fail
    there, with a traceback, instead of in the report.
    """
    config = {
        "imports": ["$import monai", "$import medmtl", "$import medmtl.data.spec", "$import medmtl.data.validate"],
        "data_spec": str(spec),
        "dataset_dir": str(root),
        "validate_data": True,
        "spec_overrides": {},
        "spec": "$medmtl.data.spec.load_spec(@data_spec, **@spec_overrides)",
        "cases": "$@spec.build_cases(root=@dataset_dir)",
        "initialize": [
            "$monai.utils.set_determinism(seed=0)",
            "$medmtl.data.validate.require_valid_dataset(@data_spec, @dataset_dir, spec_overrides=@spec_overrides, "
            f"exit_on_error={exit_on_error}) if @validate_data else None",
            "$@cases.raise_for_errors()",
        ],
        "run": ["$print('TRAINING STARTED')"],
        "finalize": [],
    }
    path = tmp_path / f"train_{exit_on_error}.json"
    path.write_text(json.dumps(config))
    return path


@pytest.mark.filterwarnings("ignore:parsing config_file")
@pytest.mark.parametrize("layout", ["demo2d", "spec"])
def test_bundle_start_shows_the_report_not_a_traceback(built, layout, tmp_path, capsys):
    """``python -m monai.bundle run``: with ``exit_on_error=True`` the report leaves MONAI's runner as a
    ``SystemExit`` (printed by Python, exit status 1, no traceback); a plain exception is wrapped by MONAI
    in ``RuntimeError("Failed to evaluate ...")`` with the report only in the chained traceback."""
    from monai.bundle import run

    spec, root = built[layout]
    with pytest.raises(SystemExit) as info:
        run(config_file=str(_bundle(tmp_path, spec, root, exit_on_error=True)))
    assert isinstance(info.value, DatasetExit)
    assert "FAILED: " in str(info.value.code)
    assert "TRAINING STARTED" not in capsys.readouterr().out
    with pytest.raises(RuntimeError, match="Failed to evaluate") as wrapped:
        run(config_file=str(_bundle(tmp_path, spec, root, exit_on_error=False)))
    assert isinstance(wrapped.value.__cause__, DatasetInvalidError)


def test_spec_overrides_are_validated_too(built):
    spec, root = built["demo2d"]
    report = validate_dataset(spec, root=root, workers=1, spec_overrides={"splits": {"method": "random"}})
    assert report.dataset is None
    assert any(p.check == "invalid_value" and "'splits.method'" in p.message for p in report.problems)
