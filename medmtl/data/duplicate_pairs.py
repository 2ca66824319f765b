"""Which images are the same picture: hash candidates, confirmed by a crop-tolerant pixel correlation.

Why two steps: a perceptual hash alone merges unrelated images that share a layout (every
ultrasound frame has the same dark fan), and a pixel correlation of every pair against every
crop is too slow for thousands of images. So pairs whose 64-bit hashes (see
:mod:`medmtl.data.image_signatures`) differ in at most :data:`HASH_THRESHOLD` bits are
candidates (all pairs at once, on the packed bits), and a candidate is a duplicate when the
Pearson correlation of the two grids reaches :data:`SIMILARITY_THRESHOLD`, taking the best of
crops of either image (each axis cropped by 0-12 % in several positions) so that a
copy cropped by a few percent still lines up. Identical files or identical pixels are ``exact``
duplicates whatever the thresholds.

Thresholds, chosen by measurement (details in ``data_specs/README.md``):

- 2D, on BUSI (780 ultrasound images): 200 planted copies (resized 0.5-1.5x, cropped by 3-8 % per
  axis, brightness/contrast shifted, re-encoded as JPEG at quality 70-90) are all at hash distance
  <= 20 and correlation >= 0.981; of the 303,810 pairs of distinct BUSI images none with a hash
  distance above 22 reaches 0.97, and the correlations of the rest thin out to a valley at
  0.96-0.98 (by eye: below it different images or another view, above it frames of one sweep).
  Hence 22 bits and 0.97.
- 3D (brain T1 volumes): copies resampled 0.5-1.5x with intensity shifts and noise reach >= 0.9988,
  but different brains registered to one template reach 0.98-0.99 (0.99 with crops), so 3D takes
  0.997: whole-volume copies are found, cropped 3D copies are not promised.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "HASH_THRESHOLD",
    "SIMILARITY_THRESHOLD",
    "Match",
    "Box",
    "hash_candidates",
    "crop_boxes",
    "crop_variants",
    "correlate",
    "match_pairs",
]

HASH_THRESHOLD = 22
"""Most differing bits (of 64) between the hashes of two images for them to be compared at all."""
SIMILARITY_THRESHOLD = {2: 0.97, 3: 0.997}
"""Least crop-tolerant Pearson correlation of the grids for a candidate pair to be a duplicate, per
spatial dimension. 3D is stricter: brains of different people registered to one template correlate
up to 0.99 on a 16^3 grid, while resampled or re-encoded copies of a volume stay above 0.998."""

_CROPS = {
    2: (
        (0, 32),
        (0, 31),
        (1, 31),
        (0, 30),
        (1, 30),
        (2, 30),
        (0, 29),
        (1, 29),
        (2, 29),
        (3, 29),
        (0, 28),
        (2, 28),
        (4, 28),
    ),
    3: ((0, 16), (0, 15), (1, 15)),
}
"""Per axis of the grid: (start, size) of the crops compared (the first is the whole image)."""
_COMPARED = {2: 16, 3: 12}
"""Grid side on which crops are compared."""
_BLOCK = 1024
"""Rows of the hash-distance matrix computed at once (memory: block x images bytes)."""
_ANCHORS_AT_ONCE = 128
"""Images whose crops are made at once (memory: this x crops x compared grid floats)."""


Box = tuple[tuple[float, float], ...]
"""Per axis (start, size) as fractions of the image: the region of one image that matches the other."""


@dataclass(frozen=True)
class Match:
    """A confirmed pair ``i < j`` of image indices.

    Attributes:
        i, j: indices into the signatures.
        hash_distance: differing hash bits (0-64).
        similarity: best Pearson correlation over the crops (1.0 for exact duplicates).
        exact: identical files or identical pixels.
        cropped: which image was cropped to match the other (``i`` or ``j``; ``None``: whole images).
        box: the matching region of the cropped image (fractions per axis).
    """

    i: int
    j: int
    hash_distance: int
    similarity: float
    exact: bool
    cropped: int | None = None
    box: Box | None = None


def hash_candidates(hashes: np.ndarray, threshold: int = HASH_THRESHOLD) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index pairs ``(i, j)`` with ``i < j`` whose hashes differ in at most ``threshold`` bits, and the distances."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    rows, cols, dists = [], [], []
    for start in range(0, len(hashes), _BLOCK):
        block = np.bitwise_count(hashes[start : start + _BLOCK, None] ^ hashes[None, :])
        i, j = np.nonzero(block <= threshold)
        keep = start + i < j
        rows.append(start + i[keep])
        cols.append(j[keep])
        dists.append(block[i[keep], j[keep]])
    if not rows:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0, int)
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(dists).astype(int)


def crop_variants(grids: np.ndarray, spatial_dims: int) -> torch.Tensor:
    """Every crop of every grid resampled onto the comparison grid, as unit vectors: ``(N, K, D)``.

    The first crop is the whole image; the dot product of two rows is their Pearson correlation.
    Crops are resampled by antialiased linear interpolation (area pooling onto a grid that does not
    divide the crop evenly distorts it, and a copy cropped by a few percent no longer lines up), done
    as one matrix per axis and crop, so all crops of all images are two or three matrix products.
    """
    crops = _crops(grids, spatial_dims)
    return _unit(crops)


def _crops(grids: np.ndarray, spatial_dims: int, whole_only: bool = False) -> torch.Tensor:
    """The crops of :func:`crop_variants`, not normalised: ``(N, K, D)`` (``K = 1`` with ``whole_only``)."""
    data = torch.from_numpy(np.asarray(grids, dtype=np.float32))
    n, side = len(data), data.shape[1]
    axis = _axis_matrices(spatial_dims, side)[:1] if whole_only else _axis_matrices(spatial_dims, side)
    k, c = axis.shape[:2]
    stacked = axis.reshape(k * c, side)
    if spatial_dims == 2:  # rows, then columns: (n, k c, k c) -> (n, k, k, c, c)
        crops = (stacked @ data @ stacked.T).reshape(n, k, c, k, c).permute(0, 1, 3, 2, 4)
    else:  # one axis at a time, each moved to the end: (n, k c, k c, k c) -> (n, k, k, k, c, c, c)
        crops = data
        for _ in range(3):
            crops = torch.tensordot(crops, stacked, dims=([1], [1]))
        crops = crops.reshape(n, k, c, k, c, k, c).permute(0, 1, 3, 5, 2, 4, 6)
    return crops.reshape(n, k**spatial_dims, c**spatial_dims)


def _axis_matrices(spatial_dims: int, side: int) -> torch.Tensor:
    """``(crops, compared, side)``: per crop of one axis, the linear map from the grid axis to the compared axis."""
    eye = torch.eye(side)
    size = (1, _COMPARED[spatial_dims])  # a 1-voxel first axis (a 1-voxel last axis breaks torch's antialias)
    maps = []
    for start, length in _CROPS[spatial_dims]:
        signals = eye[:, None, None, start : start + length]  # one unit impulse per grid voxel
        out = F.interpolate(signals, size=size, mode="bilinear", antialias=spatial_dims == 2, align_corners=False)
        maps.append(out[:, 0, 0, :].T)
    return torch.stack(maps)


def crop_boxes(spatial_dims: int, side: int) -> list[Box]:
    """The region of each crop of :func:`crop_variants` as fractions of a grid of ``side`` voxels per axis."""
    return [
        tuple((start / side, length / side) for start, length in crop)
        for crop in itertools.product(_CROPS[spatial_dims], repeat=spatial_dims)
    ]


def _unit(vectors: torch.Tensor) -> torch.Tensor:
    centred = vectors - vectors.mean(dim=-1, keepdim=True)
    return centred / centred.norm(dim=-1, keepdim=True).clamp_min(1e-6)


def match_pairs(
    hashes: np.ndarray,
    grids: np.ndarray,
    spatial_dims: int,
    same: np.ndarray | None = None,
    hash_threshold: int = HASH_THRESHOLD,
    similarity_threshold: float | None = None,
) -> list[Match]:
    """Every duplicate pair among N images: exact ones (``same`` keys equal) and confirmed near ones.

    Args:
        hashes: ``(N,)`` 64-bit perceptual hashes.
        grids: ``(N, *grid)`` z-scored grids.
        spatial_dims: 2 or 3.
        same: ``(N,)`` keys that mark exact duplicates when equal (the pixel digests).
        hash_threshold, similarity_threshold: see :data:`HASH_THRESHOLD`, :data:`SIMILARITY_THRESHOLD`
            (``None``: the value for ``spatial_dims``).
    """
    if similarity_threshold is None:
        similarity_threshold = SIMILARITY_THRESHOLD[spatial_dims]
    n = len(hashes)
    if n < 2:
        return []
    hashes = np.asarray(hashes, dtype=np.uint64)
    found: dict[tuple[int, int], Match] = {}
    if same is not None:
        order = np.argsort(same, kind="stable")
        for a, b in zip(order[:-1], order[1:], strict=True):
            if same[a] == same[b]:  # consecutive equal keys chain a group: enough for its components
                i, j = sorted((int(a), int(b)))
                found[(i, j)] = Match(i, j, int(np.bitwise_count(hashes[i] ^ hashes[j])), 1.0, True)
    rows, cols, dists = hash_candidates(hashes, hash_threshold)
    if len(rows):
        grids = np.asarray(grids, dtype=np.float32)
        sims, crops, cropped, boxes = correlate(grids, spatial_dims, rows, cols)
        for k in np.nonzero(sims >= similarity_threshold)[0]:
            i, j = int(rows[k]), int(cols[k])
            if (i, j) not in found:
                which = None if crops[k] == 0 else int(cropped[k])
                box = boxes[crops[k]] if which is not None else None
                found[(i, j)] = Match(i, j, int(dists[k]), float(sims[k]), False, which, box)
    return [found[key] for key in sorted(found)]


def correlate(
    grids: np.ndarray, spatial_dims: int, rows: np.ndarray, cols: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Box]]:
    """Best correlation per pair ``(rows[p], cols[p])`` over every crop of either image against the other, whole.

    Each image is an anchor once: its crops (made for a batch of anchors at a time, anchors with as
    many partners batched together) are multiplied with the whole-image vectors of all its partners
    in one batched matrix product.

    Returns:
        ``(similarity, crop index, cropped image index, boxes)`` per pair; crop 0 is the whole image.
    """
    count = len(rows)
    anchors = np.concatenate([rows, cols]).astype(np.int64)  # pair p seen from both sides: p and count + p
    partners = np.concatenate([cols, rows]).astype(np.int64)
    order = np.argsort(anchors, kind="stable")
    used, starts, sizes = np.unique(anchors[order], return_index=True, return_counts=True)
    value = np.full(2 * count, -np.inf, dtype=np.float32)
    index = np.zeros(2 * count, dtype=np.int64)
    whole = _whole_vectors(grids, spatial_dims)
    by_size = np.argsort(sizes, kind="stable")
    with torch.no_grad():
        for first in range(0, len(used), _ANCHORS_AT_ONCE):
            chosen = by_size[first : first + _ANCHORS_AT_ONCE]
            width = int(sizes[chosen].max())
            step = np.arange(width)[None, :]
            valid = step < sizes[chosen][:, None]
            directed = order[np.where(valid, starts[chosen][:, None] + step, starts[chosen][:, None])]
            crops = _crops(grids[used[chosen]], spatial_dims)  # (b, K, D)
            # the partners' vectors have mean 0, so the crops need no centring, only their centred norm
            norms = (crops.square().sum(-1) - crops.sum(-1).square() / crops.shape[-1]).clamp_min(1e-12).sqrt()
            scores = torch.bmm(crops, whole[torch.from_numpy(partners[directed])].transpose(1, 2))  # (b, K, width)
            best, crop = (scores / norms[:, :, None]).max(dim=1)
            value[directed[valid]] = best.numpy()[valid]
            index[directed[valid]] = crop.numpy()[valid]
    second = value[count:] > value[:count]  # the column's crop matches better than the row's
    similarity = np.where(second, value[count:], value[:count])
    crop_index = np.where(second, index[count:], index[:count])
    cropped = np.where(second, cols, rows)
    return similarity, crop_index, cropped, crop_boxes(spatial_dims, grids.shape[1])


def _whole_vectors(grids: np.ndarray, spatial_dims: int) -> torch.Tensor:
    """The whole-image vector (first crop, unit length, mean 0) of every grid: ``(N, D)``."""
    return _unit(_crops(grids, spatial_dims, whole_only=True))[:, 0]
