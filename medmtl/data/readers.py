"""Reading any supported file into arrays with geometry, through MONAI's ``LoadImage``.

MONAI's ``LoadImage`` picks a reader by file suffix, but out of the box it sends TIFF, GIF and any
unknown suffix to ``PydicomReader`` (which fails with pydicom's own error), reads DICOM series
without checking them, and, when given explicit readers, buries a reader's error in a
``RuntimeError`` holding tracebacks. medmtl users get instead:

* :func:`reader_for`: one MONAI reader per format: NIfTI -> ``NibabelReader``, PNG/JPEG/BMP/GIF/TIFF
  -> ``PILReader`` (GIF, TIFF added), ``.npy``/``.npz`` -> ``NumpyReader``, DICOM file or series folder ->
  :class:`MedmtlDicomReader` (checked series, multi-frame, colour, MONOCHROME1; see
  :mod:`medmtl.data.dicom`).
* :class:`MedmtlLoadImage` / :class:`MedmtlLoadImaged` (or :func:`make_loader`): ``LoadImage`` /
  ``LoadImaged`` that use :func:`reader_for` for every file (per key, so an image may be a DICOM
  folder and its mask a NIfTI) and raise a :class:`~medmtl.data.problems.DataError` naming the file,
  the problem and the fix.

Layout is MONAI's for every format, for images and masks alike: 2D arrays come as ``(width,
height)`` (PIL's rows/columns swapped, as ``PILReader`` does), DICOM as ``(columns, rows, slices)``,
colour channels last (``original_channel_dim`` = -1, so ``EnsureChannelFirst`` moves them), NIfTI
and ``.npy`` as stored. The affine (RAS) is in the MetaTensor's ``meta["affine"]``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Hashable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader, NibabelReader, NumpyReader, PILReader, PydicomReader
from monai.transforms import LoadImage, LoadImaged

from medmtl.data.dicom import DicomError, DicomSeries, decode_series, is_dicom_file, scan_dicom
from medmtl.data.problems import DataError, Problem
from medmtl.data.raw_reader import RawImageReader

__all__ = [
    "ImageReadError",
    "MedmtlDicomReader",
    "MedmtlPILReader",
    "MedmtlReader",
    "MedmtlLoadImage",
    "MedmtlLoadImaged",
    "SUPPORTED_SUFFIXES",
    "load_array",
    "load_image",
    "make_loader",
    "reader_for",
]

SUPPORTED_SUFFIXES = {
    "nifti": (".nii", ".nii.gz"),
    "pil": (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff"),
    "numpy": (".npy", ".npz"),
    "raw": (".img", ".raw"),
    "dicom": (".dcm", ".dicom", ".ima", "<folder of one DICOM series>", "<file with the DICM preamble>"),
}


class ImageReadError(DataError):
    """An image file that cannot be read: missing, of an unsupported format, or corrupt."""

    def __init__(self, problems, context: str = "the image"):
        super().__init__(problems, context)
        self.context = context

    def __reduce__(self):  # picklable across process pools
        return type(self), (self.problems, self.context)


def _names(data: Sequence[os.PathLike | str] | os.PathLike | str) -> list[str]:
    if isinstance(data, str | os.PathLike):
        return [os.fspath(data)]
    return [os.fspath(d) for d in data]


def _suffix(path: str) -> str:
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def _read_error(check: str, path: str, message: str, fix: str) -> ImageReadError:
    return ImageReadError([Problem(check, message, fix, path=path)], context=path)


class MedmtlDicomReader(ImageReader):
    """MONAI ``ImageReader`` for DICOM files and series folders, checked first (see :mod:`medmtl.data.dicom`).

    Unlike MONAI's ``PydicomReader`` it sorts a series by position along the slice normal (not by
    ``InstanceNumber``), refuses folders mixing series and series with missing, duplicate or unevenly
    spaced slices, puts the frames of a multi-frame file on spatial axis 2 with their spacing, turns
    palette colour and YBR into RGB (channels last), inverts MONOCHROME1, applies the rescale (also
    from enhanced functional groups), and keeps no patient data in the metadata.

    Args:
        seg: what to do with a DICOM-SEG: ``"error"`` (default: a ``dicom_seg`` problem, for images)
            or ``"label"`` (read it as a mask with MONAI's ``PydicomReader``: one channel per segment,
            channels last).

    Raises:
        ValueError: for an unknown ``seg``.

    Example::

        loader = LoadImage(image_only=True)
        image = loader("knee_dicom/", reader=MedmtlDicomReader())  # (512, 512, 80), 0.3125x0.3125x1.5 mm
    """

    def __init__(self, seg: str = "error"):
        super().__init__()
        if seg not in ("error", "label"):
            raise ValueError(f"MedmtlDicomReader: seg must be 'error' or 'label', got {seg!r}")
        self.seg = seg

    def verify_suffix(self, filename: Sequence[os.PathLike | str] | os.PathLike | str) -> bool:
        """True when every name is a folder or a DICOM file (by suffix or the ``DICM`` preamble)."""
        return all(
            Path(n).is_dir() or is_dicom_file(n) or _suffix(n) in (".dcm", ".dicom", ".ima") for n in _names(filename)
        )

    def read(self, data: Sequence[os.PathLike | str] | os.PathLike | str, **kwargs) -> list[Any]:
        """Scan and check every file or folder (headers only).

        Raises:
            DicomError: every problem of the input, naming the file and the fix.
        """
        out: list[Any] = []
        for name in _names(data):
            try:
                out.append(scan_dicom(name))
            except DicomError as err:
                if self.seg != "label" or err.checks != {"dicom_seg"}:
                    raise
                reader = PydicomReader()
                out.append((reader, reader.read(name)))
        return out

    def get_data(self, img: list[Any]) -> tuple[np.ndarray, dict]:
        """Decode the pixels: one array (channels stacked first when several inputs were given) and its meta."""
        decoded = []
        for item in img:
            if isinstance(item, DicomSeries):
                decoded.append(decode_series(item))
            else:
                reader, obj = item
                decoded.append(reader.get_data(obj))
        if len(decoded) == 1:
            return decoded[0]
        shapes = {arr.shape for arr, _ in decoded}
        if len(shapes) > 1:
            raise DicomError(
                [
                    Problem(
                        "inconsistent_slices",
                        f"the {len(decoded)} inputs stacked as channels have different shapes {sorted(shapes)}",
                        "give inputs of one shape, or load them one by one",
                    )
                ],
                context="the DICOM inputs",
            )
        meta = dict(decoded[0][1])
        meta["original_channel_dim"] = 0
        return np.stack([arr for arr, _ in decoded]), meta


class MedmtlPILReader(PILReader):
    """MONAI's ``PILReader`` that also claims ``.gif`` and ``.tif``/``.tiff`` (2D, first page), not sent to pydicom.

    A palette image (GIF, "P" mode PNG) comes as its palette indices, which is what a mask means.
    """

    def verify_suffix(self, filename: Sequence[os.PathLike | str] | os.PathLike | str) -> bool:
        return all(_suffix(n) in SUPPORTED_SUFFIXES["pil"] for n in _names(filename))


def reader_for(path: str | os.PathLike | Sequence[str | os.PathLike]) -> ImageReader:
    """The MONAI reader for ``path``'s format.

    Args:
        path: a file, a DICOM series folder, or a list of files of one format (stacked as channels).

    Returns:
        ``NibabelReader`` (``.nii``/``.nii.gz``), :class:`MedmtlPILReader` (PNG/JPEG/BMP/GIF/TIFF),
        ``NumpyReader`` (``.npy``/``.npz``), :class:`~medmtl.data.raw_reader.RawImageReader`
        (headerless ``.img``/``.raw``, JSRT's 2048x2048 big-endian by default; Analyze ``.img`` with a
        ``.hdr`` goes to nibabel) or :class:`MedmtlDicomReader` (``.dcm``, a folder, or a file with
        the ``DICM`` preamble).

    Raises:
        ImageReadError: ``missing_file``, or ``unsupported_format`` listing the supported suffixes.
    """
    kinds = set()
    for name in _names(path):
        if not os.path.exists(name):
            raise _read_error("missing_file", name, "does not exist", "check the path (and the data root)")
        suffix = _suffix(name)
        kind = next((k for k, sufs in SUPPORTED_SUFFIXES.items() if suffix in sufs), None)
        if kind is None and (Path(name).is_dir() or is_dicom_file(name)):
            kind = "dicom"
        if kind is None:
            supported = ", ".join(s for sufs in SUPPORTED_SUFFIXES.values() for s in sufs)
            raise _read_error(
                "unsupported_format",
                name,
                f"format {suffix or '(no suffix)'!r} is not supported",
                f"convert it to one of: {supported}",
            )
        kinds.add(kind)
    if len(kinds) > 1:
        raise _read_error(
            "unsupported_format",
            _names(path)[0],
            f"files stacked as channels mix formats {sorted(kinds)}",
            "give channels of one format",
        )
    kind = kinds.pop()
    if kind == "nifti":
        return NibabelReader()
    if kind == "pil":
        return MedmtlPILReader()
    if kind == "numpy":
        return NumpyReader()
    if kind == "raw":
        # Analyze .img/.hdr pairs are NIfTI's ancestors; headerless .img are JSRT-style raw files
        names = _names(path)
        if all(os.path.exists(os.path.splitext(n)[0] + ".hdr") for n in names):
            return NibabelReader()
        return RawImageReader()
    return MedmtlDicomReader()


class MedmtlReader(ImageReader):
    """Dispatching ``ImageReader``: :func:`reader_for` per call, every failure a :class:`DataError` naming the file.

    Pass it at call time (``LoadImage()(path, reader=MedmtlReader())``) so MONAI raises its errors
    as they are; :class:`MedmtlLoadImage` and :class:`MedmtlLoadImaged` do that for you.

    Args:
        dicom_seg: ``seg`` argument of :class:`MedmtlDicomReader` (``"error"`` or ``"label"``).
    """

    def __init__(self, dicom_seg: str = "error"):
        super().__init__()
        self.dicom_seg = dicom_seg

    def verify_suffix(self, filename: Sequence[os.PathLike | str] | os.PathLike | str) -> bool:
        try:
            reader_for(filename)
        except DataError:
            return False
        return True

    def read(self, data: Sequence[os.PathLike | str] | os.PathLike | str, **kwargs) -> tuple[ImageReader, Any, str]:
        reader = reader_for(data)
        if isinstance(reader, MedmtlDicomReader):
            reader = MedmtlDicomReader(seg=self.dicom_seg)
        name = _names(data)[0]
        return reader, self._guard(name, reader.read, data, **kwargs), name

    def get_data(self, img: tuple[ImageReader, Any, str]) -> tuple[np.ndarray, dict]:
        reader, obj, name = img
        return self._guard(name, reader.get_data, obj)

    @staticmethod
    def _guard(name: str, func, *args, **kwargs):
        try:
            return func(*args, **kwargs)
        except DataError:
            raise
        except Exception as err:  # noqa: BLE001 - readers raise many types for corrupt files
            raise _read_error(
                "unreadable_file",
                name,
                f"could not be read as {_suffix(name) or 'an image'} ({type(err).__name__}: {str(err)[:200]})",
                "the file is probably truncated or corrupt: export or download it again",
            ) from None


@contextlib.contextmanager
def _quiet_default_readers() -> Iterator[None]:
    """Silence MONAI 1.6's warning, on every ``LoadImage()``, that the GPU DICOM decoder (nvImageCodec) is absent.

    ``LoadImage`` always builds its default readers, ``NvImgCodecPydicomReader`` included; medmtl never
    uses them (it passes its reader at call time), so the warning is noise on CPU machines.
    """
    plugin_logger = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    drop = logging.Filter("nothing")  # a filter matching no logger name drops every record
    plugin_logger.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")
            yield
    finally:
        plugin_logger.removeFilter(drop)


class MedmtlLoadImage(LoadImage):
    """``LoadImage`` that reads every format with :func:`reader_for` and raises clear :class:`DataError` s.

    Takes ``LoadImage``'s arguments (``image_only``, ``dtype``, ``ensure_channel_first``, ...) except
    ``reader``; ``dicom_seg`` is passed to :class:`MedmtlDicomReader`.

    Example::

        image = MedmtlLoadImage(ensure_channel_first=True)("brain.nii.gz")  # (1, 181, 217, 181), affine in .meta
    """

    def __init__(self, *args, dicom_seg: str = "error", **kwargs):
        with _quiet_default_readers():
            super().__init__(None, *args, **kwargs)
        self._dispatch = MedmtlReader(dicom_seg=dicom_seg)

    def __call__(self, filename, reader: ImageReader | None = None):
        return super().__call__(filename, reader if reader is not None else self._dispatch)


class MedmtlLoadImaged(LoadImaged):
    """``LoadImaged`` over :class:`MedmtlLoadImage`: each key's file gets the reader of its own format.

    Takes ``LoadImaged``'s arguments (``keys``, ``image_only``, ``ensure_channel_first``,
    ``allow_missing_keys``, ...) except ``reader``.

    Example::

        load = MedmtlLoadImaged(keys=["image", "lesion"], ensure_channel_first=True)
        sample = load({"image": "case1/dicom/", "lesion": "case1/lesion.nii.gz"})
    """

    def __init__(self, keys, *args, dicom_seg: str = "error", **kwargs):
        with _quiet_default_readers():
            super().__init__(keys, None, *args, **kwargs)
        self._dispatch = MedmtlReader(dicom_seg=dicom_seg)

    def __call__(self, data, reader: ImageReader | None = None):
        return super().__call__(data, reader if reader is not None else self._dispatch)


def make_loader(keys: Hashable | Sequence[Hashable] | None = None, **kwargs) -> MedmtlLoadImage | MedmtlLoadImaged:
    """A preconfigured loader: :class:`MedmtlLoadImage` without ``keys``, :class:`MedmtlLoadImaged` with them.

    Args:
        keys: dictionary keys to load; ``None`` for a loader of plain paths.
        kwargs: ``LoadImage(d)`` arguments (``image_only`` defaults to True), and ``dicom_seg``.

    Returns:
        The loader; usable from a bundle config as ``{"_target_": "medmtl.data.readers.make_loader", "keys": [...]}``.
    """
    kwargs.setdefault("image_only", True)
    if keys is None:
        return MedmtlLoadImage(**kwargs)
    return MedmtlLoadImaged(keys, **kwargs)


@lru_cache(maxsize=1)
def _loader() -> MedmtlLoadImage:
    return MedmtlLoadImage(image_only=True, ensure_channel_first=False)


def load_image(path: str | os.PathLike):
    """A MetaTensor with the file's voxels and geometry (affine, spacing) in ``.meta``.

    Raises:
        DataError: the file is missing, of an unsupported format, or unreadable (named in the message).
    """
    return _loader()(path)


def load_array(path: str | os.PathLike) -> np.ndarray:
    """The file's voxels as a NumPy array (no geometry), in the same layout as :func:`load_image`."""
    return np.asarray(load_image(path))
