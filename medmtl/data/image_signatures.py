"""Small content signatures of images, cached by file content: what the duplicate search compares.

Why: finding near-duplicates compares every image with every other one, which is only fast on a
few bytes per image. Each image is read once with medmtl's readers (the arrays training sees),
averaged onto a small fixed grid (:data:`GRIDS`: 32x32 for 2D, 16^3 for 3D, whatever the size or
aspect ratio) and z-scored (so brightness and contrast do not count). From that grid come a 64-bit
perceptual hash (the signs of the lowest 8x8, or 4x4x4, DCT coefficients against their median:
pHash, robust to resizing, re-encoding and small crops) and the grid itself, kept as float16, for
the pixel-level confirmation. Colour or other channels are averaged; of several inputs per case
(MRNet's views) the caller passes one, and a list of files stacked as channels counts as one image.

The signatures are cached per file content (sha256 of the file's bytes, ``hashlib.file_digest``)
in ``$MEDMTL_CACHE_DIR`` (default ``$XDG_CACHE_HOME/medmtl``, else ``~/.cache/medmtl``), one
``.npz`` per dataset folder and grid (nothing pickled), so a second search over unchanged data
only hashes the files. A changed file has another digest and is read again; a
:data:`SIGNATURE_VERSION` change invalidates every entry.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import sys
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.fft import dctn

from medmtl.atomic_io import atomic_write_with

__all__ = [
    "CACHE_ENV",
    "GRIDS",
    "SIGNATURE_VERSION",
    "Signature",
    "cache_dir",
    "content_digest",
    "file_sha256",
    "image_signatures",
    "signature_of_array",
    "to_grid",
]

logger = logging.getLogger(__name__)

SIGNATURE_VERSION = 1
"""Bumped whenever the grid, the hash or the reading changes: older cache entries are then ignored."""
CACHE_ENV = "MEDMTL_CACHE_DIR"
GRIDS = {2: (32, 32), 3: (16, 16, 16)}
"""The grid each image is averaged onto, per spatial dimension."""
_LOW = {2: 8, 3: 4}
"""Lowest DCT frequencies per axis that make the 64-bit hash (8^2 = 4^3 = 64)."""
_THREADS_FROM = 32
"""Images to read above which a few threads read them (decoding releases the GIL)."""


@dataclass(frozen=True)
class Signature:
    """One image's signature.

    Attributes:
        digest: sha256 of the file bytes (of every file, for a folder or a list of files).
        pixels: sha256 of the array read (shape and float32 values): identical pixels in different files.
        phash: the 64-bit perceptual hash.
        grid: the z-scored image on :data:`GRIDS` (float16).
    """

    digest: str
    pixels: str
    phash: int
    grid: np.ndarray


def cache_dir() -> Path:
    """medmtl's cache folder: ``$MEDMTL_CACHE_DIR``, else ``$XDG_CACHE_HOME/medmtl``, else ``~/.cache/medmtl``."""
    given = os.environ.get(CACHE_ENV, "").strip()
    if given:
        return Path(given).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "medmtl"


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of one file's bytes (hex)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def content_digest(
    path: str | os.PathLike | Sequence[str | os.PathLike], file_digest: Callable[[Path], str] = file_sha256
) -> str:
    """sha256 of a file's bytes; of the (name, digest) list of a folder's files or of a list of files.

    Args:
        path: a file, a folder or a list of them.
        file_digest: the digest of one file (:class:`~medmtl.data.file_digests.FileDigests` reuses
            those of unchanged files).
    """
    if not isinstance(path, str | os.PathLike):
        return _combine([content_digest(p, file_digest) for p in path])
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return _combine([f"{p.relative_to(path).as_posix()}:{file_digest(p)}" for p in files])
    return file_digest(path)


def _combine(parts: list[str]) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def to_grid(array: np.ndarray, spatial_dims: int, grid: Sequence[int] | None = None) -> np.ndarray:
    """``array`` averaged onto ``grid`` (default :data:`GRIDS`), channels averaged first; float32.

    Channels: extra axes at the end (PIL's colour last) or, when they are smaller, at the start
    (channel-first arrays) are averaged away.
    """
    data = np.nan_to_num(np.asarray(array, dtype=np.float32))
    extra = data.ndim - spatial_dims
    if extra < 0:
        raise ValueError(f"a {spatial_dims}D image needs {spatial_dims} axes, got shape {data.shape}")
    if extra:
        lead, trail = data.shape[:extra], data.shape[-extra:]
        axes = tuple(range(extra)) if np.prod(lead) < np.prod(trail) else tuple(range(spatial_dims, data.ndim))
        data = data.mean(axis=axes)
    pool = F.adaptive_avg_pool2d if spatial_dims == 2 else F.adaptive_avg_pool3d
    size = tuple(grid) if grid is not None else GRIDS[spatial_dims]
    return pool(torch.from_numpy(np.ascontiguousarray(data))[None, None], size)[0, 0].numpy()


def signature_of_array(array: np.ndarray, spatial_dims: int, digest: str = "") -> Signature | None:
    """The signature of an image array; ``None`` for a constant image (nothing to compare)."""
    data = np.asarray(array, dtype=np.float32)
    grid = to_grid(data, spatial_dims)
    std = float(grid.std())
    if not np.isfinite(std) or std <= 1e-6 * max(1.0, float(np.abs(grid).max())):
        return None
    grid = (grid - grid.mean()) / std
    pixels = hashlib.sha256(repr(data.shape).encode() + np.ascontiguousarray(data).tobytes()).hexdigest()
    return Signature(digest, pixels, _phash(grid, spatial_dims), grid.astype(np.float16))


def _phash(grid: np.ndarray, spatial_dims: int) -> int:
    low = _LOW[spatial_dims]
    coefficients = dctn(grid.astype(np.float64), norm="ortho")[(slice(0, low),) * spatial_dims].ravel()
    bits = coefficients > np.median(coefficients[1:])  # the DC term (first) is left out of the median
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def image_signatures(
    images: Sequence[str | Sequence[str]],
    spatial_dims: int,
    cache: bool = True,
    cache_name: str | os.PathLike = "",
    progress: bool | None = False,
) -> list[Signature | None]:
    """The signature of every image, from the cache where the file content is unchanged.

    Args:
        images: one path per image (a file, a DICOM folder, or a list of files stacked as channels).
        spatial_dims: 2 or 3.
        cache: read and update the cache (``False``: compute everything, write nothing).
        cache_name: what names the cache file (the dataset root): one file per dataset keeps loads small.
        progress: a progress bar on stderr while reading (``None``: when stderr is a terminal).

    Returns:
        One signature per image, ``None`` where the image cannot be read (validation reports those)
        or is constant.
    """
    from tqdm import tqdm

    digests: list[str | None] = []
    for image in images:
        try:
            digests.append(content_digest(image))
        except OSError as err:
            logger.debug("no signature for %s: %s", image, err)
            digests.append(None)
    path = _cache_file(cache_name, spatial_dims) if cache else None
    known = _load(path) if path is not None else {}
    todo = list({d: i for i, d in enumerate(digests) if d is not None and d not in known}.values())
    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=len(todo), desc="image signatures", unit="image", file=sys.stderr, disable=not show, leave=False)

    def work(index: int) -> tuple[str, Signature | None | _Unreadable]:
        signature = _read_signature(images[index], spatial_dims, digests[index] or "")
        bar.update()
        return digests[index] or "", signature

    try:
        if len(todo) >= _THREADS_FROM:
            with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
                fresh = dict(pool.map(work, todo))
        else:
            fresh = dict(map(work, todo))
    finally:
        bar.close()
    readable = {d: s for d, s in fresh.items() if not isinstance(s, _Unreadable)}
    if path is not None and readable:
        _store(path, {**known, **readable}, keep={d for d in digests if d is not None})
    known.update(readable)
    return [known.get(d) if d is not None else None for d in digests]


class _Unreadable:
    """An image that could not be read this time: not cached (the file may be fixed, the mount come back)."""


def _read_signature(image: str | Sequence[str], spatial_dims: int, digest: str) -> Signature | None | _Unreadable:
    from medmtl.data.readers import load_array

    try:
        return signature_of_array(load_array(image), spatial_dims, digest)
    except Exception as err:  # noqa: BLE001 - an unreadable image (or a wrong rank) is validation's finding
        logger.debug("no signature for %s: %s", image, err)
        return _Unreadable()


# ---------------------------------------------------------------------------------------------
# the cache: {digest: signature or None (constant / unreadable content)} in one .npz per dataset


def _cache_file(name: str | os.PathLike, spatial_dims: int) -> Path:
    key = hashlib.sha256(str(name).encode()).hexdigest()[:16]
    return cache_dir() / "signatures" / f"v{SIGNATURE_VERSION}-{spatial_dims}d-{key}.npz"


def _load(path: Path) -> dict[str, Signature | None]:
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            digests = data["digest"].astype(str)
            pixels = data["pixels"].astype(str)
            hashes, grids, valid = data["phash"], data["grid"], data["valid"]
    except (
        OSError,
        ValueError,
        KeyError,
        EOFError,
        zipfile.BadZipFile,
    ) as err:  # a damaged cache is recomputed, never trusted
        logger.warning("ignoring the unreadable signature cache %s (%s); it is rebuilt", path, err)
        return {}
    return {
        d: Signature(d, p, int(h), g) if v else None
        for d, p, h, g, v in zip(digests, pixels, hashes, grids, valid, strict=True)
    }


def _store(path: Path, entries: dict[str, Signature | None], keep: set[str]) -> None:
    """Write the cache atomically; entries of files no longer asked for go once they are the majority."""
    if len(entries) > 2 * len(keep) + 100:
        entries = {d: s for d, s in entries.items() if d in keep}
    digests = sorted(entries)
    shape = next((s.grid.shape for s in entries.values() if s is not None), (0,))
    empty = np.zeros(shape, dtype=np.float16)
    arrays = {
        "digest": np.array(digests, dtype="S64"),
        "pixels": np.array([entries[d].pixels if entries[d] else "" for d in digests], dtype="S64"),
        "phash": np.array([entries[d].phash if entries[d] else 0 for d in digests], dtype=np.uint64),
        "grid": np.stack([entries[d].grid if entries[d] is not None else empty for d in digests]).astype(np.float16),
        "valid": np.array([entries[d] is not None for d in digests], dtype=bool),
    }
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    try:
        atomic_write_with(path, lambda handle: handle.write(buffer.getvalue()))
    except OSError as err:  # a read-only home must not stop a validation or a run
        logger.warning("cannot write the signature cache %s (%s); set %s to a writable folder", path, err, CACHE_ENV)
