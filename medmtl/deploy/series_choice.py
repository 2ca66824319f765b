"""Which series of each DICOM study ``medmtl predict`` gives the model: rules, scores, cases and ``series.csv``.

Why: a study from the PACS holds a localizer, several sequences, reformats, maybe a report; a model
trained on sagittal T1 volumes must get those and nothing else, and the user must be able to see
why a series was taken or left. The rules are stored with the model (the data spec's
``dicom_series``, :class:`medmtl.data.spec_model.DicomSeriesRules`; default: the spec's modality);
every series is scored against each rule, and the choice per study is written to ``series.csv``.
A study with no matching series becomes a row of ``failed.csv`` naming what was expected.

Case ids carry no patient data: ``study<k>_series<number>`` (``k`` counts the studies by their
first file's path; ``_<image>`` added per image for a 2D model), never a name, ID or date.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from medmtl.atomic_io import atomic_write
from medmtl.csv_safety import csv_text
from medmtl.data.dicom.studies import DicomStudy, SeriesHeaders, series_folder
from medmtl.data.spec_model import DicomSeriesRules
from medmtl.deploy.inputs import InputCase

__all__ = [
    "SERIES_FILE",
    "SeriesScore",
    "StudyChoice",
    "choose_series",
    "dicom_cases",
    "effective_rules",
    "expected_text",
    "score_series",
    "study_name",
    "unmatched_reason",
    "write_series_table",
]

#: the series found in the DICOM input and which were chosen, written into the output folder.
SERIES_FILE = "series.csv"
#: modalities that name the same kind of image: a radiograph is CR or DX depending on the detector.
_SAME_KIND = {"CR": ("CR", "DX"), "DX": ("CR", "DX")}


def effective_rules(rules: DicomSeriesRules | None, modality: str) -> DicomSeriesRules:
    """``rules`` with ``modality`` filled from the spec's (no rules at all: the modality only)."""
    rules = rules or DicomSeriesRules()
    if rules.modality is None and modality.strip():
        accepted = _SAME_KIND.get(modality.strip().upper(), (modality.strip().upper(),))
        rules = rules.model_copy(update={"modality": accepted})
    return rules


@dataclass(frozen=True)
class SeriesScore:
    """A series against the rules: ``checks`` holds ``(rule, passed, what was found)`` for every rule applied."""

    series: SeriesHeaders
    checks: tuple[tuple[str, bool, str], ...]

    @property
    def matched(self) -> bool:
        return all(ok for _, ok, _ in self.checks)

    @property
    def score(self) -> float:
        """Fraction of the rules met (1.0: chosen, unless ``choose: one`` took another)."""
        return sum(ok for _, ok, _ in self.checks) / len(self.checks)

    @property
    def reasons(self) -> list[str]:
        return [found for _, ok, found in self.checks if not ok]


def score_series(series: SeriesHeaders, rules: DicomSeriesRules, spatial_dims: int) -> SeriesScore:
    """Check ``series`` against every rule and against what a ``spatial_dims`` model reads."""
    checks: list[tuple[str, bool, str]] = [("images", series.has_pixels, "holds no image (a report or other object)")]
    if rules.modality is not None:
        ok = series.modality in rules.modality
        checks.append(("modality", ok, f"modality {series.modality or 'missing'}, expected {'/'.join(rules.modality)}"))
    if spatial_dims == 3:  # slices in one plane of patient space (a SEG of the volume needs that too)
        volume = series.slices >= 2 and series.orientation not in ("mixed", "unknown")
        found = {"mixed": "images in several orientations (a localizer)", "unknown": "no patient geometry"}.get(
            series.orientation, "one image"
        )
        checks.append(("volume", volume, f"{found}, expected a volume"))
    else:
        checks.append(("single_frame", not all(n > 1 for n in series.frames), "multi-frame, expected 2D images"))
    if rules.image_type:
        missing = [v for v in rules.image_type if v not in series.image_type]
        shown = "\\".join(series.image_type) or "missing"
        checks.append(("image_type", not missing, f"image type {shown}, expected {'/'.join(rules.image_type)}"))
    if rules.orientation is not None:
        ok = series.orientation == rules.orientation
        checks.append(("orientation", ok, f"orientation {series.orientation}, expected {rules.orientation}"))
    if rules.min_slices is not None:
        ok = series.slices >= rules.min_slices
        checks.append(("min_slices", ok, f"{series.slices} image(s), expected at least {rules.min_slices}"))
    if rules.max_slices is not None:
        ok = series.slices <= rules.max_slices
        checks.append(("max_slices", ok, f"{series.slices} image(s), expected at most {rules.max_slices}"))
    if rules.series_description is not None:
        ok = re.search(rules.series_description, series.description, flags=re.IGNORECASE) is not None
        found = f"description {series.description!r} does not match {rules.series_description!r}"
        checks.append(("series_description", ok, found))
    return SeriesScore(series, tuple(checks))


def expected_text(rules: DicomSeriesRules, spatial_dims: int) -> str:
    """What the rules ask for, in words (for ``failed.csv``)."""
    parts = ["a 3D volume (2 or more slices in one orientation)" if spatial_dims == 3 else "2D single-frame images"]
    if rules.modality:
        parts.append(f"modality {'/'.join(rules.modality)}")
    if rules.image_type:
        parts.append(f"image type with {'/'.join(rules.image_type)}")
    if rules.orientation:
        parts.append(f"{rules.orientation} slices")
    if rules.min_slices is not None:
        parts.append(f"at least {rules.min_slices} images")
    if rules.max_slices is not None:
        parts.append(f"at most {rules.max_slices} images")
    if rules.series_description:
        parts.append(f"a description matching {rules.series_description!r}")
    return ", ".join(parts)


def study_name(number: int) -> str:
    """A study's case id in the outputs (``study01``): its position, never a header value (no patient data)."""
    return f"study{number:02d}"


@dataclass(frozen=True)
class StudyChoice:
    """The series of one study, scored; ``chosen`` holds the indexes (into ``scores``) given to the model."""

    study: DicomStudy
    number: int
    scores: tuple[SeriesScore, ...]
    chosen: tuple[int, ...]

    @property
    def name(self) -> str:
        return study_name(self.number)

    def series_id(self, index: int) -> str:
        """``study<k>_series<SeriesNumber>`` (the series' position where its number is missing or repeated)."""
        numbers = [s.series.number for s in self.scores]
        number = numbers[index]
        unique = number is not None and numbers.count(number) == 1
        return f"{self.name}_series{number if unique else f'x{index + 1}'}"


def choose_series(studies: Sequence[DicomStudy], rules: DicomSeriesRules, spatial_dims: int) -> list[StudyChoice]:
    """Score every series of every study; choose the matching ones (``choose: one``: the one with most images)."""
    choices = []
    for number, study in enumerate(studies, start=1):
        scores = tuple(score_series(s, rules, spatial_dims) for s in study.series)
        matched = [i for i, score in enumerate(scores) if score.matched]
        if rules.choose == "one" and matched:
            matched = [max(matched, key=lambda i: (scores[i].series.slices, -i))]
        choices.append(StudyChoice(study, number, scores, tuple(matched)))
    return choices


def _link_folder(files: Sequence[Path], folder: Path) -> Path:
    """``folder`` holding links to ``files`` (copies where links are refused): one series the reader can read."""
    folder.mkdir(parents=True)
    for i, file in enumerate(files):
        target = folder / f"{i:05d}_{file.name}"
        try:
            os.symlink(file.resolve(), target)
        except OSError:  # file systems without symbolic links
            shutil.copy2(file, target)
    return folder


def dicom_cases(choices: Sequence[StudyChoice], spatial_dims: int, link_dir: Path) -> list[InputCase]:
    """The model's cases from the chosen series.

    3D: a series is one case, read from its own folder when it has one to itself, else from a folder
    of links under ``link_dir``; a multi-frame file is a case of its own. 2D: each single-frame image
    is one case.
    """
    cases = []
    for choice in choices:
        for index in choice.chosen:
            series, case_id = choice.scores[index].series, choice.series_id(index)
            single = [f for f, n in zip(series.files, series.frames, strict=True) if n == 1]
            multi = [f for f, n in zip(series.files, series.frames, strict=True) if n > 1]
            if spatial_dims == 2:
                cases += [InputCase(f"{case_id}_{k:03d}", f) for k, f in enumerate(single, start=1)]
                continue
            if len(single) > 1:
                folder = series_folder(single) or _link_folder(single, link_dir / case_id)
                cases.append(InputCase(case_id, folder))
            cases += [InputCase(case_id if len(multi) == 1 else f"{case_id}_{k}", f) for k, f in enumerate(multi, 1)]
    return cases


def unmatched_reason(
    choice: StudyChoice, rules: DicomSeriesRules, spatial_dims: int, rule: str = "dicom_series"
) -> str:
    """Why no series of ``choice``'s study was chosen: what the model expects, what each series is (``failed.csv``).

    ``rule``: where the rules are in the data spec (``dicom_series.inputs.sagittal`` for one input's).
    """
    found = " | ".join(
        f"series {s.series.number if s.series.number is not None else '?'} {s.series.modality or '?'}"
        + (f" '{s.series.description}'" if s.series.description else "")
        + f": {'; '.join(s.reasons)}"
        for s in choice.scores
    )
    return (
        f"no series of this study matches the model's series rules (the data spec's {rule}): expected "
        f"{expected_text(rules, spatial_dims)}; found {found} (see {SERIES_FILE})"
    )


def write_series_table(
    choices: Sequence[StudyChoice] | Mapping[str, Sequence[StudyChoice]],
    path: str | os.PathLike,
    failed_studies: Mapping[str, str] | None = None,
) -> Path:
    """``series.csv``: one row per series of every study, chosen or not and why; UIDs, no patient data.

    ``choices`` per input name (a model with several inputs, :mod:`medmtl.deploy.input_series`): an ``input``
    column first, one row per input and series, the study's name as the chosen series' case id.
    ``failed_studies`` (study name -> reason): studies that are no case after all (an input matched no
    series): their matching series are not marked chosen, and the reason says why.
    """
    failed_studies = failed_studies or {}
    by_input = choices if isinstance(choices, Mapping) else {"": choices}
    columns = ["input"] if isinstance(choices, Mapping) else []
    columns += ["study", "study_uid", "series_uid", "series_number", "modality", "description", "orientation"]
    columns += ["images", "image_type", "score", "chosen", "case_id", "reason"]
    rows = []
    for name, choice, index, score in (
        (name, c, i, s) for name, listed in by_input.items() for c in listed for i, s in enumerate(c.scores)
    ):
        series, chosen = score.series, index in choice.chosen
        reason = "; ".join(score.reasons) or ("" if chosen else "another matching series has more images")
        if chosen and choice.name in failed_studies:
            chosen, reason = False, f"matches, but the study is not predicted: {failed_studies[choice.name]}"
        case_id = (choice.name if name else choice.series_id(index)) if chosen else ""
        rows.append(
            ([name] if isinstance(choices, Mapping) else [])
            + [
                choice.name,
                series.study_uid,
                series.series_uid,
                "" if series.number is None else series.number,
                series.modality,
                series.description,
                series.orientation,
                series.slices,
                "\\".join(series.image_type),
                round(score.score, 3),
                "yes" if chosen else "no",
                case_id,
                reason,
            ]
        )
    return atomic_write(Path(path), csv_text(columns, rows))
