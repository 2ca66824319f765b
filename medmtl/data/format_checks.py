"""Files that load, but as something else: colour models, palettes, alpha, extra frames, broken affines, extreme values.

Why: these files pass every reader without an error and then train on the wrong numbers. A CMYK JPEG
comes as four channels that the 2D pipeline takes for R, G, B and alpha; a colour palette PNG comes as
palette indices; a multi-page TIFF as its first page; a 16-bit colour PNG as 8 bits; a NIfTI with a
0 mm ``pixdim`` is silently given 1 mm by nibabel, and one with NaN in its affine breaks resampling;
voxels near float32's limit turn variance and min-max scaling into Inf. The dataset validator
(:mod:`medmtl.data.validate`) runs these checks on every file and reports each finding with the file
and the fix; the header-only ones run before the voxels are read, the value check on the array it
reads anyway.

medmtl's 2D pipeline reads grey (``1``, ``L``, ``I;16``, ``I``, ``F``) and RGB(A) images (turned into one
grey channel by :class:`~medmtl.transforms.ToGrey`), and masks as one channel of labels (palette
indices included). Everything else is reported here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medmtl.data.header_guard import nifti_header, pil_size_limit_off
from medmtl.data.problems import Problem, Severity

__all__ = ["EXTREME_MAGNITUDE", "affine_problem", "extreme_value_problem", "pil_problems"]

EXTREME_MAGNITUDE = float(np.sqrt(np.finfo(np.float32).max))
"""Voxel magnitude (1.8e19) beyond which a value's square overflows float32 (variance, z-score, losses)."""

_PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
_GREY_MODES = {"1", "L", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}
_ALPHA_MODES = {"LA", "La", "PA", "RGBA", "RGBa"}
_OTHER_MODELS = {
    "CMYK": "CMYK colour (a print export): its 4 channels C, M, Y, K would be taken as R, G, B and alpha",
    "YCbCr": "YCbCr colour: its channels Y, Cb, Cr would be taken as R, G, B",
    "LAB": "CIE L*a*b* colour: its channels would be taken as R, G, B",
    "HSV": "HSV colour: its channels would be taken as R, G, B",
}
_CONVERT = "convert it with PIL: Image.open(f).convert('L').save(f) for grey ('RGB' for colour)"


def _suffix(path: str) -> str:
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def pil_problems(path: str | os.PathLike, *, mask: bool) -> list[Problem]:
    """Colour model, palette, alpha, frames and bit depth of a PNG/JPEG/BMP/GIF/TIFF against what medmtl reads.

    Call it after :func:`~medmtl.data.header_guard.header_problems` passed (it may decode the pixels of a
    palette or alpha image).

    Args:
        path: the image file.
        mask: the file is a label mask (palette indices are labels, alpha is not allowed).

    Returns:
        ``multi_frame``, ``colour_model``, ``palette_image`` (error; warning for a grey palette),
        ``transparency`` (warning; error for a mask) and ``colour_depth`` (warning); ``[]`` for other formats
        or a file PIL cannot open (the reader reports it).
    """
    from PIL import Image

    name = os.fspath(path)
    if _suffix(name) not in _PIL_SUFFIXES:
        return []
    found: list[Problem] = []

    def add(check: str, message: str, fix: str, severity: Severity = Severity.ERROR) -> None:
        found.append(Problem(check, message, fix, path=name, severity=severity))

    try:
        with pil_size_limit_off(), Image.open(name) as image:
            mode, fmt = image.mode, image.format
            frames = int(getattr(image, "n_frames", 1) or 1)
            if frames > 1:
                add(
                    "multi_frame",
                    f"holds {frames} {'pages' if fmt == 'TIFF' else 'frames'} ({fmt}); medmtl reads only the first",
                    "save one image per file, or the stack as one 3D NIfTI (with a spatial_dims: 3 spec)",
                )
                return found
            if mode in _OTHER_MODELS:
                add(
                    "colour_model",
                    f"is stored as {_OTHER_MODELS[mode]}",
                    f"{_CONVERT}"
                    if not mask
                    else "save the mask as a single-channel label image: Image.open(f).convert('L').save(f)",
                )
                return found
            if mode == "P" and not mask:
                found += _palette(image, name)
            elif mode in _ALPHA_MODES:
                low, _ = image.getchannel("A").getextrema()
                if low < 255 and mask:
                    add(
                        "transparency",
                        f"is a mask with transparent pixels (mode {mode}, alpha down to {low}): medmtl reads the "
                        "grey/colour values and ignores alpha, so a shape drawn only in the alpha channel is lost",
                        "save the mask as a single-channel label image with the shape in its values, e.g. "
                        "Image.open(f).getchannel('A').point(lambda a: 255 if a else 0).save(f)",
                    )
                elif low < 255:
                    add(
                        "transparency",
                        f"has transparent pixels (mode {mode}, alpha down to {low}): alpha is dropped and "
                        "transparent pixels keep whatever colour they store",
                        "flatten it onto its background, e.g. Image.alpha_composite(Image.new('RGBA', im.size, "
                        "'black'), im.convert('RGBA')).convert('RGB')",
                        Severity.WARNING,
                    )
            elif mode not in _GREY_MODES | _ALPHA_MODES | {"RGB", "P"}:
                add(
                    "colour_model",
                    f"is stored in PIL mode {mode!r}, which medmtl does not read as grey or RGB",
                    _CONVERT,
                )
    except Exception:  # noqa: BLE001 - a file PIL cannot open is the reader's to diagnose
        return found
    if fmt == "PNG" and not found:
        found += _png_depth(name, mask)
    return found


def _palette(image, name: str) -> list[Problem]:
    """A palette image given as an image: medmtl reads its indices, which are grey levels only by chance."""
    palette = np.asarray(image.getpalette() or [], dtype=np.int64)
    colours = palette[: len(palette) // 3 * 3].reshape(-1, 3)
    used = np.unique(np.asarray(image))
    used = used[used < len(colours)]
    rgb = colours[used]
    if len(rgb) and np.all(rgb == rgb[:, :1]):
        if np.array_equal(rgb[:, 0], used):
            return []  # a grey palette whose indices are the grey levels: read as an L image would be
        return [
            Problem(
                "palette_image",
                f"is a palette (P) image with a grey palette whose indices are not the grey levels ({len(used)} "
                "used): medmtl reads the indices, so the intensities are reordered",
                _CONVERT,
                path=name,
                severity=Severity.WARNING,
            )
        ]
    return [
        Problem(
            "palette_image",
            f"is a palette (P) image with {len(used)} colours: medmtl reads the palette indices, not the colours",
            "convert it with PIL: Image.open(f).convert('RGB').save(f) (or .convert('L') for grey)",
            path=name,
        )
    ]


def _png_depth(name: str, mask: bool) -> list[Problem]:
    """16-bit colour PNGs: PIL reads 8 bits per channel."""
    with open(name, "rb") as handle:
        head = handle.read(26)
    depth, colour = head[24], head[25]
    if depth != 16 or colour not in (2, 4, 6):
        return []
    return [
        Problem(
            "colour_depth",
            "is a 16-bit-per-channel colour PNG: PIL reads it as 8 bits per channel (the low byte is lost)",
            "save grey data as a 16-bit grey PNG (mode 'I;16'), a NIfTI or a .npy; for colour, export 8-bit RGB "
            "to make the loss explicit" + (" (a mask needs one channel of labels)" if mask else ""),
            path=name,
            severity=Severity.WARNING,
        )
    ]


def affine_problem(path: str | os.PathLike) -> Problem | None:
    """A NIfTI / Analyze affine that is not a usable voxel-to-world map: non-finite, a 0 mm voxel, or parallel axes.

    Read from the raw header: nibabel repairs what it loads (a 0 mm ``pixdim`` becomes 1 mm), MONAI then
    resamples with the repaired or broken matrix without a word.

    Returns:
        ``bad_affine`` (error) or ``None`` (also for other formats and unreadable headers).
    """
    name = os.fspath(path)
    suffix = _suffix(name)
    if suffix not in (".nii", ".nii.gz", ".img", ".hdr"):
        return None
    try:
        header = nifti_header(name)[0]
        affine = np.asarray(header.get_best_affine(), dtype=float)
        shape = tuple(int(n) for n in header.get_data_shape())
    except Exception:  # noqa: BLE001 - the reader reports unreadable headers
        return None
    codes = {key: int(header[key]) if key in header else 0 for key in ("sform_code", "qform_code")}
    source = (
        "sform (srow_x/y/z)"
        if codes["sform_code"] > 0
        else "qform (quatern_b/c/d, qoffset and pixdim)"
        if codes["qform_code"] > 0
        else "pixdim"
    )
    axes = max(1, min(len(shape), 3))
    columns = affine[:3, :axes]
    fix = (
        "fix the header: re-export the image from its source, or give it the right affine with nibabel "
        "(img.set_sform(affine, code=1); img.set_qform(affine, code=1); nib.save(img, path))"
    )
    if not np.all(np.isfinite(affine)):
        return Problem(
            "bad_affine",
            f"the affine from the header's {source} has non-finite entries ({_rows(affine)}): the image has no "
            "position in space",
            fix,
            path=name,
        )
    spacing = np.linalg.norm(columns, axis=0)
    if np.any(spacing <= 0):
        zero = [i for i, s in enumerate(spacing) if s <= 0]
        return Problem(
            "bad_affine",
            f"voxel size 0 mm along axis {', '.join(map(str, zero))} (header {source}, pixdim "
            f"{np.round(np.asarray(header['pixdim'][1 : axes + 1], dtype=float), 4).tolist()}): the affine is "
            "singular (nibabel would silently use 1 mm)",
            fix,
            path=name,
        )
    if np.linalg.matrix_rank(columns / spacing, tol=1e-6) < axes:
        return Problem(
            "bad_affine",
            f"the voxel axes of the header's {source} are parallel ({_rows(affine)}): the affine is singular",
            fix,
            path=name,
        )
    return None


def _rows(affine: np.ndarray) -> str:
    return str(np.round(affine[:3], 4).tolist())


def extreme_value_problem(array: np.ndarray, path: str | os.PathLike) -> Problem | None:
    """Finite voxels so large that float32 arithmetic on them overflows (their square is beyond float32).

    Preprocessing computes in float32: the variance of a z-score normalisation on the GPU, min-max scaling
    (``max - min``), interpolation and losses give Inf or NaN, or one voxel flattens the rest of the image.
    Non-finite voxels are reported apart (``non_finite``) and ignored here.

    Returns:
        ``extreme_values`` (error) or ``None``.
    """
    if array.size == 0 or not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        return None
    with np.errstate(invalid="ignore", over="ignore"):
        low, high = float(np.min(array)), float(np.max(array))  # NaN/Inf propagate: then the slow path below
        if np.isfinite(low) and np.isfinite(high) and max(abs(low), abs(high)) <= EXTREME_MAGNITUDE:
            return None
        values = array[np.isfinite(array)] if np.issubdtype(array.dtype, np.floating) else array
        if values.size == 0:
            return None
        low, high = float(np.min(values)), float(np.max(values))
        count = int(np.count_nonzero(np.abs(values.astype(np.float64)) > EXTREME_MAGNITUDE))
    if count == 0:
        return None
    return Problem(
        "extreme_values",
        f"has {count} voxel(s) of magnitude above {EXTREME_MAGNITUDE:.1e} (range {low:.3g} to {high:.3g}): their "
        "squares overflow float32, so normalisation, resampling and losses turn them into Inf/NaN (or one voxel "
        "flattens the rest of the image)",
        "these are almost always a corrupt export or a wrong scale factor (scl_slope): fix the file, or clip the "
        "values to the scanner's real range (np.clip) and save it again",
        path=os.fspath(path),
    )
