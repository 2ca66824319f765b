"""Reading headerless raw image files (JSRT chest radiographs) through MONAI's ``LoadImage``.

Some public datasets ship bare pixel dumps: the JSRT database stores each radiograph as
``JPCLN001.IMG``, 2048 x 2048 unsigned 16-bit big-endian words (12-bit values), 0.175 mm pixels,
no header at all. Nothing in such a file says how to read it, so the geometry is given to the
reader once (shape, dtype, spacing) and the reader refuses files whose size does not fit, so an
Analyze ``.img`` (which comes with a ``.hdr``) or a truncated download is never read as garbage.

MONAI has no raw reader; :class:`RawImageReader` implements its :class:`~monai.data.ImageReader`
interface, so ``LoadImage(reader=RawImageReader())`` or registering it with a ``LoadImage`` works
like any other format, with ``affine`` / ``spatial_shape`` in the metadata.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

__all__ = ["RawImageReader", "JSRT_SHAPE", "JSRT_DTYPE", "JSRT_SPACING"]

JSRT_SHAPE = (2048, 2048)
"""JSRT radiographs: 2048 rows x 2048 columns."""
JSRT_DTYPE = ">u2"
"""JSRT radiographs: unsigned 16-bit big-endian words holding 12-bit values (0..4095)."""
JSRT_SPACING = (0.175, 0.175)
"""JSRT radiographs: 0.175 mm pixels."""


class RawImageReader(ImageReader):
    """Read headerless raw pixel files of a known shape and data type (JSRT ``.IMG`` by default).

    The array is read in C order as ``shape`` (rows, columns[, ...]) and, like MONAI's ``PILReader``
    and ``ITKReader``, returned with the axes reversed (``reverse_indexing``) so the first axis runs
    along the image width; PNG/GIF masks read by ``PILReader`` then line up with it. Values are
    returned unchanged (native byte order). Note that JSRT grey levels are inverted w.r.t. the usual
    display (shown as-is, bone is dark): invert them in the transform preset if needed, e.g.
    ``ScaleIntensityRange(a_min=0, a_max=4095, b_min=1.0, b_max=0.0)``.

    Args:
        shape: array shape as stored, in C order (rows, columns) for 2D.
        dtype: NumPy data type of one pixel as stored, with its byte order (``">u2"``: big-endian
            unsigned 16-bit).
        spacing: pixel size in mm along the stored axes (rows, columns); sets the affine.
        suffixes: file suffixes accepted by :meth:`verify_suffix` (compared case-insensitively).
        offset: bytes to skip at the start of each file (a fixed-size header, if any).
        reverse_indexing: swap to (columns, rows) like MONAI's 2D readers (default), or keep C order.

    Raises:
        ValueError: on a shape, spacing or dtype that cannot describe a raw file.

    Example::

        from monai.transforms import LoadImage
        image = LoadImage(reader=RawImageReader(), image_only=True)("All247images/JPCLN001.IMG")
        image.shape  # (2048, 2048); image.pixdim -> (0.175, 0.175)
    """

    def __init__(
        self,
        shape: Sequence[int] = JSRT_SHAPE,
        dtype: str | np.dtype = JSRT_DTYPE,
        spacing: Sequence[float] | None = JSRT_SPACING,
        suffixes: Sequence[str] = ("img", "raw"),
        offset: int = 0,
        reverse_indexing: bool = True,
    ):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        if not self.shape or any(s < 1 for s in self.shape):
            raise ValueError(f"RawImageReader: shape must be positive integers, got {tuple(shape)}")
        try:
            self.dtype = np.dtype(dtype)
        except TypeError as err:
            raise ValueError(f"RawImageReader: dtype {dtype!r} is not a NumPy data type (e.g. '>u2')") from err
        if spacing is None:
            spacing = (1.0,) * len(self.shape)
        self.spacing = tuple(float(s) for s in spacing)
        if len(self.spacing) != len(self.shape) or any(s <= 0 for s in self.spacing):
            raise ValueError(
                f"RawImageReader: spacing needs {len(self.shape)} positive values (one per axis of shape "
                f"{self.shape}), got {tuple(spacing)}"
            )
        if offset < 0:
            raise ValueError(f"RawImageReader: offset must be >= 0 bytes, got {offset}")
        self.suffixes = tuple(s.lower().lstrip(".") for s in suffixes)
        self.offset = int(offset)
        self.reverse_indexing = reverse_indexing

    @property
    def expected_bytes(self) -> int:
        """File size this reader expects: ``offset`` + pixels x bytes per pixel."""
        return self.offset + int(np.prod(self.shape)) * self.dtype.itemsize

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        """True for files with one of ``suffixes`` whose size fits (when they exist) and without an Analyze ``.hdr``.

        Args:
            filename: a file name or a list of file names (all must fit).
        """
        for name in ensure_tuple(filename):
            path = Path(name)
            if path.suffix.lower().lstrip(".") not in self.suffixes:
                return False
            if path.with_suffix(".hdr").exists() or path.with_suffix(".HDR").exists():
                return False  # Analyze 7.5 image/header pair: not a headerless raw file
            if path.is_file() and path.stat().st_size != self.expected_bytes:
                return False
        return True

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> np.ndarray | list:
        """Read one file (an array) or several (a list of arrays, stacked as channels by :meth:`get_data`).

        Args:
            data: a file name or a list of file names.
            kwargs: ignored (kept for the ``ImageReader`` interface).

        Raises:
            ValueError: when a file's size is not ``offset + prod(shape) * itemsize`` bytes.
        """
        arrays = []
        for name in ensure_tuple(data):
            size = os.path.getsize(name)
            if size != self.expected_bytes:
                raise ValueError(
                    f"{name}: {size} bytes, but a raw {self.dtype.str} image of shape {self.shape} "
                    f"(offset {self.offset}) has {self.expected_bytes}; pass the right shape/dtype to RawImageReader"
                )
            raw = np.fromfile(name, dtype=self.dtype, offset=self.offset).reshape(self.shape)
            arrays.append(raw.astype(self.dtype.newbyteorder("="), copy=False))
        return arrays if len(arrays) > 1 else arrays[0]

    def get_data(self, img: np.ndarray | Sequence[np.ndarray]) -> tuple[np.ndarray, dict]:
        """The voxels (several files stacked on a new first, channel axis) and their metadata.

        Args:
            img: what :meth:`read` returned.

        Returns:
            ``(array, meta)`` with ``affine`` / ``original_affine`` (diagonal spacing, origin 0),
            ``spatial_shape``, ``space`` and ``original_channel_dim``.
        """
        arrays = [img] if isinstance(img, np.ndarray) else list(img)
        spacing = self.spacing
        if self.reverse_indexing:
            arrays = [np.transpose(a) for a in arrays]
            spacing = spacing[::-1]
        # MONAI's 4x4 convention for 2D too (a PNG read by PILReader gets eye(4)): a 3x3 affine would
        # not collate with other 2D images in one batch
        affine = np.eye(max(len(spacing), 3) + 1)
        affine[range(len(spacing)), range(len(spacing))] = spacing
        meta: dict[str, Any] = {
            MetaKeys.AFFINE: affine,
            MetaKeys.ORIGINAL_AFFINE: affine.copy(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(arrays[0].shape),
            MetaKeys.SPACE: SpaceKeys.RAS,
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
        }
        if len(arrays) == 1:
            return arrays[0], meta
        meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
        return np.stack(arrays, axis=0), meta
