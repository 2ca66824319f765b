"""Array transforms for what MONAI's loaders leave to the user: colour PNGs and multi-file masks.

Why: ``LoadImage`` reads a BUSI-style list of mask files (``benign (4)_mask.png``,
``benign (4)_mask_1.png``) as one array with a channel per file, and a colour PNG as one channel
per band (alpha included), then ``EnsureChannelFirst`` moves those to the front. A network wants
one grey channel and a loss one label map, so these transforms undo that, using the PIL ``mode``
that MONAI keeps in the metadata to tell colour bands from files, and never guessing from the
channel count alone (a 3-file grey mask and an RGB mask both have 3 channels).

Both take channel-first arrays (``(C, *spatial)``, after ``EnsureChannelFirst``), keep a
:class:`~monai.data.MetaTensor`'s metadata, and return ``float32``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from monai.config import NdarrayOrTensor
from monai.transforms import Transform
from monai.utils import convert_to_dst_type, convert_to_tensor
from PIL import Image

__all__ = ["MergeMasks", "ToGrey", "colour_layout"]

_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as PIL's convert("L")


def colour_layout(img: NdarrayOrTensor) -> tuple[int, int]:
    """``(bands per file, bands to keep)`` of a channel-first array, from its metadata.

    A PIL ``mode`` in the metadata (MONAI's ``PILReader`` stores the first file's) gives the bands
    per file, and alpha bands are dropped (``RGBA`` -> ``(4, 3)``, ``LA`` -> ``(2, 1)``). Without a
    mode, a 3- or 4-channel array whose channels were last on disk (``original_channel_dim == -1``,
    e.g. an RGB DICOM) is one colour image; anything else has one band per file (NIfTI, NumPy).

    Args:
        img: channel-first array, a MetaTensor for the metadata to be used.

    Returns:
        Bands per file and how many of them (the first ones) carry intensity.
    """
    meta = getattr(img, "meta", None) or {}
    mode = meta.get("mode")
    if isinstance(mode, str):
        try:
            bands = Image.getmodebands(mode)
        except ValueError:
            bands = 1
        return bands, bands - 1 if bands > 1 and mode.upper().endswith("A") else bands
    channels = img.shape[0]
    if channels in (3, 4) and meta.get("original_channel_dim") == -1:
        return channels, 3
    return 1, 1


def _per_file(img: NdarrayOrTensor, values: torch.Tensor, name: str) -> torch.Tensor:
    """``(files, kept bands, *spatial)`` view of ``values`` (alpha bands dropped), laid out by ``img``'s metadata.

    ``values`` is ``img`` as a plain tensor (same shape): reading the layout from the original spares
    wrapping the converted values in a new MetaTensor only to carry the metadata here.
    """
    bands, keep = colour_layout(img)
    channels = values.shape[0]
    if channels % bands:
        raise ValueError(
            f"{name}: {channels} channels are not a whole number of {bands}-band images "
            f"(file {(getattr(img, 'meta', None) or {}).get('filename_or_obj', '?')}); "
            "mixing grey and colour files in one list is not supported: save them all in one mode"
        )
    return values.reshape(channels // bands, bands, *values.shape[1:])[:, :keep]


class ToGrey(Transform):
    """Colour images to one grey channel per file (luminance; alpha dropped); grey input is unchanged.

    BUSI and many ultrasound/radiograph exports are grey pictures saved as RGB(A) PNGs; a network
    built for one input channel needs them as grey. Multi-channel volumes without colour metadata
    (multi-modal MRI stacks) are left alone.

    Example::

        ToGrey()(rgb_png_as_metatensor)  # (3, W, H) -> (1, W, H)
    """

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Return ``img`` with each file's colour bands replaced by their luminance."""
        bands, keep = colour_layout(img)
        if bands == 1:
            return img
        tensor = convert_to_tensor(img, track_meta=False, dtype=torch.float32)
        files = _per_file(img, tensor, type(self).__name__)
        if keep >= 3:
            weights = torch.tensor(_LUMA, dtype=files.dtype).reshape(1, 3, *([1] * (files.ndim - 2)))
            grey = (files[:, :3] * weights).sum(1)
        else:
            grey = files[:, 0]
        out, *_ = convert_to_dst_type(grey, img, dtype=torch.float32)
        return out


class MergeMasks(Transform):
    """One label map from a mask read as several channels: files OR-ed, colour reduced, values mapped.

    Steps, in order: colour bands of each file are reduced to their maximum (alpha dropped, so a
    white-on-black RGB mask stays white), files are merged by voxel-wise maximum (the OR of binary
    masks, the union of lesions), ``values`` maps raw voxel values (``{255: 1}``; values not listed
    are kept), and ``binarize`` turns any non-zero voxel into 1. Each file must hold one label map
    (not one-hot channels).

    Args:
        binarize: any non-zero voxel becomes 1 (the spec's ``binarize``).
        values: raw voxel value -> class index (the spec's ``values``), applied before ``binarize``.

    Example::

        MergeMasks(binarize=True)(two_mask_files_as_channels)  # (2, W, H) -> (1, W, H) in {0, 1}
    """

    def __init__(self, binarize: bool = False, values: Mapping[int, int] | None = None) -> None:
        self.binarize = bool(binarize)
        self.values = {int(k): int(v) for k, v in (values or {}).items()}

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Return a ``(1, *spatial)`` float32 label map."""
        tensor = convert_to_tensor(img, track_meta=False, dtype=torch.float32)
        merged = _per_file(img, tensor, type(self).__name__).amax(dim=(0, 1)).unsqueeze(0)
        if self.values:
            mapped = merged.clone()
            for raw, target in self.values.items():
                mapped[merged == raw] = target
            merged = mapped
        if self.binarize:
            merged = (merged != 0).to(torch.float32)
        out, *_ = convert_to_dst_type(merged, img, dtype=torch.float32)
        return out
