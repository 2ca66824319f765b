"""Duplicate images in a dataset: groups, label conflicts and leakage across splits.

Why: the same picture twice (re-exported, re-cropped, another frame of the same sweep) inflates
test figures when one copy is trained on and the other tested on, and two copies with different
labels are label noise. BUSI, for example, is reported to hold about 19 % near-duplicates.
:func:`find_duplicates` compares the first input of every case (for several inputs per case, such
as MRNet's views, the first one stands for the case; files stacked as channels count as one image)
with :mod:`medmtl.data.duplicate_pairs`:

- **exact**: identical files or identical pixels;
- **near**: 64-bit perceptual hashes at most :data:`~medmtl.data.duplicate_pairs.HASH_THRESHOLD`
  bits apart *and* a crop-tolerant Pearson correlation of the 32x32 (3D: 16^3) z-scored images of at
  least :data:`~medmtl.data.duplicate_pairs.SIMILARITY_THRESHOLD` (measured on BUSI: copies resized,
  re-encoded and cropped by a few percent reach 0.98 or more; distinct images of the dataset rarely
  pass 0.95; see ``data_specs/README.md``).

Groups are the connected components of the confirmed pairs (one case in many pairs joins them all).
A pair's labels *disagree* when a task labelled on both differs: image-level values compared as
they are, masks by the Dice of their foreground after aligning the matched crop (below
:data:`MASK_DICE_THRESHOLD`; both empty agree). Constant images are left out (nothing to compare).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.cluster.hierarchy import DisjointSet

from medmtl.atomic_io import atomic_write
from medmtl.csv_safety import csv_text
from medmtl.data.duplicate_pairs import Box, match_pairs
from medmtl.data.image_signatures import image_signatures
from medmtl.data.problems import Problem, Severity
from medmtl.data.spec_model import DatasetSpecModel
from medmtl.data.tasks import TaskKind, present_key

__all__ = ["MASK_DICE_THRESHOLD", "CSV_COLUMNS", "DuplicatePair", "Duplicates", "find_duplicates"]

logger = logging.getLogger(__name__)

MASK_DICE_THRESHOLD = 0.5
"""Masks of a duplicate pair with a lower foreground Dice (after alignment) disagree."""
CSV_COLUMNS = (
    "group",
    "case_a",
    "file_a",
    "case_b",
    "file_b",
    "kind",
    "hash_distance",
    "similarity",
    "labels_disagree",
    "split_a",
    "split_b",
)
_LISTED = 20
"""Pairs named one by one per check in the warnings; the rest are counted (duplicates.csv lists all)."""
_SUPERVISED = ("train", "val", "test")
_MASK_GRID = 64


@dataclass(frozen=True)
class DuplicatePair:
    """Two cases showing the same image.

    Attributes:
        group: the duplicate group (1-based) both belong to.
        case_a, case_b, file_a, file_b: the cases and their (first input) files; ``case_a < case_b``.
        kind: ``exact`` (same file or pixels) or ``near``.
        hash_distance: differing bits of the 64-bit perceptual hashes.
        similarity: crop-tolerant Pearson correlation of the small grids (1.0 for exact).
        labels_disagree: tasks labelled on both whose labels differ.
        split_a, split_b: the cases' splits (``"train (fold 2)"`` for k-fold), empty when unknown.
    """

    group: int
    case_a: str
    file_a: str
    case_b: str
    file_b: str
    kind: str
    hash_distance: int
    similarity: float
    labels_disagree: tuple[str, ...] = ()
    split_a: str = ""
    split_b: str = ""
    leaks: bool = False
    """Both cases are in train/val/test (k-fold: folds) and not in the same one."""
    box_a: Box | None = field(default=None, repr=False)
    box_b: Box | None = field(default=None, repr=False)
    """The region of that case's image matching the other (a crop), ``None`` for the whole image."""


@dataclass
class Duplicates:
    """Every duplicate pair and group of a dataset.

    Attributes:
        pairs: confirmed pairs, by group then case ids.
        groups: case ids per group (group ``g`` is ``groups[g - 1]``), each sorted.
        compared: images compared (cases whose image was read and is not constant).
        skipped: cases left out (unreadable or constant image).
        labels_checked: whether the pairs' labels were compared (:meth:`with_labels`).
    """

    pairs: list[DuplicatePair] = field(default_factory=list)
    groups: list[tuple[str, ...]] = field(default_factory=list)
    compared: int = 0
    skipped: list[str] = field(default_factory=list)
    labels_checked: bool = False

    def group_of(self) -> dict[str, int]:
        """``{case_id: group}`` for every case in a group."""
        return {case: g for g, members in enumerate(self.groups, start=1) for case in members}

    @property
    def cases_in_groups(self) -> int:
        return sum(len(g) for g in self.groups)

    def with_splits(self, cases: Sequence[dict]) -> Duplicates:
        """A copy whose pairs carry the cases' splits (``split``, ``fold``) and whether they leak."""
        by_id = {c["case_id"]: c for c in cases}
        pairs = []
        for pair in self.pairs:
            a, b = by_id.get(pair.case_a, {}), by_id.get(pair.case_b, {})
            leaks = a.get("split") in _SUPERVISED and b.get("split") in _SUPERVISED
            if leaks and "fold" in a and "fold" in b:
                leaks = a["fold"] != b["fold"]
            else:
                leaks = leaks and a["split"] != b["split"]
            pairs.append(replace(pair, split_a=_split_name(a), split_b=_split_name(b), leaks=leaks))
        return replace(self, pairs=pairs)

    def with_labels(self, cases: Sequence[dict], spec: DatasetSpecModel) -> Duplicates:
        """A copy whose pairs say which tasks' labels disagree (reads the masks of paired cases only)."""
        by_id = {c["case_id"]: c for c in cases}
        masks: dict[str, np.ndarray | None] = {}
        pairs = [
            replace(
                p,
                labels_disagree=_disagreements(spec, by_id[p.case_a], by_id[p.case_b], p.box_a, p.box_b, masks),
            )
            if p.case_a in by_id and p.case_b in by_id
            else p
            for p in self.pairs
        ]
        return replace(self, pairs=pairs, labels_checked=True)

    def problems(self) -> list[Problem]:
        """One warning per pair (label conflict, else across splits, else plain duplicate), each naming both files."""
        by_check: dict[str, list[Problem]] = {}
        for pair in self.pairs:
            check, message = _describe(pair)
            by_check.setdefault(check, []).append(
                Problem(
                    check,
                    message,
                    _FIXES[check],
                    path=pair.file_a,
                    case_id=pair.case_a,
                    severity=Severity.WARNING,
                )
            )
        found: list[Problem] = []
        for check, listed in by_check.items():
            found += listed[:_LISTED]
            if len(listed) > _LISTED:
                found.append(
                    Problem(
                        check,
                        f"... and {len(listed) - _LISTED} more such pairs (the duplicates CSV lists every pair)",
                        _FIXES[check],
                        severity=Severity.WARNING,
                    )
                )
        return found

    def csv_text(self) -> str:
        """Every pair as CSV (:data:`CSV_COLUMNS`), cells made safe for spreadsheets (file names come from data)."""
        rows = [
            [
                p.group,
                p.case_a,
                p.file_a,
                p.case_b,
                p.file_b,
                p.kind,
                p.hash_distance,
                f"{p.similarity:.4f}",
                ";".join(p.labels_disagree),
                p.split_a,
                p.split_b,
            ]
            for p in self.pairs
        ]
        return csv_text(CSV_COLUMNS, rows)

    def write_csv(self, path: str | os.PathLike) -> Path:
        """Write :meth:`csv_text` to ``path`` atomically."""
        return atomic_write(path, self.csv_text())

    def summary(self) -> dict[str, int]:
        """Counts for reports: images compared, in groups, groups, pairs, conflicting and leaking pairs."""
        return {
            "images_compared": self.compared,
            "images_in_groups": self.cases_in_groups,
            "groups": len(self.groups),
            "pairs": len(self.pairs),
            "exact_pairs": sum(p.kind == "exact" for p in self.pairs),
            "label_conflicts": sum(bool(p.labels_disagree) for p in self.pairs),
            "across_splits": sum(p.leaks for p in self.pairs),
        }


_FIXES = {
    "duplicate_image": "nothing to do if intended: splits keep a duplicate group together (splits.duplicates: "
    "together); otherwise remove one copy",
    "duplicate_label_conflict": "check both labels and correct the wrong one, or remove one copy",
    "duplicate_across_splits": "the same image is trained on and evaluated on: delete the recorded splits.json to "
    "split afresh with duplicates together (splits.duplicates: together, a new run), or remove one copy",
}


def _describe(pair: DuplicatePair) -> tuple[str, str]:
    what = "exact duplicate" if pair.kind == "exact" else "near-duplicate"
    text = (
        f"{what} of case {pair.case_b} ({pair.file_b}): hash distance {pair.hash_distance}/64, "
        f"similarity {pair.similarity:.3f}, group {pair.group}"
    )
    if pair.split_a or pair.split_b:
        text += f", splits {pair.split_a or '-'} / {pair.split_b or '-'}"
    if pair.labels_disagree:
        return "duplicate_label_conflict", f"{text}; labels disagree on {', '.join(pair.labels_disagree)}"
    if pair.leaks:
        return "duplicate_across_splits", f"{text}; the two are in different splits"
    return "duplicate_image", text


def _split_name(case: dict) -> str:
    split = str(case.get("split", ""))
    return f"{split} (fold {case['fold']})" if "fold" in case else split


# ---------------------------------------------------------------------------------------------
# finding them


def find_duplicates(
    cases: Sequence[dict],
    spec: DatasetSpecModel,
    cache: bool = True,
    cache_name: str | os.PathLike = "",
    progress: bool | None = False,
    labels: bool = True,
) -> Duplicates:
    """Exact and near-duplicate images among ``cases``, grouped, with label conflicts.

    Args:
        cases: case dicts of a case table (``case_id``, the spec's inputs and labels; ``split`` and
            ``fold`` when present are used by :meth:`Duplicates.with_splits`, not here).
        spec: the dataset spec (its first input, ``spatial_dims`` and tasks).
        cache: use the signature cache (see :mod:`medmtl.data.image_signatures`).
        cache_name: names the cache file (the dataset root).
        progress: progress bar while reading images (``None``: when stderr is a terminal).
        labels: compare the labels of each pair (reads the masks of paired cases only).

    Returns:
        The pairs and groups; pairs carry no split yet (see :meth:`Duplicates.with_splits`).
    """
    key = next(iter(spec.inputs))
    usable = [c for c in cases if c.get(key)]
    signatures = image_signatures(
        [c[key] for c in usable], spec.spatial_dims, cache=cache, cache_name=cache_name, progress=progress
    )
    kept = [(c, s) for c, s in zip(usable, signatures, strict=True) if s is not None]
    result = Duplicates(
        compared=len(kept), skipped=sorted(c["case_id"] for c, s in zip(usable, signatures, strict=True) if s is None)
    )
    if len(kept) < 2:
        return result
    matches = match_pairs(
        np.array([s.phash for _, s in kept], dtype=np.uint64),
        np.stack([s.grid for _, s in kept]),
        spec.spatial_dims,
        same=np.array([s.pixels for _, s in kept]),
    )
    ids = [c["case_id"] for c, _ in kept]
    groups = DisjointSet(ids)
    for m in matches:
        groups.merge(ids[m.i], ids[m.j])
    members = sorted(tuple(sorted(g)) for g in groups.subsets() if len(g) > 1)
    result.groups = members
    number = result.group_of()
    pairs = []
    for m in matches:
        a, b = sorted((m.i, m.j), key=lambda k: ids[k])
        case_a, case_b = kept[a][0], kept[b][0]
        pairs.append(
            DuplicatePair(
                group=number[ids[a]],
                case_a=ids[a],
                file_a=_first_file(case_a[key]),
                case_b=ids[b],
                file_b=_first_file(case_b[key]),
                kind="exact" if m.exact else "near",
                hash_distance=m.hash_distance,
                similarity=round(m.similarity, 4),
                box_a=m.box if m.cropped == a else None,  # the matched region lies in the cropped image only
                box_b=m.box if m.cropped == b else None,
            )
        )
    result.pairs = sorted(pairs, key=lambda p: (p.group, p.case_a, p.case_b))
    if labels:
        result = result.with_labels(cases, spec)
    logger.info(
        "duplicates: %d of %d images in %d groups (%d pairs)",
        result.cases_in_groups,
        result.compared,
        len(result.groups),
        len(result.pairs),
    )
    return result


def _first_file(value: str | Sequence[str]) -> str:
    return value if isinstance(value, str) else str(value[0])


def _disagreements(
    spec: DatasetSpecModel, a: dict, b: dict, box_a: Box | None, box_b: Box | None, masks: dict
) -> tuple[str, ...]:
    """Tasks labelled on both cases whose labels differ (masks: Dice of the foreground, matched regions aligned)."""
    found = []
    for task in spec.tasks:
        if not (a.get(present_key(task.name)) and b.get(present_key(task.name))):
            continue
        if task.kind != TaskKind.SEGMENTATION:
            if a.get(task.name) != b.get(task.name):
                found.append(task.name)
            continue
        dice = _mask_dice(a[task.name], b[task.name], spec.spatial_dims, box_a, box_b, masks)
        if dice is not None and dice < MASK_DICE_THRESHOLD:
            found.append(task.name)
    return tuple(found)


def _mask_dice(
    mask_a: str | Sequence[str],
    mask_b: str | Sequence[str],
    spatial_dims: int,
    box_a: Box | None,
    box_b: Box | None,
    masks: dict,
) -> float | None:
    """Foreground Dice of two masks on a common grid; 1.0 when both are empty; ``None`` when unreadable.

    ``masks`` keeps the masks read (a case in several pairs is read once).
    """
    grids = []
    for mask, box in ((mask_a, box_a), (mask_b, box_b)):
        key = repr(mask)
        if key not in masks:
            masks[key] = _foreground(mask, spatial_dims)
        foreground = masks[key]
        if foreground is None:
            return None
        if box is not None:
            region = tuple(
                slice(round(start * n), max(round(start * n) + 1, round((start + size) * n)))
                for (start, size), n in zip(box, foreground.shape, strict=True)
            )
            foreground = foreground[region]
        data = torch.from_numpy(foreground.astype(np.float32))[None, None]
        grids.append(F.interpolate(data, size=(_MASK_GRID,) * spatial_dims, mode="nearest")[0, 0].numpy() > 0.5)
    total = grids[0].sum() + grids[1].sum()
    return 1.0 if total == 0 else float(2 * (grids[0] & grids[1]).sum() / total)


def _foreground(mask: str | Sequence[str], spatial_dims: int) -> np.ndarray | None:
    """A mask's (or several masks' OR-ed) non-zero voxels on its spatial axes; ``None`` when unreadable."""
    from medmtl.data.readers import load_array

    paths = [mask] if isinstance(mask, str) else list(mask)
    union = None
    for path in paths:
        try:
            data = np.asarray(load_array(path))
        except Exception as err:  # noqa: BLE001 - validation reports unreadable masks
            logger.debug("cannot compare mask %s: %s", path, err)
            return None
        while data.ndim > spatial_dims:  # colour or channel axes: any non-zero value is foreground
            data = np.abs(data).max(axis=-1 if data.shape[-1] <= data.shape[0] else 0)
        if union is not None and union.shape != data.shape:
            return None
        union = data != 0 if union is None else union | (data != 0)
    return union
