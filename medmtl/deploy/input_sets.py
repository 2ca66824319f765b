"""Cases of a model that takes several images per case: one sub-folder per input, files paired by their path.

Why: a model whose spec has several ``inputs`` (MRNet's ``axial``, ``coronal``, ``sagittal`` planes)
needs every image of a case together, and a folder of new exams pairs them the way MRNet ships them:
``INPUT/axial/0001.npy``, ``INPUT/coronal/0001.npy``, ``INPUT/sagittal/0001.npy`` (at any depth:
``INPUT/valid/axial/1130.npy``). A case is the files whose path is the same once the input's folder is
left out (``valid/1130``); the input names are the spec's, nothing here knows a plane. A case lacking
an input, or holding two images for one, is a row of ``failed.csv`` naming the input and the path
expected; an image in no input's folder is one too. The other cases are predicted.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from medmtl.deploy.inputs import InputCase, image_stem

__all__ = ["group_by_input", "layout_hint"]


def layout_hint(input_keys: Sequence[str]) -> str:
    """How to lay out a folder for a model taking ``input_keys`` (for error messages)."""
    example = ", ".join(f"INPUT/{key}/case01.npy" for key in input_keys)
    names = ", ".join(input_keys)
    return f"one sub-folder per input named {names}, the images of a case under the same name ({example})"


def _input_folder(relative: Path, input_keys: Sequence[str]) -> int | None:
    """Index of the folder of ``relative`` named after an input (the nearest to the file), or ``None``."""
    found = [i for i, part in enumerate(relative.parts[:-1]) if part in input_keys]
    return found[-1] if found else None


def group_by_input(
    found: Sequence[InputCase], root: Path, input_keys: Sequence[str]
) -> tuple[list[InputCase], list[tuple[InputCase, str]]]:
    """The cases of the images ``found`` under ``root`` (:func:`~medmtl.deploy.inputs.find_inputs`), one image per input.

    Returns the complete cases (``inputs`` in the order of ``input_keys``; the id is the path without the
    input's folder and suffix, ``valid/1130``) and the failures with their reason: an image in no input's
    folder, a case lacking inputs (the expected paths named), a case with two images for one input.

    Raises:
        ValueError: no image lies in a folder named after an input (the layout expected is named).
    """
    keys = list(input_keys)
    cases: dict[str, dict[str, list[Path]]] = {}
    where: dict[str, tuple[tuple[str, ...], int]] = {}  # a case's first path parts and its input folder's index
    failed: list[tuple[InputCase, str]] = []
    for case in found:
        relative = case.path.relative_to(root)
        at = _input_folder(relative, keys)
        if at is None:
            failed.append((case, f"in no folder named after one of the model's inputs: give {layout_hint(keys)}"))
            continue
        parts = relative.parts
        stem = image_stem(Path(*parts[:at], *parts[at + 1 :]))
        cases.setdefault(stem, {}).setdefault(parts[at], []).append(case.path)
        where.setdefault(stem, (parts, at))
    if not cases:
        raise ValueError(
            f"no image of {root} is in a folder named after one of the model's inputs: give {layout_hint(keys)}"
        )
    complete = []
    for stem in sorted(cases):
        files, (some, at) = cases[stem], where[stem]
        missing = [k for k in keys if k not in files]
        twice = [k for k in keys if len(files.get(k, ())) > 1]
        if missing:
            expected = [root.joinpath(*some[:at], key, *some[at + 1 :]) for key in missing]
            shown = ", ".join(str(p) for p in expected)
            present = ", ".join(k for k in keys if k in files)
            reason = f"no {' or '.join(missing)} image for this case: expected {shown} (found {present})"
            failed.append((InputCase(stem, expected[0]), reason))
        elif twice:
            shown = "; ".join(f"{k}: {', '.join(p.name for p in files[k])}" for k in twice)
            failed.append((InputCase(stem, files[twice[0]][0]), f"several images for one input ({shown}): keep one"))
        else:
            complete.append(InputCase(stem, files[keys[0]][0], tuple((k, files[k][0]) for k in keys)))
    return complete, failed
