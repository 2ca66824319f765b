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
* Before any voxel is read, every file is checked (:mod:`medmtl.data.header_guard`): a FIFO, device or
  unreadable file is refused without being opened, and the size its header claims must fit in the file
  and under a cap (``max_image_bytes``, default 2 GiB, or the ``MEDMTL_MAX_IMAGE_BYTES`` environment
  variable), so a damaged or hostile header never makes training allocate gigabytes.

Layout is MONAI's for every format, for images and masks alike: 2D arrays come as ``(width,
height)`` (PIL's rows/columns swapped, as ``PILReader`` does), DICOM as ``(columns, rows, slices)``,
colour channels last (``original_channel_dim`` = -1, so ``EnsureChannelFirst`` moves them), NIfTI
and ``.npy`` as stored. The affine (RAS) is in the MetaTensor's ``meta["affine"]``.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import os
import warnings
import zlib
from collections.abc import Hashable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader, NibabelReader, NumpyReader, PILReader, PydicomReader
from monai.transforms import LoadImage, LoadImaged

from medmtl.data.dicom import DicomError, DicomSeries, decode_series, is_dicom_file, scan_dicom
from medmtl.data.header_guard import (
    DEFLATE_MAX_RATIO,
    PIL_HEAD_BYTES,
    file_kind_problem,
    header_problems,
    max_image_bytes,
    pil_header_problems,
    pil_size_limit_off,
)
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
    "diagnose_unreadable",
    "load_array",
    "load_image",
    "make_loader",
    "open_checked_pil",
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


# ---------------------------------------------------------------------------------------------
# why a file cannot be read: its first bytes say more than the reader's exception

_TRUNCATED_FIX = "the file is incomplete (an interrupted copy, download or export): copy or export it again"
_EMPTY_FIX = "copy or export the file again (an interrupted copy or a full disk leaves empty files)"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"


_MAGIC = (
    (b"\x1f\x8b", "gzip data (a .nii.gz?)"),
    (_PNG_SIGNATURE, "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"PK\x03\x04", "a zip archive (an .npz, or a download to unpack?)"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"GIF8", "a GIF image"),
    (b"BM", "a BMP image"),
)


def _looks_like(head: bytes) -> str:
    """``": it holds gzip data (a .nii.gz?)"`` when the first bytes are a known format's, else ``""``."""
    found = next((what for magic, what in _MAGIC if head.startswith(magic)), None)
    if found is None and head[128:132] == b"DICM":
        found = "a DICOM file"
    if found is None and head.lstrip()[:1] in (b"<", b"{"):
        found = "text (an HTML/XML/JSON page: an error page saved instead of the file?)"
    if found is None and len(head) >= 348 and int.from_bytes(head[:4], "little") in (348, 540):
        found = "an uncompressed NIfTI image (a .nii?)"
    return f": it holds {found}" if found else ""


def _wrong_format_fix(suffix: str) -> str:
    return f"the file is not in the format its name says: export it again as {suffix} (or give it its real suffix)"


def _reader_reason(err: BaseException, path: str) -> str:
    """The reader's own words, one line, capped, the file's path shortened to its name (the problem names
    it already); MONAI's ``NumpyReader`` hides the real error in ``__cause__`` (it turns every
    ``ValueError`` into advice to allow pickle loading, which would be unsafe here)."""
    cause = err.__cause__ if isinstance(err.__cause__, Exception) else err
    text = " ".join(str(cause).replace(path, Path(path).name).split())
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


def _nifti_header_problem(head: bytes, size: int, suffix: str) -> tuple[str, str] | None:
    """A NIfTI-1/2 header that is not one, or that describes more voxel bytes than the file holds."""
    import nibabel as nib

    if len(head) < 4:
        return "not a NIfTI file: too short for a header", _wrong_format_fix(suffix)
    sizes = {int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")}
    header_class = nib.Nifti1Header if 348 in sizes else nib.Nifti2Header if 540 in sizes else None
    if header_class is None:
        return (
            f"not a NIfTI file: it does not start with a NIfTI-1/2 header (first field 348 or 540){_looks_like(head)}",
            _wrong_format_fix(suffix),
        )
    try:
        header = header_class.from_fileobj(io.BytesIO(head), check=False)
        shape = tuple(int(n) for n in header.get_data_shape())
        needed = int(header.get_data_offset()) + int(np.prod(shape)) * header.get_data_dtype().itemsize
    except Exception:  # noqa: BLE001 - a garbled header is reported as such
        return "the NIfTI header is corrupt (its fields cannot be decoded)", _TRUNCATED_FIX
    if size < needed:
        return (
            f"the image data ends early: the header describes {shape} voxels of {header.get_data_dtype()} "
            f"({needed} bytes with the header) but the file holds {size}: it is truncated",
            _TRUNCATED_FIX,
        )
    return None


def _sniff_gzip(path: Path, head: bytes) -> tuple[str, str] | None:
    if head[:2] != b"\x1f\x8b":
        return f"not gzip data, although the name ends in .gz{_looks_like(head)}", _wrong_format_fix(_suffix(str(path)))
    content, size = b"", 0
    bound = DEFLATE_MAX_RATIO * path.stat().st_size + 540  # a stream inflating beyond this is corrupt anyway
    try:
        with gzip.open(path, "rb") as handle:
            while size <= bound and (chunk := handle.read(1 << 20)):
                content += chunk[: 540 - len(content)]
                size += len(chunk)
    except EOFError:
        return "the gzip data ends early: the file is truncated", _TRUNCATED_FIX
    except (OSError, zlib.error) as err:
        return f"the gzip data is corrupt ({type(err).__name__})", _TRUNCATED_FIX
    if _suffix(str(path)) == ".nii.gz":
        return _nifti_header_problem(content, size, ".nii.gz")
    return None


def _sniff_png(path: Path, head: bytes) -> tuple[str, str] | None:
    if not head.startswith(_PNG_SIGNATURE):
        return f"not a PNG file, although the name ends in .png{_looks_like(head)}", _wrong_format_fix(".png")
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - 12))
        if _PNG_END not in handle.read():
            return "the PNG data ends early (no end chunk): the file is truncated", _TRUNCATED_FIX
    return None


def _sniff_npy(path: Path, head: bytes) -> tuple[str, str] | None:
    if not head.startswith(b"\x93NUMPY"):
        return f"not a NumPy .npy file (no \\x93NUMPY header){_looks_like(head)}", _wrong_format_fix(".npy")
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(handle)
            offset = handle.tell()
    except Exception:  # noqa: BLE001 - a garbled header is reported as such
        return "the .npy header is corrupt", _TRUNCATED_FIX
    if dtype.hasobject:
        return (
            f"holds Python objects (dtype object, shape {tuple(shape)}), not a numeric array; medmtl does not "
            "unpickle files (it could run code)",
            "save one numeric array per file, e.g. np.save(path, np.stack(slices).astype(np.float32)); "
            "pad or resample slices of different sizes first",
        )
    needed = offset + int(np.prod(shape)) * dtype.itemsize
    size = path.stat().st_size
    if size < needed:
        return (
            f"the array data ends early: the header describes {tuple(shape)} {dtype} ({needed} bytes) but the "
            f"file holds {size}: it is truncated",
            _TRUNCATED_FIX,
        )
    return None


_SNIFFERS = {".nii.gz": _sniff_gzip, ".gz": _sniff_gzip, ".png": _sniff_png, ".npy": _sniff_npy}


def diagnose_unreadable(path: str | os.PathLike, err: BaseException) -> tuple[str, str]:
    """Why a reader failed on ``path``, and the fix: ``(message, fix)`` for a :class:`Problem`.

    Readers' exceptions rarely say what happened to the file (nibabel: "Cannot work out file type",
    MONAI's ``NumpyReader``: "allow pickle loading" for any damage), so the file's first bytes are
    checked against what its suffix promises: empty, another format, cut short (gzip stream, NIfTI or
    ``.npy`` data shorter than the header says, a PNG without its end chunk), or a pickled ``.npy``.
    The reader's own words follow in brackets.
    """
    file = Path(path)
    reason = _reader_reason(err, str(file))
    suffix = _suffix(str(file))
    generic = (
        f"could not be read as {suffix or 'an image'} ({reason})",
        "the file is probably truncated or corrupt: export or download it again",
    )
    try:
        size = file.stat().st_size
        if size == 0:
            return f"the file is empty (0 bytes; {reason})", _EMPTY_FIX
        with open(file, "rb") as handle:
            head = handle.read(540)
        sniff = _SNIFFERS.get(suffix)
        found = sniff(file, head) if sniff else None
        if found is None and suffix == ".nii":
            found = _nifti_header_problem(head, size, suffix)
    except Exception:  # noqa: BLE001 - diagnosing must never hide the reader's own error
        return generic
    if found is None:
        return generic
    message, fix = found
    return f"{message} ({size} bytes; {reason})", fix


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
        max_image_bytes: cap on the pixel bytes the headers claim (``None``: ``MEDMTL_MAX_IMAGE_BYTES`` or 2 GiB).

    Raises:
        ValueError: for an unknown ``seg``.

    Example::

        loader = LoadImage(image_only=True)
        image = loader("knee_dicom/", reader=MedmtlDicomReader())  # (512, 512, 80), 0.3125x0.3125x1.5 mm
    """

    def __init__(self, seg: str = "error", max_image_bytes: int | None = None):
        super().__init__()
        if seg not in ("error", "label"):
            raise ValueError(f"MedmtlDicomReader: seg must be 'error' or 'label', got {seg!r}")
        self.seg = seg
        self.max_image_bytes = max_image_bytes

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
                out.append(scan_dicom(name, max_image_bytes=self.max_image_bytes))
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

    A palette image (GIF, "P" mode PNG) comes as its palette indices, which is what a mask means. The size
    each header claims is checked against the file and ``max_image_bytes`` before anything is decoded
    (:func:`~medmtl.data.header_guard.pil_header_problems`), in place of PIL's own pixel-count limit. Each
    file is opened once: its bytes give both the checks and, decoded lazily by PIL, the pixels
    (:func:`open_checked_pil`).

    Args:
        max_image_bytes: cap on one decoded image (``None``: ``MEDMTL_MAX_IMAGE_BYTES`` or 2 GiB).
        kwargs: ``PILReader``'s arguments.
    """

    def __init__(self, *args, max_image_bytes: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_image_bytes = max_image_bytes

    def verify_suffix(self, filename: Sequence[os.PathLike | str] | os.PathLike | str) -> bool:
        return all(_suffix(n) in SUPPORTED_SUFFIXES["pil"] for n in _names(filename))

    def read(self, data: Sequence[os.PathLike | str] | os.PathLike | str | np.ndarray, **kwargs):
        """PIL images (lazy), after their headers passed the size checks; as ``PILReader.read`` otherwise.

        Raises:
            ImageReadError: a special file, or a header claiming more than the file holds or more than
                ``max_image_bytes``.
        """
        if isinstance(data, np.ndarray):
            with pil_size_limit_off():
                return super().read(data, **kwargs)
        options = {**self.kwargs, **kwargs}
        images = []
        for name in _names(data):
            image = open_checked_pil(name, self.max_image_bytes, **options)
            images.append(self.converter(image) if callable(self.converter) else image)
        return images if len(images) > 1 else images[0]


_READ_WHOLE_MAX = 64 * 1024**2
"""Largest PIL-format file :func:`open_checked_pil` reads into memory by default (larger: checked from the path)."""


def open_checked_pil(
    path: str | os.PathLike,
    max_image_bytes: int | None = None,
    *,
    read_whole_max: int = _READ_WHOLE_MAX,
    **open_kwargs,
):
    """``PIL.Image.open`` of ``path`` (lazy: pixels decoded on first use) after its header passed the guard.

    Why: checking the header and then letting PIL open the file meant opening and parsing every picture
    twice (three times with PNG's IHDR read), a measurable share of a small image's preprocessing. Here
    the file is opened once and read whole (a picture is a few hundred KB; files over ``read_whole_max``
    are checked from their path first and then opened by PIL as before, so a big file is never held in
    memory twice): :func:`~medmtl.data.header_guard.pil_header_problems` checks PIL's parse
    of those bytes, and the same image object later decodes them. The checks are those of
    :func:`~medmtl.data.header_guard.header_problems`: special files refused unopened, the claimed size
    against the file and the cap, PIL's pixel-count limit replaced by the cap.

    Args:
        path: the file.
        max_image_bytes: cap on the decoded size (``None``: ``MEDMTL_MAX_IMAGE_BYTES`` or 2 GiB).
        read_whole_max: largest file read into memory at once (bytes).
        open_kwargs: ``PIL.Image.open`` arguments (``formats``).

    Raises:
        ImageReadError: a special file or a header over the file or the cap, naming the file.
        OSError: a file PIL cannot identify (``MedmtlReader`` turns it into an ``unreadable_file`` problem).
    """
    from PIL import Image

    name = os.fspath(path)
    kind = file_kind_problem(name)
    if kind is not None:
        raise ImageReadError([kind], context=name)
    with open(name, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        content = handle.read() if size <= read_whole_max else None
    image = None
    if content is not None:
        try:
            with pil_size_limit_off():
                image = Image.open(io.BytesIO(content), **open_kwargs)
        except Exception:  # noqa: BLE001 - PIL cannot parse it: opened from the path below, its error names the file
            image = None
    if image is None:
        _raise_for_header(name, max_image_bytes)
        with pil_size_limit_off():
            return Image.open(name, **open_kwargs)
    found = pil_header_problems(name, image, content[:PIL_HEAD_BYTES], size, max_image_bytes)
    if found:
        image.close()
        raise ImageReadError(found, context=name)
    return image


def _raise_for_header(name: str, limit: int | None, allow_dir: bool = False) -> None:
    """Refuse a special file or a header claiming an impossible or too large size, before any reading."""
    kind = file_kind_problem(name, allow_dir=allow_dir)
    found = [kind] if kind is not None else header_problems(name, max_image_bytes(limit))
    if found:
        raise ImageReadError(found, context=name)


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
        max_image_bytes: cap on one image's decoded size (``None``: ``MEDMTL_MAX_IMAGE_BYTES`` or 2 GiB);
            headers claiming more, or more than their file holds, are refused before reading.
    """

    def __init__(self, dicom_seg: str = "error", max_image_bytes: int | None = None):
        super().__init__()
        self.dicom_seg = dicom_seg
        self.max_image_bytes = max_image_bytes

    def verify_suffix(self, filename: Sequence[os.PathLike | str] | os.PathLike | str) -> bool:
        try:
            reader_for(filename)
        except DataError:
            return False
        return True

    def read(self, data: Sequence[os.PathLike | str] | os.PathLike | str, **kwargs) -> tuple[ImageReader, Any, str]:
        reader = reader_for(data)
        dicom = isinstance(reader, MedmtlDicomReader)
        if dicom:
            reader = MedmtlDicomReader(seg=self.dicom_seg, max_image_bytes=self.max_image_bytes)
        elif isinstance(reader, MedmtlPILReader):
            reader.max_image_bytes = self.max_image_bytes
        if not isinstance(reader, MedmtlPILReader):  # which checks each header on its one open of the file
            for file in _names(data):
                _raise_for_header(file, self.max_image_bytes, allow_dir=dicom)
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
            message, fix = diagnose_unreadable(name, err)
            raise _read_error("unreadable_file", name, message, fix) from None


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
    ``reader``; ``dicom_seg`` and ``max_image_bytes`` are passed to :class:`MedmtlReader`.

    Example::

        image = MedmtlLoadImage(ensure_channel_first=True)("brain.nii.gz")  # (1, 181, 217, 181), affine in .meta
    """

    def __init__(self, *args, dicom_seg: str = "error", max_image_bytes: int | None = None, **kwargs):
        with _quiet_default_readers():
            super().__init__(None, *args, **kwargs)
        self._dispatch = MedmtlReader(dicom_seg=dicom_seg, max_image_bytes=max_image_bytes)

    def __call__(self, filename, reader: ImageReader | None = None):
        return super().__call__(filename, reader if reader is not None else self._dispatch)


class MedmtlLoadImaged(LoadImaged):
    """``LoadImaged`` over :class:`MedmtlLoadImage`: each key's file gets the reader of its own format.

    Takes ``LoadImaged``'s arguments (``keys``, ``image_only``, ``ensure_channel_first``,
    ``allow_missing_keys``, ...) except ``reader``; ``dicom_seg`` and ``max_image_bytes`` as
    :class:`MedmtlLoadImage`.

    Example::

        load = MedmtlLoadImaged(keys=["image", "lesion"], ensure_channel_first=True)
        sample = load({"image": "case1/dicom/", "lesion": "case1/lesion.nii.gz"})
    """

    def __init__(self, keys, *args, dicom_seg: str = "error", max_image_bytes: int | None = None, **kwargs):
        with _quiet_default_readers():
            super().__init__(keys, None, *args, **kwargs)
        self._dispatch = MedmtlReader(dicom_seg=dicom_seg, max_image_bytes=max_image_bytes)

    def __call__(self, data, reader: ImageReader | None = None):
        return super().__call__(data, reader if reader is not None else self._dispatch)


def make_loader(keys: Hashable | Sequence[Hashable] | None = None, **kwargs) -> MedmtlLoadImage | MedmtlLoadImaged:
    """A preconfigured loader: :class:`MedmtlLoadImage` without ``keys``, :class:`MedmtlLoadImaged` with them.

    Args:
        keys: dictionary keys to load; ``None`` for a loader of plain paths.
        kwargs: ``LoadImage(d)`` arguments (``image_only`` defaults to True), ``dicom_seg`` and ``max_image_bytes``.

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


def load_image(path: str | os.PathLike, max_image_bytes: int | None = None):
    """A MetaTensor with the file's voxels and geometry (affine, spacing) in ``.meta``.

    Args:
        path: the file (or DICOM series folder).
        max_image_bytes: cap on the decoded size (``None``: ``MEDMTL_MAX_IMAGE_BYTES`` or 2 GiB).

    Raises:
        DataError: the file is missing, of an unsupported format, not a regular file, claims more than it
            holds or than the cap, or is unreadable (named in the message).
    """
    if max_image_bytes is None:
        return _loader()(path)
    return _loader()(path, MedmtlReader(max_image_bytes=max_image_bytes))


def load_array(path: str | os.PathLike) -> np.ndarray:
    """The file's voxels as a NumPy array (no geometry), in the same layout as :func:`load_image`."""
    return np.asarray(load_image(path))
