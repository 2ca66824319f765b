"""One series per input of each DICOM study, for a model that takes several images per case (MRNet's planes).

Why: a knee MRI study holds a sagittal, a coronal and an axial sequence (and localizers, reformats); a
model with an input per plane needs each in its place. The spec's ``dicom_series`` holds rules per
input (``inputs: {sagittal: {orientation: sagittal}, ...}``, :meth:`DicomSeriesRules.for_input`); each
input takes the matching series with the most images, and a study is one case (``study01``: no patient
data). A study where an input's rules match nothing is a row of ``failed.csv`` naming those rules and
what each series is; the choice per input is written to ``series.csv``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from medmtl.data.dicom.studies import DicomStudy
from medmtl.data.spec_model import DicomSeriesRules
from medmtl.deploy.inputs import InputCase
from medmtl.deploy.series_choice import StudyChoice, choose_series, dicom_cases, effective_rules, unmatched_reason

__all__ = ["choose_input_series", "input_series_cases"]


def choose_input_series(
    studies: Sequence[DicomStudy],
    rules: DicomSeriesRules | None,
    modality: str,
    input_keys: Sequence[str],
    spatial_dims: int,
) -> dict[str, list[StudyChoice]]:
    """Per input name, every study's series scored against that input's rules (at most one chosen per study).

    Raises:
        ValueError: the rules give none per input (naming the ``dicom_series`` key to add).
    """
    if rules is None or rules.inputs is None:
        example = ", ".join(f"{key}: {{orientation: ...}}" for key in input_keys)
        raise ValueError(
            f"the model takes {len(input_keys)} images per case ({', '.join(input_keys)}) and its data spec gives no "
            f"DICOM series rules per input: add dicom_series: {{inputs: {{{example}}}}} to the spec and give it as "
            "--data_spec, or give a folder with one sub-folder of images per input"
        )
    return {
        key: choose_series(studies, _rules(rules, modality, key), spatial_dims)
        for key in input_keys  # one series per input: the matching one with the most images
    }


def _rules(rules: DicomSeriesRules, modality: str, key: str) -> DicomSeriesRules:
    return effective_rules(rules.for_input(key), modality).model_copy(update={"choose": "one"})


def input_series_cases(
    by_input: dict[str, list[StudyChoice]],
    rules: DicomSeriesRules,
    modality: str,
    spatial_dims: int,
    link_dir: Path,
) -> tuple[list[InputCase], list[tuple[InputCase, str]]]:
    """The cases of :func:`choose_input_series`' choice: a study with one series per input is a case.

    Returns the cases (``inputs`` in the order of ``by_input``; each series read from its own folder, or a
    folder of links under ``link_dir``) and the studies that are not, with the reason: the inputs whose
    rules matched no series, or one series matching several inputs.
    """
    keys = list(by_input)
    cases, failed = [], []
    for per_input in zip(*by_input.values(), strict=True):
        study = per_input[0]
        unmatched = [(key, choice) for key, choice in zip(keys, per_input, strict=True) if not choice.chosen]
        if unmatched:
            reason = "; ".join(
                f"input {key}: "
                + unmatched_reason(c, _rules(rules, modality, key), spatial_dims, f"dicom_series.inputs.{key}")
                for key, c in unmatched
            )
            failed.append((InputCase(study.name, study.study.folder), reason))
            continue
        series = [choice.scores[choice.chosen[0]].series.series_uid for choice in per_input]
        shared = sorted({k for k, uid in zip(keys, series, strict=True) if series.count(uid) > 1})
        if shared:
            reason = (
                f"one series matches the rules of inputs {', '.join(shared)} (dicom_series.inputs): make their "
                "rules tell them apart"
            )
            failed.append((InputCase(study.name, study.study.folder), reason))
            continue
        read = {key: dicom_cases([choice], spatial_dims, link_dir) for key, choice in zip(keys, per_input, strict=True)}
        several = [f"{key} ({len(found)})" for key, found in read.items() if len(found) != 1]
        if several:  # a 2D model's images, or a series split in several multi-frame files: not one image per input
            reason = (
                f"the series chosen for inputs {', '.join(several)} do not make one image each; a model with several "
                "inputs takes one image per input and case"
            )
            failed.append((InputCase(study.name, study.study.folder), reason))
            continue
        paths = [found[0].path for found in read.values()]
        cases.append(InputCase(study.name, paths[0], tuple(zip(keys, paths, strict=True))))
    return cases, failed
