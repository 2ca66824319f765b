"""The images ``medmtl predict`` is given: found in a file or folder, checked one by one, listed for the bundle.

Why: a folder a hospital exports holds what it holds (a stray report, a truncated file, a colour
screenshot, a volume where a radiograph was expected). Each input is checked before the model runs
(its header and the file kind by :mod:`medmtl.data.header_guard`, then a real read by medmtl's reader
and its number of dimensions against the model's); an input that fails goes to ``failed.csv`` with
the reason, and the others are predicted. The list the bundle's inference reads
(``--infer_files``) holds case ids and paths only, as JSON: nothing in it is executed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medmtl.atomic_io import atomic_write
from medmtl.csv_safety import csv_text
from medmtl.json_file import read_json

__all__ = [
    "FAILED_FILE",
    "IMAGE_SUFFIXES",
    "INPUTS_FILE",
    "InputCase",
    "check_input",
    "find_inputs",
    "image_stem",
    "read_input_list",
    "write_failed",
    "write_input_list",
]

#: suffixes read as images (lower case); DICOM files are also found by their ``DICM`` preamble. ``.img`` /
#: ``.raw``: headerless raw files as JSRT ships them, read as the bundles read them (medmtl's reader picks
#: :class:`~medmtl.data.raw_reader.RawImageReader` by the suffix, nibabel for an Analyze ``.img`` + ``.hdr``
#: pair); a file whose size is not the reader's goes to ``failed.csv`` with both sizes.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".nii", ".nii.gz", ".npy", ".dcm", ".img", ".raw")
#: suffixes never read as images, not even looked into for a DICOM preamble.
_NOT_IMAGES = (".txt", ".csv", ".json", ".xml", ".html", ".pdf", ".md", ".yaml", ".yml", ".zip", ".gz", ".npz")
#: the list of predicted inputs, written into the output folder.
INPUTS_FILE = "inputs.json"
#: inputs that could not be predicted, with the reason.
FAILED_FILE = "failed.csv"


@dataclass(frozen=True)
class InputCase:
    """One input case: its case id (the path under the input folder, without the suffix) and its image.

    ``inputs`` holds ``(input name, path)`` per input of a model that takes several images per case
    (MRNet's planes, :mod:`medmtl.deploy.input_sets`; ``path`` is then the first); empty for one image.
    """

    case_id: str
    path: Path
    inputs: tuple[tuple[str, Path], ...] = ()

    def files(self, input_keys: Sequence[str]) -> dict[str, Path]:
        """The case's image per input name (one image: ``path`` under the first of ``input_keys``)."""
        return dict(self.inputs) if self.inputs else {input_keys[0]: self.path}


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _is_image(path: Path) -> bool:
    if path.name.startswith("."):  # hidden files, macOS "._x.png" resource forks
        return False
    if _suffix(path) in IMAGE_SUFFIXES:
        return True
    from medmtl.data.dicom import is_dicom_file

    # PACS exports name files without a suffix, or by their UID (1.2.840.113619.2.55.3.12): the preamble tells
    return _suffix(path) not in _NOT_IMAGES and is_dicom_file(path)


def image_stem(relative: Path) -> str:
    """``relative`` as text without its image suffix (``site_a/case07.nii.gz`` -> ``site_a/case07``)."""
    suffix = _suffix(relative)
    text = relative.as_posix()
    return text[: len(text) - len(suffix)] if suffix else text


def find_inputs(path: str | os.PathLike) -> list[InputCase]:
    """The images of ``path``: the file itself, or every image file under the folder (sorted, recursive).

    Case ids are the paths under the folder without their suffix (``site1/case07``); when two files
    differ only in the suffix (``a.png``, ``a.nii.gz``), both keep their full name.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a folder holding no image file (the suffixes looked for are named).
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"input {root} does not exist: give an image file or a folder of images")
    if root.is_file():
        return [InputCase(image_stem(Path(root.name)), root)]
    files = sorted(p for p in root.rglob("*") if p.is_file() and _is_image(p))
    if not files:
        raise ValueError(
            f"input folder {root} holds no image file (looked for {', '.join(IMAGE_SUFFIXES)} and DICOM files "
            "without a suffix, in every subfolder)"
        )
    relative = [p.relative_to(root) for p in files]
    stems = [image_stem(r) for r in relative]
    taken = {s for s in stems if stems.count(s) > 1}
    return [InputCase(r.as_posix() if s in taken else s, p) for r, s, p in zip(relative, stems, files, strict=True)]


def _spatial_ndim(shape: Sequence[int], spatial_dims: int) -> tuple[int, str]:
    """Spatial dimensions of an array as read (channel-last colour in 2D), and how it was read."""
    if spatial_dims == 2 and len(shape) == 3 and shape[-1] in (3, 4):
        return 2, f"{shape[0]} x {shape[1]}, {shape[-1]} colour channels"
    squeezed = [s for s in shape if s != 1]
    return len(squeezed), " x ".join(str(s) for s in shape)


def check_input(path: str | os.PathLike, spatial_dims: int, *, series_folder: bool = False) -> str | None:
    """Why ``path`` cannot be predicted by a model of ``spatial_dims`` (``None``: it can).

    Checks the file kind and header first (nothing large is allocated for a lying header), then reads
    the image with medmtl's reader and compares its dimensions with the model's. ``series_folder``:
    ``path`` may be a folder (a DICOM series chosen from a study).
    """
    from medmtl.data.header_guard import file_kind_problem, header_problems
    from medmtl.data.readers import load_image

    problem = file_kind_problem(path, allow_dir=series_folder)
    if problem is not None:
        return f"{problem.message} ({problem.fix})"
    problems = header_problems(path)
    if problems:
        return "; ".join(f"{p.message} ({p.fix})" for p in problems)
    try:
        image = load_image(path)
    except Exception as err:  # every reader error becomes a row of failed.csv; the other inputs go on
        found = getattr(err, "problems", None)  # medmtl's DataError: the findings without the banner
        if found:
            return "; ".join(f"{p.message} ({p.fix})" for p in found)
        return f"unreadable ({type(err).__name__}): {' '.join(str(err).split()) or 'no message'}"
    shape = tuple(int(s) for s in np.shape(image))
    ndim, shown = _spatial_ndim(shape, spatial_dims)
    if ndim != spatial_dims:
        what = "a 2D image (H x W, grey or colour)" if spatial_dims == 2 else "a 3D volume (H x W x D)"
        return f"the model takes {what}; this file reads as {shown}"
    return None


def write_input_list(cases: Iterable[InputCase], input_keys: str | Sequence[str], path: str | os.PathLike) -> Path:
    """The bundle's datalist for ``cases``: ``[{"case_id": ..., <input>: absolute path, ...}]`` as JSON.

    ``input_keys``: the spec's input names (one name: each case's ``path`` under it).
    """
    keys = [input_keys] if isinstance(input_keys, str) else list(input_keys)
    entries = [{"case_id": c.case_id, **{k: str(Path(f).resolve()) for k, f in c.files(keys).items()}} for c in cases]
    return atomic_write(Path(path), json.dumps(entries, indent=1) + "\n")


def read_input_list(path: str | os.PathLike) -> list[dict[str, str]]:
    """Read what :func:`write_input_list` wrote (the bundle's ``--infer_files``), checking its form.

    Raises:
        ValueError: naming the file, when it is not a list of objects with a string ``case_id`` and
            string paths.
    """
    fix = "run medmtl predict again (it writes inputs.json)"
    data: Any = read_json(path, ValueError, fix)
    ok = isinstance(data, list) and all(
        isinstance(e, dict) and isinstance(e.get("case_id"), str) and all(isinstance(v, str) for v in e.values())
        for e in data
    )
    if not ok or not data:
        raise ValueError(
            f"{path}: expected a non-empty JSON list of {{'case_id': ..., '<input>': '<path>'}} objects "
            "(medmtl predict writes it as inputs.json)"
        )
    return [dict(e) for e in data]


def write_failed(failed: Sequence[tuple[InputCase, str]], path: str | os.PathLike) -> Path:
    """``failed.csv``: one row per input that was not predicted (path, case id, reason), spreadsheet-safe."""
    rows = [[str(case.path), case.case_id, reason] for case, reason in failed]
    return atomic_write(Path(path), csv_text(["path", "case_id", "reason"], rows))
