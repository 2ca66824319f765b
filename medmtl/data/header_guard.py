"""What a file is and what its header claims, checked before any reader allocates or decodes its voxels.

Why: readers trust headers. nibabel allocates ``shape x itemsize`` from a NIfTI header before it notices
that the file holds 90 bytes; PIL decodes whatever size a PNG claims; a 249 KB ``.nii.gz`` inflates to
256 MB with no limit; a complex-valued NIfTI loses its imaginary part without a word; and opening a
FIFO (or a device) waits forever for a writer. Everything here reads a header only (a few hundred
bytes, or a lazy ``PIL.Image.open``), so it is cheap enough for every read of training, not only for
validation:

* :func:`file_kind_problem`: FIFOs, devices, sockets, folders where a file is expected, unreadable
  files, found with ``os.stat`` before anything opens the path.
* :func:`header_problems`: the size a NIfTI / Analyze, PNG / JPEG / BMP / GIF / TIFF, ``.npy`` / ``.npz``
  header claims, compared with what the file can hold (uncompressed data must fit in the file; deflate
  cannot expand more than 1032:1) and with a cap on the decoded size; complex, object and other
  non-numeric voxel types. DICOM uses :func:`size_problem` from :mod:`medmtl.data.dicom`;
  :func:`pil_header_problems` checks a PIL-format file its reader has already opened, so that the
  training reader opens each picture once for the checks and the pixels.
* :func:`max_image_bytes`: the cap, :data:`DEFAULT_MAX_IMAGE_BYTES` (2 GiB) per image unless the
  ``MEDMTL_MAX_IMAGE_BYTES`` environment variable (bytes, or ``512M``, ``4G``...) or an argument says
  otherwise.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import stat
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from medmtl.byte_size import parse_byte_size
from medmtl.data.problems import Problem

__all__ = [
    "DEFAULT_MAX_IMAGE_BYTES",
    "DEFLATE_MAX_RATIO",
    "MAX_IMAGE_BYTES_ENV",
    "file_kind_problem",
    "format_size",
    "header_problems",
    "max_image_bytes",
    "nifti_header",
    "PIL_HEAD_BYTES",
    "pil_header_problems",
    "pil_size_limit_off",
    "size_problem",
]

DEFAULT_MAX_IMAGE_BYTES = 2 * 1024**3
"""Largest decoded image (voxels x bytes per voxel) read without being told otherwise: 2 GiB."""
MAX_IMAGE_BYTES_ENV = "MEDMTL_MAX_IMAGE_BYTES"
"""Environment variable overriding :data:`DEFAULT_MAX_IMAGE_BYTES` (``2147483648``, ``512M``, ``4G``, ``1.5GiB``)."""
DEFLATE_MAX_RATIO = 1032
"""Deflate (gzip, zlib, PNG, zip) never expands data more than 1032:1 (258 bytes from 2 bits)."""

_TRUNCATED_FIX = (
    "the file is incomplete or its header damaged (an interrupted copy, download or export): copy or export it "
    "again; medmtl does not allocate what a damaged header claims"
)
_NIFTI = (".nii", ".nii.gz")
_PIL = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
_PIL_LOCK = threading.Lock()
_PIL_USERS = 0  # readers inside pil_size_limit_off()
_PIL_SAVED: int | None = None  # Image.MAX_IMAGE_PIXELS before the first of them


def max_image_bytes(value: int | str | None = None) -> int:
    """The cap on one image's decoded size, in bytes.

    Args:
        value: the cap (bytes, or a size such as ``"4G"``); ``None`` reads ``MEDMTL_MAX_IMAGE_BYTES``, and
            without it gives :data:`DEFAULT_MAX_IMAGE_BYTES`.

    Returns:
        A positive number of bytes.

    Raises:
        ValueError: a value (or the environment variable) that is not a positive size, naming where it came from.
    """
    where = "max_image_bytes"
    if value is None:
        value = os.environ.get(MAX_IMAGE_BYTES_ENV, "").strip()
        where = f"the environment variable {MAX_IMAGE_BYTES_ENV}"
        if not value:
            return DEFAULT_MAX_IMAGE_BYTES
    if isinstance(value, str):
        value = parse_byte_size(value, where)
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ValueError(f"{where} must be a positive number of bytes, got {value!r}")
    return int(value)


def format_size(n: float) -> str:
    """``1.3 GiB``, ``90 bytes``: sizes for messages."""
    if n < 1024:
        return f"{int(n)} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
    return f"{n:.1f} TiB"


def _suffix(path: str | os.PathLike) -> str:
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


# ---------------------------------------------------------------------------------------------
# what the path is


_SPECIAL = (
    (stat.S_ISFIFO, "a named pipe (FIFO)", "reading it waits for a writer, possibly forever"),
    (stat.S_ISCHR, "a character device", "reading it never ends or returns device data"),
    (stat.S_ISBLK, "a block device (a disk)", "it is a whole disk, not an image file"),
    (stat.S_ISSOCK, "a socket", "it cannot be read as a file"),
)


def file_kind_problem(path: str | os.PathLike, *, allow_dir: bool = False) -> Problem | None:
    """A problem when ``path`` is not a regular, readable file (or a folder, with ``allow_dir``); no file is opened.

    Args:
        path: the file (symlinks are followed).
        allow_dir: accept a folder (a DICOM series).

    Returns:
        ``not_a_file`` (FIFO, device, socket, folder) or ``permission_denied``; ``None`` for a readable
        file and for a missing one (reported elsewhere as ``missing_file``).
    """
    name = os.fspath(path)
    try:
        info = os.stat(name)
    except FileNotFoundError:
        return None
    except PermissionError:
        return Problem(
            "permission_denied",
            "cannot be read: permission denied on a folder above it",
            "give the account running medmtl access to the folders of the data (chmod a+rx), or copy the data",
            path=name,
        )
    except OSError as err:
        return Problem(
            "unreadable_file",
            f"cannot be read: {err.strerror or type(err).__name__}",
            "check the disk or network mount holding it, or copy the data to a local disk",
            path=name,
        )
    mode = info.st_mode
    if stat.S_ISDIR(mode):
        if allow_dir:
            return None
        return Problem(
            "not_a_file",
            f"is a folder, not a {_suffix(name) or 'image'} file",
            "give the image file itself (only a DICOM series may be a folder), or fix the spec's template",
            path=name,
        )
    for test, what, why in _SPECIAL:
        if test(mode):
            return Problem(
                "not_a_file",
                f"is {what}, not a regular file: {why}",
                "replace it with a copy of the real image file (cp the data, not the pipe/device), or remove the case",
                path=name,
            )
    if not os.access(name, os.R_OK):
        return Problem(
            "permission_denied",
            f"cannot be read: permission denied (mode {stat.filemode(mode)}, owner uid {info.st_uid})",
            "give the account running medmtl read access (e.g. chmod a+r on the file), or copy the data",
            path=name,
        )
    return None


# ---------------------------------------------------------------------------------------------
# sizes


def size_problem(
    path: str | os.PathLike,
    claimed: int,
    what: str,
    *,
    max_bytes: int,
    capacity: int | None = None,
    file_size: int | None = None,
    codec: str | None = None,
) -> Problem | None:
    """Whether the voxels a header claims can be in the file, and fit the cap.

    Args:
        path: the file.
        claimed: bytes of the decoded voxels.
        what: what the header describes (``"(1000, 1000, 360) float32 voxels"``).
        max_bytes: the cap (:func:`max_image_bytes`).
        capacity: most voxel bytes the file can hold (``None``: unknown, only the cap applies).
        file_size: the file's size, quoted in the message.
        codec: the compression (``"gzip"``) when ``capacity`` is a bound on decompressed data.

    Returns:
        ``unreadable_file`` (the claim cannot be in the file), ``image_too_large`` (over the cap) or ``None``.
    """
    name = os.fspath(path)
    if capacity is not None and claimed > capacity:
        held = format_size(file_size if file_size is not None else capacity)
        if codec:
            where = f"{held} of {codec} data cannot hold more than {format_size(max(capacity, 0))} once decompressed"
        else:
            where = f"the file holds only {held}"
        return Problem(
            "unreadable_file",
            f"the header describes {what} ({format_size(claimed)}) but {where}: the file is truncated or its "
            "header is corrupt",
            _TRUNCATED_FIX,
            path=name,
        )
    if claimed > max_bytes:
        return Problem(
            "image_too_large",
            f"the header describes {what}: {format_size(claimed)} once decoded, over the limit of "
            f"{format_size(max_bytes)} per image",
            f"if the image really is this large, raise the limit (environment variable {MAX_IMAGE_BYTES_ENV}, e.g. "
            f"{MAX_IMAGE_BYTES_ENV}={_round_up(claimed)}, or max_image_bytes=); otherwise the header is corrupt: "
            "export the file again",
            path=name,
        )
    return None


def _round_up(n: int) -> str:
    gib = -(-n // 1024**3)
    return f"{gib}G"


def _dtype_problem(path: str, dtype: np.dtype, shape: tuple[int, ...]) -> Problem | None:
    """Complex, object and other non-numeric voxel types: what a float32 reader would silently mangle."""
    if dtype.hasobject:
        return Problem(
            "unreadable_file",
            f"holds Python objects (dtype object, shape {tuple(shape)}), not a numeric array; medmtl does not "
            "unpickle files (it could run code)",
            "save one numeric array per file, e.g. np.save(path, np.stack(slices).astype(np.float32)); "
            "pad or resample slices of different sizes first",
            path=path,
        )
    if dtype.kind == "c":
        return Problem(
            "complex_values",
            f"holds complex voxels ({dtype}, shape {tuple(shape)}): reading them as real numbers would drop "
            "the imaginary part",
            "save the magnitude (np.abs(data)) or the real part as a float32 image, or each part as its own input",
            path=path,
        )
    if dtype.fields is not None or dtype.kind not in "biuf":
        return Problem(
            "unsupported_dtype",
            f"holds voxels of type {dtype} (shape {tuple(shape)}), not plain numbers (colour records, text, dates...)",
            "save the image as a numeric array (uint8, int16, float32...); colour volumes as one file per channel",
            path=path,
        )
    return None


def header_problems(path: str | os.PathLike, max_bytes: int | None = None) -> list[Problem]:
    """Problems of a file's header that make reading it unsafe or lossy; reads the header only.

    NIfTI (``.nii``, ``.nii.gz``, Analyze ``.img`` + ``.hdr``), PIL formats (PNG, JPEG, BMP, GIF, TIFF) and
    NumPy (``.npy``, ``.npz``); other formats give ``[]`` (DICOM is checked by :mod:`medmtl.data.dicom`,
    headerless raw files by :class:`~medmtl.data.raw_reader.RawImageReader`). A header that cannot be
    parsed also gives ``[]``: the reader then fails and says why.

    Args:
        path: the file.
        max_bytes: cap on the decoded size (``None``: :func:`max_image_bytes`).

    Returns:
        Errors (``unreadable_file``, ``image_too_large``, ``complex_values``, ``unsupported_dtype``), each
        naming the file and the fix.
    """
    limit = max_image_bytes(max_bytes)
    name = os.fspath(path)
    suffix = _suffix(name)
    try:
        if suffix in _NIFTI or (suffix in (".img", ".hdr") and _analyze_pair(name)):
            found = _nifti_problems(name, limit)
        elif suffix in _PIL:
            found = _pil_problems(name, limit)
        elif suffix == ".npy":
            found = _npy_problems(name, limit)
        elif suffix == ".npz":
            found = _npz_problems(name, limit)
        else:
            found = []
    except Exception:  # noqa: BLE001 - an unparsable header is the reader's to diagnose
        return []
    return [p for p in found if p is not None]


# ---------------------------------------------------------------------------------------------
# NIfTI / Analyze


def _analyze_pair(name: str) -> bool:
    stem = os.path.splitext(name)[0]
    return os.path.exists(stem + ".hdr") and os.path.exists(stem + ".img")


def nifti_header(path: str | os.PathLike):
    """``(header, data file, voxel offset, compressed)`` of a NIfTI-1/2 or Analyze file, unchecked (``check=False``).

    nibabel's checked headers repair what they read (a 0 mm ``pixdim`` becomes 1 mm), so the raw fields are
    read here. Raises on anything that is not such a header.
    """
    import nibabel as nib

    name = os.fspath(path)
    suffix = _suffix(name)
    compressed = suffix == ".nii.gz"
    if suffix in (".img", ".hdr"):
        stem = os.path.splitext(name)[0]
        header_file, data_file = stem + ".hdr", stem + ".img"
    else:
        header_file = data_file = name
    opener = gzip.open if compressed else open
    with opener(header_file, "rb") as handle:
        head = handle.read(540)
    sizes = {int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")}
    if 540 in sizes and suffix not in (".img", ".hdr"):
        header_class = nib.Nifti2Header
    elif 348 in sizes:
        magic = head[344:348]
        header_class = nib.Nifti1Header if magic in (b"n+1\x00", b"ni1\x00") else nib.AnalyzeHeader
    else:
        raise ValueError("not a NIfTI/Analyze header")
    header = header_class.from_fileobj(io.BytesIO(head), check=False)
    offset = int(header.get_data_offset()) if header_file == data_file else 0
    return header, data_file, offset, compressed


def _nifti_problems(name: str, limit: int) -> list[Problem | None]:
    header, data_file, offset, compressed = nifti_header(name)
    shape = tuple(int(n) for n in header.get_data_shape())
    dtype = np.dtype(header.get_data_dtype())
    bad_type = _dtype_problem(name, dtype, shape)
    if bad_type is not None:
        return [bad_type]
    claimed = int(np.prod(shape, dtype=object)) * dtype.itemsize
    size = os.path.getsize(data_file)
    capacity = (DEFLATE_MAX_RATIO * size if compressed else size) - offset
    what = f"{shape} {dtype} voxels"
    return [
        size_problem(
            name,
            claimed,
            what,
            max_bytes=limit,
            capacity=capacity,
            file_size=size,
            codec="gzip" if compressed else None,
        )
    ]


# ---------------------------------------------------------------------------------------------
# PIL formats

_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 2, "La": 2, "PA": 2, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


@contextlib.contextmanager
def pil_size_limit_off() -> Iterator[None]:
    """Open images without PIL's own decompression-bomb limit, for readers that checked the size themselves.

    PIL refuses images over ``2 x Image.MAX_IMAGE_PIXELS`` (179 M pixels) whatever their byte size and the
    cap configured here; medmtl applies :func:`max_image_bytes` instead (in :func:`header_problems`), so the
    two limits cannot disagree. Only ``Image.open`` (which reads the header) consults the global; it is
    restored when the last user leaves, and no lock is held while a file is opened (a read stuck on a
    stalled mount must not block the others).
    """
    from PIL import Image

    global _PIL_USERS, _PIL_SAVED
    with _PIL_LOCK:
        if _PIL_USERS == 0:
            _PIL_SAVED = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _PIL_USERS += 1
    try:
        yield
    finally:
        with _PIL_LOCK:
            _PIL_USERS -= 1
            if _PIL_USERS == 0:
                Image.MAX_IMAGE_PIXELS = _PIL_SAVED


PIL_HEAD_BYTES = 64
"""How many of a file's first bytes :func:`pil_header_problems` reads (PNG's IHDR chunk, BMP's info header)."""


def pil_header_problems(
    path: str | os.PathLike, image, head: bytes, file_size: int, max_bytes: int | None = None
) -> list[Problem]:
    """:func:`header_problems` of a PIL-format file that the caller has already opened (lazily, nothing decoded).

    Lets a reader open a file once for both the checks and the pixels: ``image`` is the
    ``PIL.Image.open`` result (opened inside :func:`pil_size_limit_off`), ``head`` the file's first
    :data:`PIL_HEAD_BYTES` bytes (or all of them, if fewer) and ``file_size`` its size. Same checks
    and messages as :func:`header_problems`, and likewise ``[]`` when the header cannot be interpreted
    (the decoder then fails and says why).

    Raises:
        ValueError: ``max_bytes`` (or ``MEDMTL_MAX_IMAGE_BYTES``) is not a positive size.
    """
    limit = max_image_bytes(max_bytes)  # a malformed cap raises (outside the try), as in header_problems
    try:
        found = _pil_image_problems(os.fspath(path), image, head, file_size, limit)
    except Exception:  # noqa: BLE001 - an unparsable header is the reader's to diagnose
        return []
    return [p for p in found if p is not None]


def _pil_problems(name: str, limit: int) -> list[Problem | None]:
    from PIL import Image

    with open(name, "rb") as handle:  # one open: the first bytes, then PIL's lazy header parse
        head = handle.read(PIL_HEAD_BYTES)
        handle.seek(0)
        with pil_size_limit_off(), Image.open(handle) as image:
            return _pil_image_problems(name, image, head, os.fstat(handle.fileno()).st_size, limit)


def _pil_image_problems(name: str, image, head: bytes, size: int, limit: int) -> list[Problem | None]:
    from PIL import Image

    width, height = image.size
    mode, fmt = image.mode, image.format
    info = image.info
    bits = image.tag_v2.get(258) if fmt == "TIFF" else None
    per_pixel = _MODE_BYTES.get(mode, Image.getmodebands(mode) * (4 if mode in ("I", "F") else 1))
    claimed = width * height * per_pixel
    what = f"a {width} x {height} {mode} image"
    capacity, stored, codec = None, claimed, None
    if fmt == "PNG":
        stored, capacity, codec = _png_raw_bytes(head, width, height), DEFLATE_MAX_RATIO * size, "PNG (deflate)"
    elif fmt == "TIFF" and info.get("compression") == "raw":
        total_bits = sum(bits) if isinstance(bits, tuple) else int(bits or (1 if mode == "1" else 8))
        stored, capacity = -(-width * total_bits // 8) * height, size
    elif fmt == "BMP" and not info.get("compression") and int.from_bytes(head[14:18], "little") >= 40:
        depth = int.from_bytes(head[28:30], "little") or 8 * per_pixel  # BITMAPINFOHEADER or later: biBitCount at 28
        stored, capacity = (-(-width * depth // 32) * 4) * height, size
    if capacity is not None and stored > capacity:
        return [size_problem(name, stored, what, max_bytes=limit, capacity=capacity, file_size=size, codec=codec)]
    return [size_problem(name, claimed, what, max_bytes=limit)]


def _png_raw_bytes(head: bytes, width: int, height: int) -> int:
    """Bytes of a PNG's filtered scanlines (what its deflate stream inflates to), from the IHDR chunk in ``head``."""
    depth, colour = head[24], head[25]
    channels = _PNG_CHANNELS.get(colour, 4)
    return height * (1 + -(-width * channels * depth // 8))


# ---------------------------------------------------------------------------------------------
# NumPy


def _npy_header(handle) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(handle)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(handle)
    return tuple(int(n) for n in shape), np.dtype(dtype)


def _npy_problems(name: str, limit: int) -> list[Problem | None]:
    with open(name, "rb") as handle:
        shape, dtype = _npy_header(handle)
        offset = handle.tell()
    bad_type = _dtype_problem(name, dtype, shape)
    if bad_type is not None:
        return [bad_type]
    size = os.path.getsize(name)
    claimed = int(np.prod(shape, dtype=object)) * dtype.itemsize
    return [
        size_problem(name, claimed, f"{shape} {dtype} voxels", max_bytes=limit, capacity=size - offset, file_size=size)
    ]


def _npz_problems(name: str, limit: int) -> list[Problem | None]:
    found: list[Problem | None] = []
    total = 0
    with zipfile.ZipFile(name) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with archive.open(info) as member:
                shape, dtype = _npy_header(member)
            where = f"{name} [{info.filename}]"
            bad_type = _dtype_problem(where, dtype, shape)
            if bad_type is not None:
                found.append(bad_type)
                continue
            claimed = int(np.prod(shape, dtype=object)) * dtype.itemsize
            total += claimed
            ratio = {zipfile.ZIP_STORED: 1, zipfile.ZIP_DEFLATED: DEFLATE_MAX_RATIO}.get(info.compress_type)
            capacity = None if ratio is None else ratio * info.compress_size
            codec = "deflate" if info.compress_type == zipfile.ZIP_DEFLATED else None
            found.append(
                size_problem(
                    where,
                    claimed,
                    f"{shape} {dtype} voxels",
                    max_bytes=limit,
                    capacity=capacity,
                    file_size=info.compress_size,
                    codec=codec,
                )
            )
    if not any(found) and total > limit:
        found.append(size_problem(name, total, "arrays", max_bytes=limit))
    return found
