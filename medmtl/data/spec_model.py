"""The schema of a data spec: pydantic models of every key a spec YAML may hold.

Why a module of its own: the case table (:mod:`medmtl.data.datalist`) and the split rules
(:mod:`medmtl.data.splits`) read these models, and :class:`medmtl.data.spec.DatasetSpec` builds its
cases with them; with the models here the imports go one way, spec -> datalist -> splits -> models.
"""

from __future__ import annotations

import os
import re
import string
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from medmtl.data.problems import DataError, Problem
from medmtl.data.selection import selection_problems
from medmtl.data.task_keys import reserved_name_error
from medmtl.data.tasks import LabelQuality, Task, TaskKind

__all__ = [
    "GlobCases",
    "CsvCases",
    "DecathlonCases",
    "CaseSource",
    "CsvLookup",
    "LabelSource",
    "TaskSpec",
    "SplitSpec",
    "DicomSeriesRules",
    "DatasetSpecModel",
    "SpecError",
    "expand_env",
    "clash_message",
    "STUDY_KEY",
    "template_fields",
]

_STRICT = ConfigDict(extra="forbid", frozen=True)

STUDY_KEY = "study"
"""Case-dict key of a case's study (exam) id, set when the spec has ``aggregate_by``."""
_PATH_FIELDS = ("path", "name", "stem", "parent", "case_id")
"""Fields every case of a file source has besides its regex groups (see :mod:`medmtl.data.spec`)."""


class SpecError(DataError):
    """A spec file that cannot be used: every problem in it, with the file name."""


class _CaseSourceBase(BaseModel):
    model_config = _STRICT
    regex: str | None = None
    """Regular expression with named groups, matched against the path (relative to root); entries
    that do not match are skipped (e.g. ``_mask`` files or macOS ``._`` files)."""
    unlabelled: bool = False
    """Every case of this source is unlabelled (e.g. a ``test/`` folder without masks)."""
    fields: dict[str, str] = Field(default_factory=dict)
    """Constant fields added to every case of this source (e.g. ``{split: test}``)."""

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as err:
                raise ValueError(f"regex {value!r} does not compile: {err}") from err
        return value


class GlobCases(_CaseSourceBase):
    """Cases found by globbing files or folders under the root."""

    glob: str | tuple[str, ...]


class CsvCases(_CaseSourceBase):
    """Cases listed in a CSV file (one row per case, or per image as in MURA).

    ``path_column`` names the column with the image path (relative to root); with ``header: false``
    columns are named ``col0``, ``col1``, ...; every column becomes a field.
    """

    csv: str
    header: bool = True
    path_column: str | None = None


class DecathlonCases(_CaseSourceBase):
    """Cases listed in a Medical Segmentation Decathlon style ``dataset.json``."""

    decathlon: str
    section: str = "training"


def _source_kind(value: Any) -> str | None:
    """Which kind of case source a YAML mapping is, from the key it has (clear errors, no union soup)."""
    if isinstance(value, BaseModel):
        return {GlobCases: "glob", CsvCases: "csv", DecathlonCases: "decathlon"}.get(type(value))
    if isinstance(value, dict):
        for key in ("glob", "csv", "decathlon"):
            if key in value:
                return key
    return None


CaseSource = Annotated[
    Annotated[GlobCases, Tag("glob")] | Annotated[CsvCases, Tag("csv")] | Annotated[DecathlonCases, Tag("decathlon")],
    Discriminator(
        _source_kind,
        custom_error_type="case_source",
        custom_error_message="a case source needs one of the keys glob / csv / decathlon",
    ),
]


class CsvLookup(BaseModel):
    """A label looked up in a CSV table by case key (MRNet's ``train-acl.csv``: ``0000,1``)."""

    model_config = _STRICT
    file: str
    """Path template relative to root, e.g. ``"{split}-acl.csv"``."""
    key: str = "{case_id}"
    """Template giving the case's key in the table."""
    key_column: str | int = 0
    value_column: str | int | tuple[str | int, ...] = 1
    """One column, or one per label for a multilabel task."""
    header: bool = True


class LabelSource(BaseModel):
    """Where one task's label comes from; exactly one of the source fields is set.

    - ``mask``: path template of a mask file; a glob matching several files ORs them (BUSI
      ``_mask_1.png``); no match means the case lacks this label.
    - ``field``: a case field (folder name, regex group, CSV column of the case list).
    - ``csv``: a lookup in a separate CSV table.
    - ``mask_nonempty``: binary label derived from a mask: 1 if any voxel is non-zero.

    ``map`` turns raw values into class names or 0/1 (``{positive: 1, negative: 0}``); ``binarize``
    turns a mask into {0, 1} (any non-zero voxel is foreground); ``values`` maps mask voxel values
    (``{255: 1}``). ``scaled_mask: true`` declares 2D masks drawn at a whole-number fraction of the
    image resolution over the same field of view (JSRT's SCR masks: 1024 px for 2048 px images); the
    2D presets resize image and masks to one size, and the validator accepts that size ratio only
    where it is declared.
    """

    model_config = _STRICT
    mask: str | None = None
    field: str | None = None
    csv: CsvLookup | None = None
    mask_nonempty: str | None = None
    map: dict[str, str | int | float] | None = None
    binarize: bool = False
    values: dict[int, int] | None = None
    scaled_mask: bool = False
    quality: LabelQuality = LabelQuality.STRONG

    @model_validator(mode="after")
    def _exactly_one(self) -> LabelSource:
        given = [k for k in ("mask", "field", "csv", "mask_nonempty") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a label needs exactly one of mask / field / csv / mask_nonempty, got {given or 'none'}")
        return self

    @property
    def is_file(self) -> bool:
        """True when the label is a mask file read at training time."""
        return self.mask is not None


class TaskSpec(Task):
    """A :class:`Task` plus where its labels are found in this dataset.

    ``weak_label`` is an optional second, machine-made source (k-means masks, report mining) used for
    weak-label pre-training; ``label`` is the strong (human) one.
    """

    label: LabelSource | None = None
    weak_label: LabelSource | None = None

    @model_validator(mode="after")
    def _label_fits_kind(self) -> TaskSpec:
        for source in (self.label, self.weak_label):
            if source is None:
                continue
            if self.kind == TaskKind.SEGMENTATION and source.mask is None:
                raise ValueError(f"segmentation task '{self.name}' takes its label from a 'mask' file template")
            if self.kind != TaskKind.SEGMENTATION and source.mask is not None:
                raise ValueError(
                    f"{self.kind.value} task '{self.name}' cannot read a 'mask': use field/csv/mask_nonempty"
                )
            if source.mask_nonempty is not None and self.kind != TaskKind.BINARY:
                raise ValueError(f"'mask_nonempty' gives a binary label; task '{self.name}' is {self.kind.value}")
            multi_columns = source.csv is not None and isinstance(source.csv.value_column, tuple)
            if multi_columns and self.kind != TaskKind.MULTILABEL:
                raise ValueError(
                    f"several value columns are for multilabel tasks; task '{self.name}' is {self.kind.value}"
                )
            if self.kind == TaskKind.MULTILABEL and source.csv is not None:
                n = len(source.csv.value_column) if multi_columns else 1
                if n != self.num_outputs:
                    raise ValueError(
                        f"task '{self.name}' has {self.num_outputs} labels but its csv gives {n} value columns"
                    )
        return self

    def as_task(self) -> Task:
        """The plain :class:`Task` (what networks and losses need), without data-source details."""
        return Task(**{k: getattr(self, k) for k in Task.model_fields})


class SplitSpec(BaseModel):
    """How cases are split into train / val / test.

    - ``fractions``: each patient (or case) hashed with the seed into the given fractions, so adding
      cases never moves one (see :mod:`medmtl.data.splits`).
    - ``kfold``: ``folds`` folds, fold ``fold`` is validation, the rest training (cases whose ``split``
      field says ``test`` are kept out, if such a field exists).
    - ``field``: a case field names the split (``values`` maps raw values to train/val/test);
      ``val_fraction`` optionally carves a validation set out of the training cases.
    - ``none``: every case is in ``train``.

    ``stratify`` names a task whose class proportions the splits keep in expectation; ``group`` (on
    the dataset) keeps all cases of a patient in one split. ``duplicates: together`` (the default)
    keeps each group of duplicate images (:mod:`medmtl.data.duplicates`) in one split when
    ``fractions`` or ``kfold`` splits are computed afresh (a recorded ``splits.json`` still wins);
    ``ignore`` splits without looking at the images.

    ``cv_folds`` cross-validates inside the development cases (``train`` and ``val`` of the rule
    above; ``test`` is never touched): each patient unit is hashed again into ``cv_folds`` folds,
    fold ``cv_fold`` becomes ``val`` and the others ``train`` (what ``medmtl cv`` sets per fold).
    """

    model_config = _STRICT
    method: Literal["fractions", "kfold", "field", "none"] = "fractions"
    fractions: dict[Literal["train", "val", "test"], float] = Field(
        default_factory=lambda: {"train": 0.7, "val": 0.15, "test": 0.15}
    )
    folds: int = Field(default=5, ge=2)
    fold: int = Field(default=0, ge=0)
    field: str = "split"
    values: dict[str, Literal["train", "val", "test", "exclude"]] | None = None
    val_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)
    seed: int = 0
    stratify: str | None = None
    duplicates: Literal["together", "ignore"] = "together"
    cv_folds: int | None = Field(default=None, ge=2)
    cv_fold: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> SplitSpec:
        if self.cv_folds is not None and self.method == "kfold":
            raise ValueError(
                "cv_folds folds the development cases of a train/test split; method 'kfold' already folds every "
                "case (use one or the other)"
            )
        if self.cv_folds is not None and self.cv_fold >= self.cv_folds:
            raise ValueError(
                f"cv_fold {self.cv_fold} does not exist with {self.cv_folds} folds (use 0..{self.cv_folds - 1})"
            )
        if self.method == "fractions":
            total = sum(self.fractions.values())
            if abs(total - 1.0) > 1e-6 or any(v < 0 for v in self.fractions.values()):
                raise ValueError(
                    f"split fractions must be >= 0 and sum to 1, got {dict(self.fractions)} (sum {total:g})"
                )
        if self.method == "kfold" and self.fold >= self.folds:
            raise ValueError(f"fold {self.fold} does not exist with {self.folds} folds (use 0..{self.folds - 1})")
        return self


class DicomSeriesRules(BaseModel):
    """Which series of a DICOM study the model takes, when ``medmtl predict`` is given a study folder.

    Every rule left out does not filter; ``modality`` left out means the spec's ``modality``. A series
    is chosen when it meets every rule (and is a volume for a 3D model, single-frame images for 2D);
    each series is scored and logged in ``series.csv`` (:mod:`medmtl.deploy.series_choice`).
    """

    model_config = _STRICT

    modality: tuple[str, ...] | None = None
    """Accepted ``Modality`` values (``[MR]``); default: the spec's ``modality``."""
    image_type: tuple[str, ...] = ()
    """Values ``ImageType`` must all hold (``[ORIGINAL, PRIMARY]``: no reformats, no derived maps)."""
    orientation: Literal["axial", "sagittal", "coronal"] | None = None
    """The plane nearest to the slices (from ``ImageOrientationPatient``)."""
    min_slices: int | None = Field(default=None, ge=1)
    """Fewest images (slices or frames) a series may have."""
    max_slices: int | None = Field(default=None, ge=1)
    """Most images a series may have."""
    series_description: str | None = None
    """Regular expression searched in ``SeriesDescription``, ignoring case (``"t1|mprage"``)."""
    choose: Literal["all", "one"] = "all"
    """``all``: every matching series of a study is a case; ``one``: the one with the most images."""
    inputs: dict[str, DicomSeriesRules] | None = None
    """Rules per input of a spec with several (MRNet: ``{sagittal: {orientation: sagittal}, ...}``): the series
    of an input meets the rules above with its own replacing them; a study is one case, one series per input
    (the one with the most images). A spec with one input needs none."""

    @field_validator("modality", "image_type")
    @classmethod
    def _upper(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return None if value is None else tuple(v.strip().upper() for v in value)

    @field_validator("series_description")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as err:
                raise ValueError(f"{value!r} is not a regular expression: {err}") from None
        return value

    @model_validator(mode="after")
    def _range(self) -> DicomSeriesRules:
        for rules in (self, *(self.inputs or {}).values()):
            low, high = rules.min_slices, rules.max_slices
            if rules is not self:
                low = low if "min_slices" in rules.model_fields_set else self.min_slices
                high = high if "max_slices" in rules.model_fields_set else self.max_slices
            if low is not None and high is not None and low > high:
                raise ValueError(f"min_slices {low} is above max_slices {high}: no series fits")
        nested = sorted(name for name, rules in (self.inputs or {}).items() if rules.inputs is not None)
        if nested:
            raise ValueError(
                f"the rules of input(s) {nested} hold inputs of their own: give inputs at the top level only"
            )
        return self

    def for_input(self, name: str) -> DicomSeriesRules:
        """The rules of input ``name``: these, with the ones ``inputs[name]`` sets replacing them."""
        own = (self.inputs or {}).get(name)
        update = {key: getattr(own, key) for key in own.model_fields_set} if own is not None else {}
        return self.model_copy(update={**update, "inputs": None})


def _input_name(name: str) -> str:
    """An input name that is not one of medmtl's own keys (``case_id``, ``split``, ``pred_*``...)."""
    reason = reserved_name_error(name, "input")
    if reason is not None:
        raise PydanticCustomError("reserved_name", reason.replace("{", "{{").replace("}", "}}"))
    return name


def clash_message(names: list[str]) -> str:
    return f"{', '.join(map(repr, names))} is both an input name and a task name: a case holds one value per name"


InputName = Annotated[str, AfterValidator(_input_name)]


class DatasetSpecModel(BaseModel):
    """A whole dataset: where the files are, what the tasks are, how labels and splits are found.

    The data only; :class:`medmtl.data.spec.DatasetSpec` adds building the cases from it, and is what
    :func:`~medmtl.data.spec.load_spec` returns and users build.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    root: str = "."
    cases: CaseSource | tuple[CaseSource, ...]
    case_id: str = "{stem}"
    group: str | CsvLookup | None = None
    """Patient of a case: a template (``"{patient}"``) or a CSV lookup by case (a case without a row is its own group)."""
    inputs: dict[InputName, str] = Field(default_factory=lambda: {"image": "{path}"})
    tasks: tuple[TaskSpec, ...]
    aggregate_by: str | None = None
    """Study (exam) of a case: a template over the case's fields (MURA: ``"{part}_{patient}_{study}"``); with
    it the evaluation also scores per study (:mod:`medmtl.metrics.studies`) and validation warns about studies
    whose images carry different labels."""
    aggregate: Literal["mean", "max"] = "mean"
    """How a study's probability comes from its images' (``mean``: the MURA protocol; or ``max``)."""
    select: dict[str, str | tuple[str, ...]] | None = None
    """Keep only the cases labelled with these classes, ``{task: class or [classes]}`` (all tasks named must
    match); the others are left out of every split, after the splits are assigned (:mod:`medmtl.data.selection`).
    E.g. ``{body_part: elbow}``: the training cases of the elbow expert of an ``ExpertRouter``."""
    splits: SplitSpec = Field(default_factory=SplitSpec)
    spatial_dims: Literal[2, 3] = 2
    modality: str = ""
    dicom_series: DicomSeriesRules | None = None
    """Which series of a DICOM study ``medmtl predict`` gives the model (default: the ``modality``'s)."""
    spec_path: str | None = Field(default=None, exclude=True)
    """Where the spec was read from (relative roots resolve against its folder)."""

    @field_validator("aggregate_by")
    @classmethod
    def _study_template(cls, value: str | None, info: ValidationInfo) -> str | None:
        """Fields the template names must exist (where the sources say which fields cases have)."""
        if value is None:
            return value
        try:
            wanted = template_fields(value)
        except ValueError as err:
            raise ValueError(f"{value!r} is not a template like '{{patient}}_{{study}}': {err}") from None
        if not wanted:
            raise ValueError(
                f"{value!r} names no field: all images would be one study; use e.g. '{{patient}}_{{study}}'"
            )
        names = [t.name for t in info.data.get("tasks", ())] + list(info.data.get("inputs", {}))
        if STUDY_KEY in names:
            raise ValueError(
                f"a task or input is named {STUDY_KEY!r}, the key aggregate_by gives each case's study: rename it"
            )
        cases = info.data.get("cases")
        sources = () if cases is None else cases if isinstance(cases, tuple) else (cases,)
        for source in sources:
            known = _known_fields(source)
            unknown = sorted(wanted - known) if known is not None else []
            if unknown:
                raise ValueError(
                    f"{value!r} uses field(s) {unknown} that the cases do not have; they have {sorted(known)} "
                    "(the named groups of the cases regex, the source's fields and path/name/stem/parent/case_id)"
                )
        return value

    @field_validator("select")
    @classmethod
    def _select_classes(cls, value: dict | None, info: ValidationInfo) -> dict | None:
        """Tasks and classes ``select`` names must exist (every problem in one message)."""
        tasks = info.data.get("tasks")
        if value is None or tasks is None:  # tasks invalid: their own error says why
            return value
        problems = selection_problems(value, tasks)
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DatasetSpecModel:
        names = [t.name for t in self.tasks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"task names must be unique, repeated: {duplicates}")
        if not self.tasks:
            raise ValueError("a spec needs at least one task")
        clash = sorted(set(self.inputs) & set(names))
        if clash:
            raise PydanticCustomError("name_clash", clash_message(clash).replace("{", "{{").replace("}", "}}"))
        series_inputs = None if self.dicom_series is None else self.dicom_series.inputs
        if series_inputs is not None and set(series_inputs) != set(self.inputs):
            raise ValueError(
                f"dicom_series.inputs gives rules for {sorted(series_inputs)}; the spec's inputs are "
                f"{sorted(self.inputs)}: give rules for each input, under its name"
            )
        if self.splits.stratify is not None and self.splits.stratify not in names:
            raise ValueError(f"splits.stratify names task '{self.splits.stratify}', which is not one of {names}")
        if self.splits.stratify is not None:
            task = self.task(self.splits.stratify)
            if task.kind == TaskKind.SEGMENTATION:
                raise ValueError(f"cannot stratify by segmentation task '{task.name}': pick a classification task")
        return self

    # ---- accessors -------------------------------------------------------------------------
    @property
    def case_sources(self) -> tuple[CaseSource, ...]:
        return self.cases if isinstance(self.cases, tuple) else (self.cases,)

    @property
    def task_list(self) -> list[Task]:
        """Plain tasks, what networks / losses / metrics are built from."""
        return [t.as_task() for t in self.tasks]

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task(self, name: str) -> TaskSpec:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(f"no task '{name}' in spec '{self.name}'; tasks are {self.task_names}")

    def resolved_root(self, root: str | os.PathLike | None = None) -> Path:
        """The data root: ``root`` if given, else the spec's (env vars expanded, relative to the spec file)."""
        raw = str(root) if root is not None else expand_env(self.root)
        path = Path(raw).expanduser()
        if not path.is_absolute() and root is None and self.spec_path is not None:
            path = Path(self.spec_path).parent / path
        return path.resolve()


def template_fields(template: str) -> set[str]:
    """Field names a ``str.format`` template uses (``"{part}_{study}"`` -> ``{"part", "study"}``)."""
    return {field.split(".")[0].split("[")[0] for _, field, _, _ in string.Formatter().parse(template) if field}


def _known_fields(source: BaseModel) -> set[str] | None:
    """Fields every case of ``source`` has, or ``None`` where only the data say (CSV columns, Decathlon keys)."""
    if isinstance(source, GlobCases) and source.regex is not None:
        return set(re.compile(source.regex).groupindex) | set(_PATH_FIELDS) | set(source.fields)
    if isinstance(source, GlobCases):
        return set(_PATH_FIELDS) | set(source.fields)
    return None


def expand_env(text: str) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}`` (shell style) in a spec's root."""

    def replace(match: re.Match) -> str:
        name, default = match.group(1), match.group(3)
        value = os.environ.get(name)
        if value:
            return value
        if default is not None:
            return default
        raise SpecError(
            [
                Problem(
                    "missing_env",
                    f"environment variable {name} is not set",
                    f"export {name}=/path/to/data or pass --root",
                )
            ]
        )

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}", replace, text)
